"""``solve_map``: certificates against enumeration and the LP relaxation (HiGHS), monotone
iterations, the paper's Alg. 1 against an unrolled transcription of it, fixed smoothing against
scipy's L-BFGS on the smoothed dual, and pairwise forms against full tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import crfkit
from helpers import (
    GridSpec,
    all_scores,
    brute_max,
    direct_score,
    grid_chain_groups,
    grid_specs,
    lp_optimum,
    random_spec,
    smax_np,
    smoothed_dual_min,
    spec_to_crf,
    unrolled_fpi,
)

solve_map = crfkit.solve_map

# The three ways to run it (docs/maths.md, "Dual decomposition"): the default continuation, the paper's Alg. 1,
# fixed smoothing.
# tol=0.0: run every iteration, so that histories have ``iters + 1`` rows (the default tol stops
# early once the gap is 0: test_early_stop_on_a_tree).
METHODS = {
    "default": {"tol": 0.0},
    "paper": {"gamma": 0.0, "step": "paper", "tol": 0.0},
    "smooth": {"gamma": 1.0, "tol": 0.0},
}
DIAGONAL_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))

# Known implementation bugs (reported to the lead). strict: remove the marker once fixed.
POTTS_UNDERFLOW: list = []  # fixed: the Potts closed form is computed in the log domain
FORM_DEPENDENT_SCHEDULE: list = []  # fixed: one scale formula for every pairwise form


def _tol(x, rel=1e-9):
    return rel * max(1.0, float(np.max(np.abs(x))))


def check_result(res, crf, iters):
    """Shapes and the identities of the result object."""
    B, L, H, W = crf.shape
    assert res.labels.shape == (B, H, W) and res.labels.dtype == torch.long
    assert res.primal.shape == res.dual.shape == res.gap.shape == (B,)
    assert res.dual_history.shape == (iters + 1, B)
    assert res.marginals.shape == (B, L, H, W)
    assert torch.isfinite(res.dual).all() and torch.isfinite(res.dual_history).all()
    assert torch.isfinite(res.marginals).all()
    primal = res.primal.double().numpy()
    np.testing.assert_allclose(
        primal, crf.score(res.labels).double().numpy(), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        res.gap.double().numpy(), (res.dual - res.primal).double().numpy(), atol=_tol(primal)
    )
    assert (res.gap >= 0).all()


# ------------------------------------------------------------------------------------------
# enumeration on tiny grids
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", [pytest.param("default", marks=POTTS_UNDERFLOW), "paper", "smooth"]
)
@settings(max_examples=6)
@given(spec=grid_specs(max_hw=3, max_labels=3, max_batch=2, min_labels=2))
def test_certificate_brackets_the_maximum(method, spec):
    """``primal <= max score <= dual`` with the maximum by enumeration."""
    crf = spec_to_crf(spec)
    iters = 20
    res = solve_map(crf, iters=iters, **METHODS[method])
    check_result(res, crf, iters)
    best = brute_max(spec)
    tol = _tol(best)
    assert np.all(res.primal.numpy() <= best + tol)
    assert np.all(best <= res.dual.numpy() + tol)


@pytest.mark.parametrize("method", list(METHODS))
def test_zero_pairwise_is_solved_exactly(method):
    """No pairwise scores: every sub-problem agrees at once; primal == dual == Σ max unary."""
    rng = np.random.default_rng(0)
    B, L, H, W = 2, 3, 3, 4
    unary = torch.as_tensor(rng.normal(size=(B, L, H, W)))
    offsets = DIAGONAL_OFFSETS
    pairwise = [
        torch.zeros(B, L, L, H, W, dtype=torch.float64),
        crfkit.Potts(0.0),
        torch.zeros(L, L, dtype=torch.float64),
        (torch.zeros(B, H, W, dtype=torch.float64), torch.randn(L, L, dtype=torch.float64)),
    ]
    crf = crfkit.GridCRF(unary, pairwise, offsets=offsets)
    res = solve_map(crf, iters=10, **METHODS[method])
    check_result(res, crf, 10)
    want = unary.amax(dim=1).sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(res.primal.numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(res.dual.numpy(), want, rtol=1e-10)
    torch.testing.assert_close(res.labels, unary.argmax(dim=1))


@pytest.mark.parametrize("method", list(METHODS))
def test_dominant_unaries_are_solved_exactly(method):
    """Unary margins far above the pairwise scores: every chain's maximiser is the unary argmax,
    the sub-problems agree and ``primal == dual == max score`` (by enumeration)."""
    rng = np.random.default_rng(1)
    spec = random_spec(
        rng, 2, 3, 3, 3, offsets=DIAGONAL_OFFSETS, forms=["dense", "potts", "weighted", "tl"]
    )
    best_label = rng.integers(0, 3, size=(2, 3, 3))
    spec.unary += 50.0 * np.moveaxis(np.eye(3)[best_label], -1, 1)
    crf = spec_to_crf(spec)
    res = solve_map(crf, iters=10, **METHODS[method])
    check_result(res, crf, 10)
    best = brute_max(spec)
    np.testing.assert_allclose(res.primal.numpy(), best, rtol=1e-10)
    np.testing.assert_allclose(res.dual.numpy(), best, rtol=1e-10)
    np.testing.assert_array_equal(res.labels.numpy(), best_label)


@pytest.mark.parametrize("method", list(METHODS))
@settings(max_examples=6)
@given(spec=grid_specs(max_hw=3, max_labels=3, max_batch=2, min_labels=2))
def test_single_offset_is_exact(method, spec):
    """One offset: the chains are the whole model, the dual is the exact maximum for any
    multipliers, and the max iterations decode the maximiser."""
    spec.offsets, spec.terms = spec.offsets[:1], spec.terms[:1]
    crf = spec_to_crf(spec)
    res = solve_map(crf, iters=5, **METHODS[method])
    check_result(res, crf, 5)
    best = brute_max(spec)
    np.testing.assert_allclose(res.dual.numpy(), best, rtol=1e-9, atol=1e-9)
    if method != "smooth":
        np.testing.assert_allclose(res.primal.numpy(), best, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_single_offset_marginals_by_enumeration(gamma):
    """One offset: the model is a set of independent chains, so each pixel's exact (smoothed)
    max-marginal over all labellings is its chain's marginal minus its chain's value plus the
    dual (the sum of all chains' values): ``m(l) - smax(m) + dual_history[-1]``."""
    rng = np.random.default_rng(2)
    spec = random_spec(rng, 2, 3, 2, 3, offsets=((1, 1),), forms=["dense"])
    res = solve_map(spec_to_crf(spec), iters=3, gamma=gamma, step="paper", tol=0.0)
    scores, X = all_scores(spec)
    B, L, H, W = spec.shape
    for b in range(B):
        total = res.dual_history[-1, b].item()
        for y in range(H):
            for x in range(W):
                m = res.marginals[b, :, y, x].numpy()
                for l in range(L):
                    want = smax_np(scores[b, X[:, y, x] == l], gamma)
                    got = m[l] - smax_np(m, gamma) + total
                    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize(
    "method", [pytest.param("default", marks=POTTS_UNDERFLOW), "paper", "smooth"]
)
def test_float32_model(method):
    """A float32 model: labels and scores right, the certificate still above the maximum (up to
    float32 rounding of the potentials)."""
    rng = np.random.default_rng(6)
    spec = random_spec(rng, 2, 3, 3, 3, offsets=DIAGONAL_OFFSETS)
    crf = spec_to_crf(spec, dtype=torch.float32)
    res = solve_map(crf, iters=20, **METHODS[method])
    assert res.labels.shape == (2, 3, 3) and res.marginals.dtype == torch.float32
    assert torch.isfinite(res.dual).all()
    best = brute_max(spec)
    np.testing.assert_allclose(
        res.primal.double().numpy(), direct_score(spec, res.labels.numpy()), rtol=1e-5, atol=1e-5
    )
    assert np.all(res.primal.double().numpy() <= best + 1e-4 * np.abs(best) + 1e-5)
    assert np.all(best <= res.dual.double().numpy() + 1e-4 * np.abs(best) + 1e-5)


@pytest.mark.parametrize("method", ["paper", "smooth"])
def test_batch_elements_are_independent(method):
    """Solving a batch equals solving each model alone (the step rule is per batch element)."""
    rng = np.random.default_rng(50)
    spec = random_spec(
        rng, 3, 3, 4, 4, offsets=((0, 1), (1, 0), (1, 1)), forms=["dense", "weighted", "potts"]
    )
    spec.unary[2] *= 5.0  # a model of another scale in the same batch
    res = solve_map(spec_to_crf(spec), iters=30, **METHODS[method])
    for b in range(3):
        alone = GridSpec(
            spec.unary[b : b + 1],
            spec.offsets,
            [(t[0], t[1][b : b + 1], *t[2:]) for t in spec.terms],
        )
        r = solve_map(spec_to_crf(alone), iters=30, **METHODS[method])
        torch.testing.assert_close(
            res.dual_history[:, b], r.dual_history[:, 0], rtol=1e-10, atol=1e-10
        )
        torch.testing.assert_close(res.dual[b], r.dual[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(res.marginals[b], r.marginals[0], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------
# the paper's algorithm, transcribed independently
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_paper_iteration_matches_unrolled_transcription(gamma):
    """``gamma, step="paper"`` is Eq. (19) / (42) with ``α = 1 / max_t |V^t|``: its objective
    history equals an unrolled transcription of Alg. 1 on the reference kernel."""
    rng = np.random.default_rng(3)
    spec = random_spec(
        rng, 2, 3, 3, 4, offsets=((0, 1), (1, 0), (1, -1)), forms=["dense", "tl", "weighted"]
    )
    iters = 12
    res = solve_map(spec_to_crf(spec), iters=iters, gamma=gamma, step="paper", tol=0.0)
    B, L, H, W = spec.shape
    for b in range(B):
        unary = torch.as_tensor(spec.unary[b].reshape(L, H * W).T.copy())
        hist, summed, _ = unrolled_fpi(unary, grid_chain_groups(spec, b), gamma, iters)
        np.testing.assert_allclose(
            res.dual_history[:, b].numpy(), hist.numpy(), rtol=1e-10, atol=1e-10
        )
        # marginals at the last iterate agree up to a constant per pixel (the chains' constants)
        got = res.marginals[b].reshape(L, H * W).T
        diff = got - summed
        torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------
# the LP relaxation by HiGHS, on 6x6 grids
# ------------------------------------------------------------------------------------------
LP_CASES = {
    "diag-L4": dict(
        B=2, L=4, offsets=DIAGONAL_OFFSETS, forms=["dense", "weighted", "tl", "shared"], seed=10
    ),
    "default-L3": dict(
        B=2,
        L=3,
        offsets=crfkit.DEFAULT_OFFSETS,
        forms=["potts", "dense", "weighted", "dense"],
        seed=11,
    ),
}


def _lp_spec(case):
    c = LP_CASES[case]
    rng = np.random.default_rng(c["seed"])
    return random_spec(rng, c["B"], c["L"], 6, 6, offsets=c["offsets"], forms=c["forms"])


@pytest.fixture(scope="module")
def lp_instances():
    """Per case: the spec, its LP optimum (HiGHS) and each method's result."""
    out = {}
    for case in LP_CASES:
        spec = _lp_spec(case)
        crf = spec_to_crf(spec)
        runs = {
            "default": solve_map(crf, iters=1000),
            "paper": solve_map(crf, iters=300, gamma=0.0, step="paper"),
            "smooth": solve_map(crf, iters=300, gamma=1.0),
            "smooth-paper-step": solve_map(crf, iters=200, gamma=0.3, step="paper"),
        }
        out[case] = (spec, crf, lp_optimum(spec), runs)
    return out


@pytest.mark.parametrize("case", list(LP_CASES))
@pytest.mark.parametrize(
    "method",
    [pytest.param("default", marks=POTTS_UNDERFLOW), "paper", "smooth", "smooth-paper-step"],
)
def test_lp_sandwich(lp_instances, case, method):
    """``primal <= best known score <= LP optimum <= dual`` for every method (best known: the
    best labelling any method found)."""
    spec, crf, lp, runs = lp_instances[case]
    best_known = np.max([r.primal.numpy() for r in runs.values()], axis=0)
    tol = 1e-7 * np.maximum(1.0, np.abs(lp))  # HiGHS's own tolerance
    assert np.all(best_known <= lp + tol)
    r = runs[method]
    check_result(r, crf, r.dual_history.shape[0] - 1)
    assert np.all(r.primal.numpy() <= best_known)
    assert np.all(lp <= r.dual.numpy() + tol), (lp, r.dual)


@pytest.mark.parametrize("case", list(LP_CASES))
@pytest.mark.parametrize("method", ["paper", "smooth", "smooth-paper-step"])
def test_objective_never_increases(lp_instances, case, method):
    """The paper's iteration and fixed smoothing are monotone (``dual_history``)."""
    _, _, _, runs = lp_instances[case]
    h = runs[method].dual_history.double().numpy()
    rises = np.diff(h, axis=0)
    assert np.all(rises <= 1e-9 * np.abs(h[:-1]) + 1e-12), rises.max()


def test_default_is_monotone_within_each_stage():
    """The default's adaptive step undoes any step that would raise the stage's objective: within
    a stage (rows of equal gamma in ``gamma_history``) ``dual_history`` never rises."""
    rng = np.random.default_rng(12)
    spec = random_spec(
        rng, 2, 3, 5, 5, offsets=DIAGONAL_OFFSETS, forms=["dense", "weighted", "dense", "shared"]
    )
    res = solve_map(spec_to_crf(spec), iters=200, tol=0.0)
    h = res.dual_history.double().numpy()
    g = np.asarray(res.gamma_history, dtype=np.float64)
    assert g.shape == (h.shape[0],)
    same_stage = g[1:] == g[:-1]
    assert same_stage.sum() >= h.shape[0] - 20  # at most a few stage changes
    rises = np.diff(h, axis=0)[same_stage]
    assert np.all(rises <= 1e-9 * np.abs(h[1:][same_stage]) + 1e-12), rises.max()
    assert np.all(np.diff(g) <= 0)  # gamma only decreases


@pytest.mark.parametrize("case", list(LP_CASES))
def test_default_certificate_approaches_lp(lp_instances, case):
    """The default continuation's certificate approaches the LP optimum and beats the paper's
    iteration, which stalls 1-4 % above it.  Measured with the implementation of this commit
    (the same models with dense tables): 1.3e-3 at most after 1000 iterations, 6e-4 after 2000;
    the paper's iteration: 0.9-1.8 % after 300."""
    _, _, lp, runs = lp_instances[case]
    rel = (runs["default"].dual.numpy() - lp) / np.abs(lp)
    assert np.all(rel <= 5e-3), rel
    assert np.all(runs["default"].dual.numpy() <= runs["paper"].dual.numpy() + 1e-9)


# ------------------------------------------------------------------------------------------
# fixed smoothing converges to the minimum of the smoothed dual (scipy L-BFGS)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma,L", [(1.0, 2), (0.5, 3)])
def test_fixed_gamma_converges_to_smoothed_dual_minimum(gamma, L):
    rng = np.random.default_rng(20 + L)
    spec = random_spec(
        rng, 1, L, 3, 3, offsets=DIAGONAL_OFFSETS, forms=["dense", "potts", "weighted", "dense"]
    )
    res = solve_map(spec_to_crf(spec), iters=400, gamma=gamma, tol=0.0)
    want = smoothed_dual_min(spec, 0, gamma)
    hist = res.dual_history[:, 0].double().numpy()
    # no iterate is below the minimum; the last is at it
    assert np.all(hist >= want - 1e-9 * abs(want))
    assert hist[-1] == pytest.approx(want, rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------------------------------
# every pairwise form solves like full per-edge tables
# ------------------------------------------------------------------------------------------
FORM_CASES = [
    pytest.param(method, form, marks=FORM_DEPENDENT_SCHEDULE)
    if method == "default" and form in ("potts", "potts_scalar", "tl")
    else (method, form)
    for method in METHODS
    for form in ("shared", "weighted", "potts", "potts_scalar", "tl")
]


@pytest.mark.parametrize("method,form", FORM_CASES)
def test_pairwise_forms_solve_like_full_tables(method, form):
    rng = np.random.default_rng(30)
    # pairwise scores larger than the unary ones, so that anything the solver derives from the
    # potentials (e.g. the scale of the default gamma schedule) comes from the pairwise terms
    spec = random_spec(
        rng, 2, 4, 4, 4, offsets=((0, 1), (1, 0), (1, 1)), forms=[form] * 3, pairwise_scale=3.0
    )
    iters = 40
    a = solve_map(spec_to_crf(spec), iters=iters, **METHODS[method])
    b = solve_map(spec_to_crf(spec, dense=True), iters=iters, **METHODS[method])
    torch.testing.assert_close(a.dual_history, b.dual_history, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.dual, b.dual, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.primal, b.primal, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.marginals, b.marginals, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------------------
# the same model as a GraphMRF
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_graph_mrf_certificate(method):
    rng = np.random.default_rng(40)
    spec = random_spec(rng, 2, 3, 3, 3, offsets=DIAGONAL_OFFSETS)
    mrf = spec_to_crf(spec).to_graph_mrf()
    res = solve_map(mrf, iters=20, **METHODS[method])
    assert res.labels.shape == (2, 9)
    np.testing.assert_allclose(res.primal.numpy(), mrf.score(res.labels).numpy(), rtol=1e-12)
    best = brute_max(spec)
    assert np.all(res.primal.numpy() <= best + 1e-9)
    assert np.all(best <= res.dual.numpy() + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_stop_on_a_tree(seed):
    """On a tree the LP relaxation is tight: with the default ``tol`` the solver stops at the
    first decoding whose gap is 0 (a stage end), with ``primal == dual == max score`` by
    enumeration; ``tol=0.0`` runs every iteration to the same answer."""
    rng = np.random.default_rng(seed)
    N, L, iters = 7, 3, 1000
    edges = np.array([[int(rng.integers(0, i)), i] for i in range(1, N)])
    unary, tables = rng.normal(size=(N, L)), rng.normal(size=(N - 1, L, L))
    mrf = crfkit.GraphMRF(torch.as_tensor(unary), torch.as_tensor(edges), torch.as_tensor(tables))
    X = np.array(np.meshgrid(*[np.arange(L)] * N, indexing="ij")).reshape(N, -1).T  # [L^N, N]
    scores = unary[np.arange(N), X].sum(1) + tables[np.arange(N - 1), X[:, edges[:, 0]], X[:, edges[:, 1]]].sum(1)
    best = scores.max()
    res = solve_map(mrf, iters=iters)
    assert res.iterations < iters // 2
    assert res.dual_history.shape == (res.iterations + 1, 1)
    np.testing.assert_allclose(res.primal.numpy(), [best], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.dual.numpy(), [best], rtol=1e-9, atol=1e-9)
    full = solve_map(mrf, iters=iters, tol=0.0)
    assert full.iterations == iters
    np.testing.assert_allclose(full.primal.numpy(), [best], rtol=1e-9, atol=1e-9)
