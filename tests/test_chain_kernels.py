"""Chain kernels: (smoothed) max-marginals of batches of chains.

Both implementations (``reference`` and ``torch``) against enumeration over all labellings of
each chain, gradients by ``torch.autograd.gradcheck`` (float64, gamma > 0), and the max
version's gradient against the reference's autograd gradient where the argmax is unique.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crfkit.decomposition import grid_chain_problem
from crfkit.decomposition.chains import ChainPairwise
from crfkit.ops.chain import chain_marginals, chain_marginals_reference
from helpers import chain_brute, chain_tables_np, random_spec, smax_np, spec_to_crf

IMPLS = ["reference", "torch"]
# (kind, truncation, sign of the weights): Potts (truncation 1) and truncation 2 take O(L)
# paths in fast kernels when weights are >= 0; negative weights must work as well.
PAIRWISE_CASES = [
    ("dense", None, 1),
    ("weighted", None, 1),
    ("weighted", None, -1),
    ("truncated_linear", 1.0, 1),
    ("truncated_linear", 2.0, 1),
    ("truncated_linear", 1.5, 1),
    ("truncated_linear", 1.0, -1),
    ("truncated_linear", 2.0, 0),
]


def make_chains(rng, C, n, L, kind, truncation=None, sign=1, lengths=None, scale=1.0, wscale=1.0):
    """Random right-padded chains as numpy arrays; padding filled with garbage (must be ignored)."""
    unary = scale * rng.normal(size=(C, n, L))
    if lengths is None:
        lengths = rng.integers(1, n + 1, size=C)
        lengths[0] = n
    lengths = np.asarray(lengths, dtype=np.int64)
    m = max(n - 1, 0)
    if kind == "dense":
        arrays = {"tables": wscale * rng.normal(size=(C, m, L, L))}
    elif kind == "weighted":
        arrays = {
            "tables": rng.normal(size=(C, L, L)),
            "weight": sign * wscale * rng.uniform(0, 1.5, size=(C, m)),
        }
    else:
        w = wscale * rng.uniform(0, 1.5, size=(C, m))
        if sign < 0:
            w = -w
        elif sign == 0:  # mixed signs
            w = w * rng.choice([-1.0, 1.0], size=w.shape)
        arrays = {"weight": w}
    return unary, arrays, lengths


def to_pairwise(kind, arrays, truncation, dtype=torch.float64, requires_grad=False):
    ts = {k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for k, v in arrays.items()}
    return ChainPairwise(
        kind, tables=ts.get("tables"), weight=ts.get("weight"), truncation=truncation
    ), ts


def brute_chains(unary, arrays, lengths, kind, truncation, gamma):
    C, n, L = unary.shape
    full = chain_tables_np(kind, L, arrays.get("tables"), arrays.get("weight"), truncation)
    values = np.zeros(C)
    margs = np.zeros((C, n, L))
    for c in range(C):
        m = int(lengths[c])
        values[c], margs[c, :m] = chain_brute(unary[c, :m], full[c, : m - 1], gamma)
    return values, margs


@st.composite
def chain_batches(draw):
    C = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    L = draw(st.integers(1, 3))
    kind, truncation, sign = draw(st.sampled_from(PAIRWISE_CASES))
    gamma = draw(st.sampled_from([0.0, 0.3, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign)
    return unary, arrays, lengths, kind, truncation, gamma


@pytest.mark.parametrize("impl", IMPLS)
@given(batch=chain_batches())
def test_chain_kernels_against_enumeration(impl, batch):
    """``value`` = smax over all labellings of each chain; ``marginals[k, l]`` = smax over the
    labellings with ``x_k = l``; zero on padding."""
    unary, arrays, lengths, kind, truncation, gamma = batch
    pw, _ = to_pairwise(kind, arrays, truncation)
    marg, value = chain_marginals(
        torch.tensor(unary), pw, torch.tensor(lengths), gamma, implementation=impl
    )
    want_v, want_m = brute_chains(unary, arrays, lengths, kind, truncation, gamma)
    assert marg.shape == unary.shape and value.shape == (unary.shape[0],)
    assert marg.dtype == torch.float64 and value.dtype == torch.float64
    np.testing.assert_allclose(value.numpy(), want_v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(marg.numpy(), want_m, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("case", PAIRWISE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_marginals_consistent_with_value(impl, gamma, case):
    """At every valid position, smax_l marginal_k(l) equals the chain's value (a larger batch
    than enumeration allows)."""
    kind, truncation, sign = case
    rng = np.random.default_rng(7)
    unary, arrays, lengths = make_chains(rng, 6, 9, 5, kind, truncation, sign)
    pw, _ = to_pairwise(kind, arrays, truncation)
    marg, value = chain_marginals(
        torch.tensor(unary), pw, torch.tensor(lengths), gamma, implementation=impl
    )
    for c in range(6):
        m = int(lengths[c])
        np.testing.assert_allclose(
            smax_np(marg[c, :m].numpy(), gamma, axis=1), value[c].item(), rtol=1e-10, atol=1e-10
        )
        assert torch.all(marg[c, m:] == 0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("case", PAIRWISE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_torch_matches_reference_forward_and_backward(gamma, case):
    """Larger batches: the fast kernel's outputs and gradients (random upstream gradients on
    both outputs) equal the reference's autograd ones. At gamma = 0 this is the max version's
    gradient where the argmax is unique (continuous random inputs: ties have probability 0)."""
    kind, truncation, sign = case
    rng = np.random.default_rng(11)
    C, n, L = 5, 7, 4
    unary, arrays, lengths = make_chains(rng, C, n, L, kind, truncation, sign)
    d_marg = torch.tensor(rng.normal(size=(C, n, L)))
    d_value = torch.tensor(rng.normal(size=C))
    results = {}
    for impl in IMPLS:
        u = torch.tensor(unary, requires_grad=True)
        pw, ts = to_pairwise(kind, arrays, truncation, requires_grad=True)
        marg, value = chain_marginals(u, pw, torch.tensor(lengths), gamma, implementation=impl)
        leaves = [u] + [ts[k] for k in sorted(ts)]
        grads = torch.autograd.grad((marg * d_marg).sum() + (value * d_value).sum(), leaves)
        results[impl] = (marg.detach(), value.detach(), grads)
    (m0, v0, g0), (m1, v1, g1) = results["reference"], results["torch"]
    torch.testing.assert_close(m1, m0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v1, v0, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma", [0.5, 1.3])
@pytest.mark.parametrize("case", PAIRWISE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_gradcheck(impl, gamma, case):
    """float64 gradcheck of both outputs with respect to unary and every pairwise tensor,
    on chains of different lengths (gradients on padding must be zero)."""
    kind, truncation, sign = case
    rng = np.random.default_rng(3)
    unary, arrays, lengths = make_chains(rng, 2, 4, 3, kind, truncation, sign, lengths=[4, 2])
    names = sorted(arrays)
    lengths_t = torch.tensor(lengths)

    def fn(u, *tensors):
        ts = dict(zip(names, tensors))
        pw = ChainPairwise(
            kind, tables=ts.get("tables"), weight=ts.get("weight"), truncation=truncation
        )
        return chain_marginals(u, pw, lengths_t, gamma, implementation=impl)

    inputs = [torch.tensor(unary, requires_grad=True)] + [
        torch.tensor(arrays[k], requires_grad=True) for k in names
    ]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_of_value_is_the_marginal_distribution(impl):
    """Closed form: d value / d unary[k, l] = softmax(marginal_k / gamma)[l] (gamma > 0) and the
    one-hot argmax (gamma = 0)."""
    rng = np.random.default_rng(5)
    unary, arrays, lengths = make_chains(rng, 3, 5, 4, "dense", lengths=[5, 3, 1])
    for gamma in (0.0, 0.7):
        u = torch.tensor(unary, requires_grad=True)
        pw, _ = to_pairwise("dense", arrays, None)
        marg, value = chain_marginals(u, pw, torch.tensor(lengths), gamma, implementation=impl)
        (g,) = torch.autograd.grad(value.sum(), u)
        for c in range(3):
            m = int(lengths[c])
            mk = marg[c, :m].detach()
            if gamma > 0:
                want = torch.softmax(mk / gamma, dim=1)
            else:
                want = torch.nn.functional.one_hot(mk.argmax(1), 4).to(torch.float64)
            torch.testing.assert_close(g[c, :m], want, rtol=1e-10, atol=1e-10)
            assert torch.all(g[c, m:] == 0)


POTTS_UNDERFLOW: list = []  # fixed: the Potts closed form is computed in the log domain
STABILITY_CASES = [
    (impl, case)
    if not (impl == "torch" and case[1] == 1.0)
    else pytest.param(impl, case, marks=POTTS_UNDERFLOW)
    for impl in IMPLS
    for case in [("dense", None, 1), ("truncated_linear", 1.0, 1), ("truncated_linear", 2.0, 1)]
]


@pytest.mark.parametrize("impl,case", STABILITY_CASES)
def test_numerically_stable_at_large_scores(impl, case):
    """Scores of size 1e3 with a small gamma: no overflow, still equal to enumeration."""
    kind, truncation, sign = case
    rng = np.random.default_rng(9)
    unary, arrays, lengths = make_chains(
        rng, 3, 4, 3, kind, truncation, sign, scale=1e3, wscale=50.0
    )
    pw, _ = to_pairwise(kind, arrays, truncation)
    for gamma in (0.01, 1.0):
        marg, value = chain_marginals(
            torch.tensor(unary), pw, torch.tensor(lengths), gamma, implementation=impl
        )
        want_v, want_m = brute_chains(unary, arrays, lengths, kind, truncation, gamma)
        assert torch.isfinite(marg).all() and torch.isfinite(value).all()
        np.testing.assert_allclose(value.numpy(), want_v, rtol=1e-11, atol=1e-8)
        np.testing.assert_allclose(marg.numpy(), want_m, rtol=1e-11, atol=1e-8)
    # gradients too (random upstream gradients), against the reference's autograd
    d_marg = torch.tensor(rng.normal(size=unary.shape))
    for gamma in (0.01, 1.0):
        grads = []
        for which in ("reference", impl):
            u = torch.tensor(unary, requires_grad=True)
            pw, ts = to_pairwise(kind, arrays, truncation, requires_grad=True)
            marg, value = chain_marginals(u, pw, torch.tensor(lengths), gamma, implementation=which)
            leaves = [u] + [ts[k] for k in sorted(ts)]
            grads.append(torch.autograd.grad((marg * d_marg).sum() + value.sum(), leaves))
        for a, b in zip(*grads):
            assert torch.isfinite(b).all()
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_inputs(impl):
    """float32 in, float32 out (values and gradients), close to the float64 result."""
    rng = np.random.default_rng(13)
    unary, arrays, lengths = make_chains(rng, 4, 6, 3, "weighted")
    out = {}
    for dtype in (torch.float32, torch.float64):
        u = torch.tensor(unary, dtype=dtype, requires_grad=True)
        pw, ts = to_pairwise("weighted", arrays, None, dtype=dtype, requires_grad=True)
        marg, value = chain_marginals(u, pw, torch.tensor(lengths), 1.0, implementation=impl)
        assert marg.dtype == dtype and value.dtype == dtype
        grads = torch.autograd.grad(marg.sum() + value.sum(), [u, ts["weight"], ts["tables"]])
        assert all(g.dtype == dtype for g in grads)
        out[dtype] = (marg, value, grads)
    m32, v32, g32 = out[torch.float32]
    m64, v64, g64 = out[torch.float64]
    torch.testing.assert_close(m32.double(), m64.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(v32.double(), v64.detach(), rtol=1e-5, atol=1e-4)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_dispatch(monkeypatch):
    """``implementation=`` and ``CRFKIT_CHAIN_IMPL`` pick the kernel; unknown names are refused."""
    rng = np.random.default_rng(17)
    unary, arrays, lengths = make_chains(rng, 3, 4, 3, "dense")
    pw, _ = to_pairwise("dense", arrays, None)
    u, lens = torch.tensor(unary), torch.tensor(lengths)
    ref_m, ref_v = chain_marginals_reference(u, pw, lens, 0.5)
    for impl in IMPLS:
        monkeypatch.setenv("CRFKIT_CHAIN_IMPL", impl)
        m, v = chain_marginals(u, pw, lens, 0.5)
        torch.testing.assert_close(m, ref_m, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(v, ref_v, rtol=1e-10, atol=1e-10)
    monkeypatch.delenv("CRFKIT_CHAIN_IMPL")
    with pytest.raises(ValueError, match="nonexistent"):
        chain_marginals(u, pw, lens, 0.5, implementation="nonexistent")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma", [0.0, 0.5])
@pytest.mark.parametrize("form", ["shared", "weighted", "potts", "potts_scalar", "tl"])
def test_pairwise_forms_give_the_marginals_of_full_tables(impl, gamma, form):
    """The chains of a grid model in any pairwise form have the marginals, values and unary
    gradients of the same model written with full per-edge tables."""
    rng = np.random.default_rng(19)
    spec = random_spec(rng, 2, 4, 4, 5, offsets=((0, 1), (1, 1), (1, -1)), forms=[form] * 3)
    out = []
    for dense in (False, True):
        problem = grid_chain_problem(spec_to_crf(spec, dense=dense))
        res = []
        for g in problem.groups:
            u = problem.unary[g.nodes.clamp(min=0)].clone().requires_grad_(True)
            marg, value = chain_marginals(u, g.pairwise, g.lengths, gamma, implementation=impl)
            (grad,) = torch.autograd.grad((marg * marg.detach().cos()).sum() + value.sum(), u)
            res.append((marg.detach(), value.detach(), grad))
        out.append(res)
    for a, b in zip(*out):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
