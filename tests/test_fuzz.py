"""Fuzzing the front doors (hypothesis): model constructors (``GridCRF``, ``GraphMRF``: shapes,
pairwise forms, weights with NaN / inf / negative / huge values), ``SolverOptions`` and
``solve_map`` on tiny models.

Every case ends one of two ways: a one-line crfkit error (``CRFValueError``, ``CRFShapeError``
or ``CRFTypeError``, subclasses of ``ValueError`` / ``TypeError``) with a message, or a finite,
consistent result checked against enumeration: ``primal == score(labels) <= max score <= dual``,
``gap >= 0``, no NaN.  Never a raw ``IndexError``, ``MemoryError``, ``ZeroDivisionError`` or
``RuntimeError``.  UAI text is fuzzed in ``test_uai_errors.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crfkit
from crfkit._validation import CRFShapeError, CRFTypeError, CRFValueError
from crfkit.inference.solver_options import SolverOptions

CLEAR_ERRORS = (CRFValueError, CRFShapeError, CRFTypeError)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# numbers a user might pass: ordinary, edge, non-finite, wrong type
WEIRD_FLOATS = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-300, 1e30, -1e30, 1e300, math.nan, math.inf, -math.inf]
)


def rarely(good, bad, one_in: int = 8):
    """``bad`` once in about ``one_in`` draws, else ``good`` (so that most cases get past the
    constructors and reach the solver)."""
    return st.integers(1, one_in).flatmap(lambda k: bad if k == 1 else good)


SCALARS = rarely(st.floats(-3, 3), WEIRD_FLOATS, 3)


def SIZE(low, high):  # noqa: N802 (a strategy, named like one)
    """Sizes in ``[low, high]``, sometimes 0 (an empty model)."""
    return rarely(st.integers(low, high), st.just(0), 12)


def full(shape, value, dtype):
    """``torch.full`` through float64 (a value beyond float32's range becomes ±inf, as a user's would)."""
    return torch.full(shape, value, dtype=torch.float64).to(dtype)


def poke(t: torch.Tensor, value) -> torch.Tensor:
    """``t`` with its first entry set to ``value`` (through float64), if it has one."""
    if t.numel() == 0:
        return t
    d = t.double()
    d.view(-1)[0] = value
    return d.to(t.dtype)


def clear(exc: BaseException) -> bool:
    """A crfkit error with a one-line message."""
    msg = str(exc)
    return isinstance(exc, CLEAR_ERRORS) and bool(msg) and "\n" not in msg


def run(thunk):
    """``thunk()`` or ``None`` if it raised a clear error; any other exception fails the test."""
    try:
        return thunk()
    except CLEAR_ERRORS as exc:
        assert clear(exc), f"unclear message: {exc!r}"
        return None


def enumerate_max(mrf: crfkit.GraphMRF) -> np.ndarray:
    """Max score per batch element by enumeration (float64), from the dense edge tables."""
    B = mrf.batch_size
    unary = mrf.unary.double().reshape(B, mrf.num_nodes, mrf.num_labels).numpy()
    tables = mrf.edge_tables().double().reshape(B, mrf.num_edges, mrf.num_labels, mrf.num_labels).numpy()
    N, L, e = mrf.num_nodes, mrf.num_labels, mrf.edges.numpy()
    X = np.array(list(itertools.product(range(L), repeat=N)))  # [L^N, N]
    out = []
    for u, t in zip(unary, tables):
        s = u[np.arange(N), X].sum(1)
        if len(e):
            s = s + t[np.arange(len(e)), X[:, e[:, 0]], X[:, e[:, 1]]].sum(1)
        out.append(s.max())
    return np.array(out)


def magnitude(mrf: crfkit.GraphMRF) -> float:
    """The largest |score| of one term (unary entry or edge-table entry)."""
    m = float(mrf.unary.double().abs().max())
    if mrf.num_edges:
        m = max(m, float(mrf.edge_tables().double().abs().max()))
    return m


def check_solution(model, res, mrf: crfkit.GraphMRF) -> None:
    """Finite, consistent, and bracketing the enumerated maximum up to rounding (relative to the
    largest term: a score of 1e30 carries an error of about 1e30 · eps, see
    test_truncated_linear_fast_path_keeps_small_scores_exact)."""
    for name in ("primal", "dual", "gap"):
        v = getattr(res, name)
        assert torch.isfinite(v).all(), f"{name} not finite: {v}"
    assert (res.gap >= 0).all()
    scale = max(1.0, float(res.dual.abs().max()), magnitude(mrf) * mrf.num_nodes)
    rel = 1e-9 if model.unary.dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(
        res.primal.numpy(), model.score(res.labels).double().reshape(-1).numpy(), rtol=rel, atol=rel * scale
    )
    best = enumerate_max(mrf)
    assert np.all(res.primal.numpy() <= best + rel * scale)
    assert np.all(best <= res.dual.numpy() + rel * scale)


# ------------------------------------------------------------------------------------------
# model constructors (and solve_map on what they accept)
# ------------------------------------------------------------------------------------------
@st.composite
def grid_pairwise(draw, B, L, H, W, dtype):
    """One offset's pairwise entry in any form, sometimes with a wrong shape or weird values
    (forms that check their arguments come as thunks, built under :func:`run`)."""
    kind = draw(rarely(st.sampled_from(["tables", "shared", "weighted", "potts", "tl"]), st.just("bad"), 12))
    scale = draw(SCALARS)
    bl = draw(rarely(st.just(B), st.just(B + 1)))  # sometimes a wrong batch size
    if kind == "tables":
        t = torch.randn(bl, L, L, H, W, dtype=dtype)
    elif kind == "shared":
        t = torch.randn(L, L, dtype=dtype)
    elif kind == "weighted":
        return (full((bl, H, W), scale, dtype), torch.randn(L, L, dtype=dtype))
    elif kind == "potts":
        w = draw(st.booleans())
        return lambda: crfkit.Potts(full((bl, H, W), scale, dtype) if w else scale)
    elif kind == "tl":
        trunc = draw(rarely(st.integers(1, 3), st.one_of(st.integers(-1, 0), WEIRD_FLOATS)))
        return lambda: crfkit.TruncatedLinear(scale, trunc)
    else:
        return draw(st.sampled_from(["potts", None, 3, torch.randn(L, dtype=dtype)]))
    return poke(t, scale) if draw(st.booleans()) else t


@st.composite
def grid_args(draw):
    B, L = draw(SIZE(1, 2)), draw(SIZE(1, 3))
    H, W = draw(SIZE(1, 3)), draw(SIZE(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    offsets = draw(
        rarely(
            st.sampled_from([((0, 1), (1, 0)), ((0, 1),), ((1, 1), (1, -1)), ((0, 2), (1, 0))]),
            st.sampled_from([((0, 0),), (), ((0, 1), (0, 1)), ((-1, 0),)]),
        )
    )
    unary = torch.randn(B, L, H, W, dtype=dtype) * draw(st.floats(0, 10))
    if draw(rarely(st.just(False), st.just(True))):
        unary = poke(unary, draw(WEIRD_FLOATS))
    pairwise = [draw(grid_pairwise(B, L, H, W, dtype)) for _ in range(max(len(offsets), 1))]
    return unary, pairwise, offsets


@FUZZ
@given(args=grid_args(), iters=st.integers(1, 12))
def test_grid_constructor_and_solve(args, iters):
    unary, pairwise, offsets = args
    crf = run(lambda: crfkit.GridCRF(unary, [p() if callable(p) else p for p in pairwise], offsets=offsets))
    if crf is None or crf.num_labels ** (crf.height * crf.width) > 3**6:
        return
    res = run(lambda: crfkit.solve_map(crf, iters=iters))
    if res is not None:
        check_solution(crf, res, crf.to_graph_mrf())


@st.composite
def graph_args(draw):
    N, L = draw(SIZE(1, 5)), draw(SIZE(1, 3))
    batched = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    node = rarely(st.integers(0, max(N - 1, 0)), st.sampled_from([-1, N]), 16)
    pairs = draw(st.lists(st.tuples(node, node), max_size=6, unique_by=frozenset))
    edges = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    E = edges.shape[0]
    unary = torch.randn(*((2,) if batched else ()), N, L, dtype=dtype)
    if draw(rarely(st.just(False), st.just(True))):
        unary = poke(unary, draw(WEIRD_FLOATS))
    scale = draw(SCALARS)
    wshape = (2, E) if batched else (E,)
    kind = draw(st.sampled_from(["tables", "shared", "weighted", "potts", "potts-tensor", "tl"]))
    if kind == "tables":
        pairwise = poke(torch.randn(*wshape, L, L, dtype=dtype), scale)
    elif kind == "shared":
        pairwise = full((L, L), scale, dtype)
    elif kind == "weighted":
        pairwise = (full(wshape, scale, dtype), torch.randn(L, L, dtype=dtype))
    elif kind == "potts":
        pairwise = lambda: crfkit.Potts(scale)  # noqa: E731
    elif kind == "potts-tensor":
        pairwise = lambda: crfkit.Potts(full(wshape, scale, dtype))  # noqa: E731
    else:
        trunc = draw(rarely(st.integers(1, 3), st.one_of(st.integers(-1, 0), WEIRD_FLOATS)))
        pairwise = lambda: crfkit.TruncatedLinear(scale, trunc)  # noqa: E731
    return unary, edges, pairwise


@FUZZ
@given(args=graph_args(), iters=st.integers(1, 12))
def test_graph_constructor_and_solve(args, iters):
    unary, edges, pairwise = args
    mrf = run(lambda: crfkit.GraphMRF(unary, edges, pairwise() if callable(pairwise) else pairwise))
    if mrf is None:
        return
    res = run(lambda: crfkit.solve_map(mrf, iters=iters))
    if res is not None:
        check_solution(mrf, res, mrf)


# ------------------------------------------------------------------------------------------
# solver options
# ------------------------------------------------------------------------------------------
def _field(valid, *invalid):
    return st.one_of(st.sampled_from(valid), st.sampled_from(list(invalid)))


OPTION_FIELDS = {
    "iters": _field([0, 1, 7, 15], -1, 2.5, "10", True, None, math.nan),
    "gamma": _field([None, 0.0, 0.3, 2.0, 1e-20, 1e20], -1.0, math.nan, math.inf, "big", True, 1e-45, 1e300),
    "step": _field(["adaptive", "paper", 0.1, 1.0], "fast", 0.0, -1.0, 3.0, 100.0, math.inf, math.nan, True, None),
    "stages": _field([1, 2, 5], 0, -2, 1.5, "3"),
    "gamma_start": _field([0.3, 1.0, 1e-3], -1.0, 0.0, math.nan, math.inf, "x"),
    "gamma_end": _field([1e-4, 1e-2], -1e-4, 0.0, 5.0, math.nan, None),
    "gammas": _field([None, [1.0, 0.1, 0.0], [0.0]], [], [-1.0], [math.nan], "abc", 3, [1e300]),
    "decode": _field(["icm", "argmax"], "max", None, 1),
    "icm_sweeps": _field([0, 1, 3], -1, 1.5, "2"),
    "certificate_every": _field([1, 3, 10], 0, -1, 2.0),
    "decode_every": _field([None, 1, 4], 0, -3, 1.5),
    "tol": _field([0.0, 1e-9, 1e-3], -1.0, math.nan, math.inf, "0", True),
    "momentum": _field([True, False], "no", 1, None),
    "callback": _field([None, lambda info: None], 3, "print"),
    "implementation": _field([None, "torch", "reference"], "bogus", 7),
    "validate_args": _field([True, False], "yes", 0),
}


@st.composite
def option_kwargs(draw):
    names = draw(st.lists(st.sampled_from(sorted(OPTION_FIELDS)), max_size=4, unique=True))
    return {name: draw(OPTION_FIELDS[name]) for name in names}


def _tiny_grid(dtype):
    g = torch.Generator().manual_seed(3)
    unary = torch.randn(2, 2, 2, 3, dtype=dtype, generator=g)
    pairwise = [torch.randn(2, 2, dtype=dtype, generator=g), crfkit.Potts(0.7)]
    return crfkit.GridCRF(unary, pairwise, offsets=((0, 1), (1, 0)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=option_kwargs(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_solver_options_and_solve(kwargs, dtype):
    run(lambda: SolverOptions(**kwargs))  # gammas is a SolverOptions field only
    kwargs.pop("gammas", None)
    opts = run(lambda: SolverOptions(**kwargs))
    crf = _tiny_grid(dtype)
    res = run(lambda: crfkit.solve_map(crf, **{"iters": 10, **kwargs}))
    # options refused when built are refused by solve_map too (before any work); accepted ones may
    # still be refused once the problem is known (a γ outside the dtype's range, an unknown kernel)
    assert opts is not None or res is None
    if res is not None:
        check_solution(crf, res, crf.to_graph_mrf())


@pytest.mark.parametrize("tensor_on", ["unary", "pairwise"])
def test_solve_map_float32_wide_potentials_are_finite_or_refused(tensor_on):
    """float32 potentials up to 1e30: a clear error or a finite certificate (never NaN)."""
    for magnitude in (1e10, 1e20, 1e30):
        g = torch.Generator().manual_seed(0)
        unary = torch.randn(1, 2, 2, 2, generator=g)
        table = torch.randn(2, 2, generator=g)
        if tensor_on == "unary":
            unary = unary * magnitude
        else:
            table = table * magnitude
        crf = crfkit.GridCRF(unary, [table, table], offsets=((0, 1), (1, 0)))
        res = run(lambda: crfkit.solve_map(crf, iters=10))  # noqa: B023
        if res is not None:
            assert torch.isfinite(res.dual).all() and torch.isfinite(res.primal).all()
            assert (res.gap >= 0).all()


@pytest.mark.parametrize("implementation", ["torch", "numba"])
def test_truncated_linear_fast_path_keeps_small_scores_exact(implementation):
    """A large truncated-linear weight (1e16) whose optimum pays no pairwise cost: the torch and
    numba kernels' certificate equals the plain-loop reference kernel's to float64 rounding of the
    unaries, and bounds the enumerated maximum (found by the fuzz test: the torch kernel's dual
    fell 0.54 below the primal, and ``gap`` clamped it to 0)."""
    g = torch.Generator().manual_seed(0)
    unary = 2 * torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=g)
    crf = crfkit.GridCRF(unary, [crfkit.TruncatedLinear(1e16, 2)] * 2, offsets=((0, 1), (1, 0)))
    best = enumerate_max(crf.to_graph_mrf())
    if implementation == "numba":
        pytest.importorskip("numba")
    res = crfkit.solve_map(crf, iters=0, gamma=0.0, step="paper", implementation=implementation)
    ref = crfkit.solve_map(crf, iters=0, gamma=0.0, step="paper", implementation="reference")
    np.testing.assert_allclose(res.dual.numpy(), ref.dual.numpy(), rtol=1e-12, atol=1e-12)
    assert np.all(best <= res.dual.numpy() + 1e-12)
