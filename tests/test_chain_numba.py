"""Compiled (numba) chain kernels: values, marginals, Viterbi and gradients.

Truth: enumeration over all labellings of tiny chains (``helpers.chain_brute``), the plain
reference (``chain_marginals_reference``, autograd), ``torch.autograd.gradcheck`` in float64, and
for the max semiring's subgradients and Viterbi labels the vectorised torch path (same tie
conventions). Every pairwise form, both semirings, float32 and float64, padded chains, and the
fallbacks (negative weights, log-sum-exp with truncation > 1).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from crfkit._validation import CRFTypeError
from crfkit.decomposition.chains import ChainPairwise
from crfkit.ops.chain.reference import chain_marginals_reference
from crfkit.ops.chain.torch import chain_marginals_torch, chain_viterbi_torch
from helpers import chain_brute, chain_tables_np, smax_np

nb = pytest.importorskip("crfkit.ops.chain.numba")
if not nb.AVAILABLE:  # pragma: no cover - numba missing
    pytest.skip("numba is not importable", allow_module_level=True)

# (kind, truncation, sign of the weights): truncation 1 / 2 with w >= 0 take the O(L) paths
# (distance transform for max; closed form for log-sum-exp Potts); the rest the O(L^2) loop.
CASES = [
    ("dense", None, 1),
    ("weighted", None, 1),
    ("weighted", None, -1),
    ("truncated_linear", 1.0, 1),
    ("truncated_linear", 2.0, 1),
    ("truncated_linear", 1.0, -1),
    ("truncated_linear", 2.0, 0),
]
IDS = [f"{k}-{t}-{s}" for k, t, s in CASES]
DTYPES = [torch.float64, torch.float32]
# Compilation is the cost of this file in a fresh environment (no numba cache: ~50 s per kernel
# and dtype on a loaded 2-core machine). float32 compiles the forward kernel only (values,
# marginals, Viterbi: what solve_map runs); the backward is compiled and checked in float64 (its
# code does not depend on the dtype). ``CRFKIT_TEST_NUMBA_F32_BACKWARD=1`` adds float32 there.
GRAD_DTYPES = [torch.float64] + ([torch.float32] if os.environ.get("CRFKIT_TEST_NUMBA_F32_BACKWARD") else [])


def make_chains(rng, C, n, L, kind, truncation=None, sign=1, lengths=None):
    """Random right-padded chains (numpy, float64); padding entries are garbage."""
    unary = rng.normal(size=(C, n, L))
    if lengths is None:
        lengths = rng.integers(1, n + 1, size=C)
        lengths[0] = n
    lengths = np.asarray(lengths, dtype=np.int64)
    m = max(n - 1, 0)
    if kind == "dense":
        return unary, {"tables": rng.normal(size=(C, m, L, L))}, lengths
    w = rng.uniform(0, 1.5, size=(C, m))
    if sign < 0:
        w = -w
    elif sign == 0:
        w = w * rng.choice([-1.0, 1.0], size=w.shape)
    if kind == "weighted":
        return unary, {"tables": rng.normal(size=(C, L, L)), "weight": w}, lengths
    return unary, {"weight": w}, lengths


def pairwise_of(kind, ts, truncation):
    return ChainPairwise(kind, tables=ts.get("tables"), weight=ts.get("weight"), truncation=truncation)


def tensors(arrays, dtype, requires_grad=False):
    return {k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for k, v in arrays.items()}


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("gamma", [0.0, 0.4])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_enumeration(case, gamma, dtype):
    """value = smax over all labellings; marginal_k(l) = smax over labellings with x_k = l; zero
    on padding; chain_values_numba gives the same values; Viterbi labels score the max."""
    kind, truncation, sign = case
    rng = np.random.default_rng(1)
    C, n, L = 4, 5, 3
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign, lengths=[5, 1, 3, 4])
    pw = pairwise_of(kind, tensors(arrays, dtype), truncation)
    u, lens = torch.tensor(unary, dtype=dtype), torch.tensor(lengths)
    marg, value = nb.chain_marginals_numba(u, pw, lens, gamma)
    assert marg.dtype == dtype and value.dtype == dtype and marg.shape == (C, n, L)
    # the inputs as the kernel saw them (float32 rounding included), in float64
    uq = u.double().numpy()
    qa = {k: t.double().numpy() for k, t in tensors(arrays, dtype).items()}
    fq = chain_tables_np(kind, L, qa.get("tables"), qa.get("weight"), truncation)
    values = nb.chain_values_numba(u, pw, lens, gamma)
    labels = nb.chain_viterbi_numba(u, pw, lens)
    assert labels.dtype == torch.long and labels.shape == (C, n)
    for c in range(C):
        m = int(lengths[c])
        want_v, want_m = chain_brute(uq[c, :m], fq[c, : m - 1], gamma)
        np.testing.assert_allclose(value[c].item(), want_v, **tol(dtype))
        np.testing.assert_allclose(values[c].item(), want_v, **tol(dtype))
        np.testing.assert_allclose(marg[c, :m].double().numpy(), want_m, **tol(dtype))
        assert torch.all(marg[c, m:] == 0) and torch.all(labels[c, m:] == 0)
        lab = labels[c, :m].numpy()
        score = uq[c, np.arange(m), lab].sum() + sum(fq[c, k, lab[k], lab[k + 1]] for k in range(m - 1))
        np.testing.assert_allclose(score, chain_brute(uq[c, :m], fq[c, : m - 1], 0.0)[0], **tol(dtype))


@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=["f64", "f32"][: len(GRAD_DTYPES)])
@pytest.mark.parametrize("gamma", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference_forward_and_backward(case, gamma, dtype):
    """Larger padded batches: outputs and gradients (random upstream gradients on both outputs)
    equal the reference's autograd ones (gamma = 0: continuous random inputs, unique argmax)."""
    kind, truncation, sign = case
    rng = np.random.default_rng(11)
    C, n, L = 6, 9, 5
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign)
    d_marg = torch.tensor(rng.normal(size=(C, n, L)), dtype=dtype)
    d_value = torch.tensor(rng.normal(size=C), dtype=dtype)
    results = []
    for fn in (chain_marginals_reference, nb.chain_marginals_numba):
        u = torch.tensor(unary, dtype=dtype, requires_grad=True)
        ts = tensors(arrays, dtype, requires_grad=True)
        marg, value = fn(u, pairwise_of(kind, ts, truncation), torch.tensor(lengths), gamma)
        leaves = [u] + [ts[k] for k in sorted(ts)]
        grads = torch.autograd.grad((marg * d_marg).sum() + (value * d_value).sum(), leaves)
        results.append((marg.detach(), value.detach(), grads))
    (m0, v0, g0), (m1, v1, g1) = results
    t = tol(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m1, m0, **t)
    torch.testing.assert_close(v1, v0, **t)
    for a, b in zip(g1, g0):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **(t if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)))


@pytest.mark.parametrize("gamma", [0.5, 1.3])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case, gamma):
    """float64 gradcheck of both outputs wrt unary and every pairwise tensor, padded chains."""
    kind, truncation, sign = case
    rng = np.random.default_rng(3)
    unary, arrays, lengths = make_chains(rng, 2, 4, 3, kind, truncation, sign, lengths=[4, 2])
    names = sorted(arrays)
    lens = torch.tensor(lengths)

    def fn(u, *ts):
        return nb.chain_marginals_numba(u, pairwise_of(kind, dict(zip(names, ts)), truncation), lens, gamma)

    inputs = [torch.tensor(unary, requires_grad=True)] + [torch.tensor(arrays[k], requires_grad=True) for k in names]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_subgradient_and_viterbi_match_torch(case):
    """gamma = 0 with ties made likely (integer scores, few labels): the subgradient (one-hot
    arg-max, same tie rules) and the Viterbi labels equal the torch path's exactly."""
    kind, truncation, sign = case
    rng = np.random.default_rng(5)
    C, n, L = 16, 7, 4
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign)
    unary = np.round(unary * 2)
    arrays = {k: np.round(v * 2) / 2 for k, v in arrays.items()}
    d_marg = torch.tensor(rng.normal(size=(C, n, L)))
    d_value = torch.tensor(rng.normal(size=C))
    results = []
    for fn in (chain_marginals_torch, nb.chain_marginals_numba):
        u = torch.tensor(unary, requires_grad=True)
        ts = tensors(arrays, torch.float64, requires_grad=True)
        marg, value = fn(u, pairwise_of(kind, ts, truncation), torch.tensor(lengths), 0.0)
        leaves = [u] + [ts[k] for k in sorted(ts)]
        results.append(torch.autograd.grad((marg * d_marg).sum() + (value * d_value).sum(), leaves))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    pw = pairwise_of(kind, tensors(arrays, torch.float64), truncation)
    u, lens = torch.tensor(unary), torch.tensor(lengths)
    assert torch.equal(nb.chain_viterbi_numba(u, pw, lens), chain_viterbi_torch(u, pw, lens))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("gamma", [0.0, 0.4])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_marginals_without_grad_equal_the_saving_path(case, gamma, dtype):
    """Without autograd the kernel keeps one forward message per chain and leaves its arrays
    uninitialised: the marginals (zero on padding) and values equal, bit for bit, those of the path
    that saves the messages for a backward (itself checked against the reference above)."""
    kind, truncation, sign = case
    rng = np.random.default_rng(7)
    C, n, L = 9, 8, 5
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign)
    lens = torch.tensor(lengths)
    u = torch.tensor(unary, dtype=dtype, requires_grad=True)
    saved = nb.chain_marginals_numba(u, pairwise_of(kind, tensors(arrays, dtype), truncation), lens, gamma)
    assert saved[0].requires_grad
    for _ in range(2):  # the second call may reuse the first one's freed memory (garbage on padding)
        with torch.no_grad():
            lean = nb.chain_marginals_numba(u, pairwise_of(kind, tensors(arrays, dtype), truncation), lens, gamma)
        assert not lean[0].requires_grad
        assert torch.equal(lean[0], saved[0].detach()) and torch.equal(lean[1], saved[1].detach())


def test_expanded_weighted_table_and_value_gradient():
    """The weighted form's shared table may be an expanded view (one table per offset): its
    gradient sums over chains; d value / d unary = softmax(marginal / gamma) (closed form)."""
    rng = np.random.default_rng(9)
    C, n, L, gamma = 5, 6, 4, 0.7
    base = torch.tensor(rng.normal(size=(L, L)), requires_grad=True)
    weight = torch.tensor(rng.uniform(0, 1, size=(C, n - 1)), requires_grad=True)
    u = torch.tensor(rng.normal(size=(C, n, L)), requires_grad=True)
    lens = torch.tensor([6, 2, 6, 1, 4])
    grads = []
    for fn in (chain_marginals_reference, nb.chain_marginals_numba):
        pw = ChainPairwise("weighted", tables=base.expand(C, L, L), weight=weight)
        marg, value = fn(u, pw, lens, gamma)
        grads.append(torch.autograd.grad(value.sum() + marg.square().sum(), [u, base, weight]))
        marg, value = fn(u, pw, lens, gamma)
        (gu,) = torch.autograd.grad(value.sum(), [u])
        for c in range(C):
            m = int(lens[c])
            torch.testing.assert_close(gu[c, :m], torch.softmax(marg[c, :m].detach() / gamma, dim=1))
            assert torch.all(gu[c, m:] == 0)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_large_weights_stay_finite():
    """Potts log-sum-exp with weights far above gamma (closed form in the log domain) and the
    max path with large scores: finite, equal to the reference."""
    rng = np.random.default_rng(2)
    C, n, L = 3, 6, 5
    u = torch.tensor(rng.normal(size=(C, n, L)) * 50)
    pw = ChainPairwise("truncated_linear", weight=torch.full((C, n - 1), 200.0), truncation=1.0)
    lens = torch.tensor([6, 3, 1])
    for gamma in (0.0, 0.01, 1.0):
        m1, v1 = nb.chain_marginals_numba(u, pw, lens, gamma)
        m0, v0 = chain_marginals_reference(u, pw, lens, gamma)
        assert torch.isfinite(m1).all() and torch.isfinite(v1).all()
        torch.testing.assert_close(m1, m0, rtol=1e-9, atol=1e-9)
        assert np.isclose(smax_np(m1[0].numpy(), gamma, axis=1), v1[0].item()).all()


def test_bad_input():
    u = torch.zeros(2, 3, 4, dtype=torch.float16)
    pw = ChainPairwise("truncated_linear", weight=torch.ones(2, 2), truncation=1.0)
    with pytest.raises(CRFTypeError, match="float32 or float64"):
        nb.chain_values_numba(u, pw, torch.tensor([3, 3]), 0.0)
    with pytest.raises(CRFTypeError, match="ChainPairwise"):
        nb.chain_viterbi_numba(u.float(), object(), torch.tensor([3, 3]))


def test_threads_setting(monkeypatch):
    monkeypatch.setenv("CRFKIT_NUM_THREADS", "1")
    assert nb.num_threads() == 1
    monkeypatch.delenv("CRFKIT_NUM_THREADS")
    assert nb.num_threads() == 1
    monkeypatch.setenv("CRFKIT_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="CRFKIT_NUM_THREADS"):
        nb.num_threads()


def test_kernels_leave_torch_threads_alone(monkeypatch):
    """numba's OpenMP layer shares the runtime with torch: a kernel on 1 numba thread must not
    change torch's thread count."""
    before = torch.get_num_threads()
    monkeypatch.setenv("CRFKIT_NUM_THREADS", "1")
    try:
        torch.set_num_threads(2)
        pw = ChainPairwise("truncated_linear", weight=torch.ones(2, 2, dtype=torch.float64), truncation=1.0)
        nb.chain_values_numba(torch.zeros(2, 3, 4, dtype=torch.float64), pw, torch.tensor([3, 3]), 0.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_imports_without_numba():
    """With numba unimportable the module still imports and says AVAILABLE = False."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import crfkit.ops.chain.numba as m\n"
        "assert m.AVAILABLE is False\n"
        "import torch\n"
        "from crfkit.decomposition.chains import ChainPairwise\n"
        "pw = ChainPairwise('truncated_linear', weight=torch.ones(1, 1), truncation=1.0)\n"
        "try:\n"
        "    m.chain_values_numba(torch.zeros(1, 2, 3), pw, torch.tensor([2]), 0.0)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: numba is not importable" in out.stdout


# ---------------------------------------------------------------------------------------------
# the backend in the dispatcher (the suite runs on the torch path: see conftest.py)
# ---------------------------------------------------------------------------------------------


def test_smoothed_max_over_tables_goes_to_torch(monkeypatch):
    """The dispatcher's routing: with the numba default, the smoothed max over tables runs the
    torch path (its saved-for-backward class), the max and the Potts closed form run numba."""
    from crfkit.ops.chain import chain_marginals

    monkeypatch.delenv("CRFKIT_CHAIN_IMPL", raising=False)
    u = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([4, 3])
    dense = ChainPairwise("dense", tables=torch.randn(2, 3, 3, 3, dtype=torch.float64))
    potts = ChainPairwise("truncated_linear", weight=torch.rand(2, 3, dtype=torch.float64), truncation=1.0)
    for pw, gamma, compiled in ((dense, 0.5, False), (dense, 0.0, True), (potts, 0.5, True)):
        m, _ = chain_marginals(u, pw, lens, gamma)
        assert ("Numba" in type(m.grad_fn).__name__) == compiled
        m0, _ = chain_marginals_reference(u, pw, lens, gamma)
        torch.testing.assert_close(m, m0)


def test_numba_is_the_cpu_default(monkeypatch):
    """With ``CRFKIT_CHAIN_IMPL`` unset, CPU tensors go to numba; ``=torch`` forces the torch path."""
    from crfkit.ops.chain import choose_implementation

    u = torch.zeros(2, 3, 4)
    monkeypatch.delenv("CRFKIT_CHAIN_IMPL", raising=False)
    assert choose_implementation(u) == "numba"
    monkeypatch.setenv("CRFKIT_CHAIN_IMPL", "torch")
    assert choose_implementation(u) == "torch"


def test_marginals_into_out():
    """Without autograd the marginals are written into ``out`` (returned), equal to a fresh call's;
    an ``out`` of the wrong shape, dtype or layout is refused before any work."""
    from crfkit._validation import CRFValueError

    rng = np.random.default_rng(4)
    unary, arrays, lengths = make_chains(rng, 5, 6, 4, "truncated_linear", 2.0, 1)
    u, lens = torch.tensor(unary, dtype=torch.float32), torch.tensor(lengths)
    pw = pairwise_of("truncated_linear", tensors(arrays, torch.float32), 2.0)
    with torch.no_grad():
        want, want_v = nb.chain_marginals_numba(u, pw, lens, 0.0)
        out = torch.full_like(u, float("nan"))
        got, got_v = nb.chain_marginals_numba(u, pw, lens, 0.0, out=out)
        assert got is out and torch.equal(got, want) and torch.equal(got_v, want_v)
        for bad in (torch.empty(5, 6, 3), torch.empty(5, 6, 4, dtype=torch.float64), torch.empty(5, 4, 6).mT):
            with pytest.raises(CRFValueError, match="expected out"):
                nb.chain_marginals_numba(u, pw, lens, 0.0, out=bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_compiled_node_centring_matches_torch(dtype):
    """The solver loop's compiled node centring (direction and projection without autograd)
    equals the torch ops' (gathers per slot rank, ``index_add``, division, broadcast) bit for bit,
    on a grid with long-range offsets (nodes in 1 to 4 chains) and on padded chains."""
    import crfkit
    from crfkit.decomposition.grid import grid_chain_problem
    from crfkit.inference.dual_decomposition import DualDecomposition

    g = torch.Generator().manual_seed(3)
    L = 4
    crf = crfkit.GridCRF(torch.randn(2, L, 5, 6, generator=g, dtype=dtype),
                         torch.randn(2, 3, L, L, 5, 6, generator=g, dtype=dtype), offsets=((0, 1), (1, 0), (2, 1)))
    problem = grid_chain_problem(crf)
    compiled, plain = DualDecomposition(problem, "numba"), DualDecomposition(problem, "torch")
    assert compiled._center is not None and plain._center is None
    x = torch.randn(compiled.S, L, generator=g, dtype=dtype) * 10
    with torch.no_grad():
        want_center = x - plain.node_sum(x).div(plain.count[:, None]).index_select(0, plain.slot_node)
        assert torch.equal(compiled.node_center(x), want_center)
        assert torch.equal(compiled.direction(x), plain.direction(x))
        assert torch.equal(compiled.project(x.clone(), overwrite=True), plain.project(x.clone(), overwrite=True))
    # the layer's path (autograd on) stays on torch ops
    assert torch.equal(compiled.direction(x), plain.direction(x))


def _use_default_or(monkeypatch, impl):
    """Run with the chain backend ``impl``, or with the real CPU default when ``impl`` is None."""
    if impl is None:
        monkeypatch.delenv("CRFKIT_CHAIN_IMPL", raising=False)
    else:
        monkeypatch.setenv("CRFKIT_CHAIN_IMPL", impl)


@pytest.mark.parametrize("form", ["tl", "potts", "weighted"])
def test_solve_map_with_the_numba_default_matches_torch(monkeypatch, form):
    """End to end, the real CPU default (numba: marginals, certificate values, ICM's Viterbi) gives
    the torch path's labelling, score and certificate on a small grid; the certificate bounds
    the exact optimum (enumeration) from above and the labelling's score from below."""
    import crfkit
    from helpers import all_scores, random_spec, spec_to_crf

    rng = np.random.default_rng(8)
    spec = random_spec(rng, 2, 3, 3, 3, offsets=((0, 1), (1, 0), (1, 1)), forms=[form] * 3)
    crf = spec_to_crf(spec)
    out = {}
    for impl in ("torch", None):
        _use_default_or(monkeypatch, impl)
        out[impl] = crfkit.solve_map(crf, iters=40, gamma=0.0, decode_every=10)
    t, n = out["torch"], out[None]
    assert torch.equal(n.labels, t.labels)
    torch.testing.assert_close(n.primal, t.primal, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(n.dual, t.dual, rtol=1e-9, atol=1e-9)
    best = all_scores(spec)[0].max(axis=1)
    assert np.all(n.primal.numpy() <= best + 1e-9) and np.all(best <= n.dual.numpy() + 1e-9)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_layer_gradients_with_the_numba_default(monkeypatch, gamma):
    """The layer's backward runs through the numba kernels by default (the max; the smoothed max
    goes to torch for tables, so gamma = 0.5 checks that routing): same output and gradients
    (unary and pairwise tables) as the torch path."""
    from crfkit.nn import DualDecompositionCRF
    from helpers import random_spec, spec_tables

    rng = np.random.default_rng(4)
    spec = random_spec(rng, 2, 3, 4, 4, offsets=((0, 1), (1, 0)), forms=["dense", "dense"])
    layer = DualDecompositionCRF(num_iters=3, gamma=gamma, offsets=((0, 1), (1, 0)))
    w = torch.tensor(rng.normal(size=spec.unary.shape))
    res = {}
    for impl in ("torch", None):
        _use_default_or(monkeypatch, impl)
        unary = torch.tensor(spec.unary, requires_grad=True)
        tables = [torch.tensor(t, requires_grad=True) for t in spec_tables(spec)]
        logits = layer(unary, tables)
        res[impl] = (logits.detach(), torch.autograd.grad((logits * w).sum(), [unary, *tables]))
    (lt, gt), (ln, gn) = res["torch"], res[None]
    torch.testing.assert_close(ln, lt, rtol=1e-9, atol=1e-9)
    for a, b in zip(gn, gt):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_falls_back_to_torch_without_numba_and_warns_once():
    """numba unimportable: the CPU default is the torch path (values and gradients equal to the
    reference), with exactly one warning for the whole process."""
    code = (
        "import sys, warnings; sys.modules['numba'] = None\n"
        "import torch\n"
        "from crfkit.decomposition.chains import ChainPairwise\n"
        "from crfkit.ops.chain import chain_marginals, chain_marginals_reference, choose_implementation\n"
        "torch.manual_seed(0)\n"
        "pw = ChainPairwise('dense', tables=torch.randn(2, 2, 3, 3, dtype=torch.float64))\n"
        "lens = torch.tensor([3, 2])\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        u = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)\n"
        "        m, v = chain_marginals(u, pw, lens, 0.5)\n"
        "        (g,) = torch.autograd.grad(v.sum() + m.square().sum(), u)\n"
        "        m0, v0 = chain_marginals_reference(u, pw, lens, 0.5)\n"
        "        (g0,) = torch.autograd.grad(v0.sum() + m0.square().sum(), u)\n"
        "        torch.testing.assert_close(m, m0); torch.testing.assert_close(g, g0)\n"
        "print('warnings', sum('numba' in str(w.message) for w in seen))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CRFKIT_CHAIN_IMPL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warnings 1" in out.stdout


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_compiled_icm_matches_torch(monkeypatch, dtype):
    """Chain-wise ICM with the compiled conditioning (numba default) gives the torch version's
    labels on a grid with every pairwise form and stride-2 offsets, and never lowers the score."""
    from crfkit.decomposition.grid import grid_chain_problem
    from crfkit.inference.decoding import ProblemEdges, chain_icm, problem_score
    from helpers import random_spec, spec_to_crf

    rng = np.random.default_rng(6)
    spec = random_spec(rng, 2, 4, 6, 7, offsets=((0, 1), (1, 0), (0, 2), (2, 0)),
                       forms=["dense", "weighted", "potts", "tl"])
    problem = grid_chain_problem(spec_to_crf(spec, dtype=dtype))
    start = problem.unary.argmax(1)
    out = {}
    for impl in ("torch", None):
        _use_default_or(monkeypatch, impl)
        out[impl] = chain_icm(problem, start, ProblemEdges(problem), sweeps=2)
    assert torch.equal(out[None], out["torch"])
    assert torch.all(problem_score(problem, out[None]) >= problem_score(problem, start))
