"""Triton chain kernels against the plain reference, forward and every gradient.

Without CUDA the kernels run in Triton's interpreter on the CPU (``TRITON_INTERPRET=1`` is set
here, before Triton is first imported; sizes stay tiny: about 5 ms per program). If Triton was
already imported without the variable by another test module, the same checks run in a
subprocess instead. With CUDA the same grid runs on the GPU, plus the ``gpu``-marked tests.

Truth: ``chain_marginals_reference`` (plain loops, autograd) in float64 on the same values,
with random upstream gradients on both outputs (marginals and value).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

_CUDA = torch.cuda.is_available()
_PREIMPORTED = "triton" in sys.modules
if not _CUDA and not _PREIMPORTED:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from crfkit._validation import CRFShapeError, CRFValueError  # noqa: E402
from crfkit.decomposition.chains import ChainPairwise  # noqa: E402
from crfkit.ops.chain import chain_marginals  # noqa: E402
from crfkit.ops.chain import custom_op as O  # noqa: E402
from crfkit.ops.chain import triton as T  # noqa: E402
from crfkit.ops.chain.reference import chain_marginals_reference  # noqa: E402

DEVICE = "cuda" if _CUDA else "cpu"
IN_PROCESS = T.AVAILABLE
in_process = pytest.mark.skipif(
    not IN_PROCESS, reason="Triton was imported without TRITON_INTERPRET: checked in a subprocess"
)

# pairwise forms: (name, kind, truncation, signed weights)
FORMS = [
    ("dense", "dense", None, True),
    ("weighted", "weighted", None, True),
    ("tl2", "truncated_linear", 2.0, False),  # distance transform (max) / tiles on the fly (lse)
    ("potts", "truncated_linear", 1.0, False),  # Potts closed form (lse)
    ("tl2_signed", "truncated_linear", 2.0, True),  # negative weights: tiles on the fly
    # no effective truncation: the distance transform, any sign
    ("linear_signed", "truncated_linear", 50.0, True),
]
POTTS_SIGNED = ("potts_signed", "truncated_linear", 1.0, True)  # tiles on the fly
GAMMAS = [0.0, 0.5]
# (L, n, C): every L in {1, 2, 3, 5}, n in {1, 2, 4}, C in {1, 3} appears, in few interpreter runs
SIZES = [(1, 1, 1), (1, 4, 3), (2, 2, 3), (2, 4, 1), (3, 1, 3), (3, 4, 3), (5, 2, 1), (5, 4, 3)]


def _problem(form, C, n, L, gen, dtype=torch.float32, scale=1.0):
    _, kind, trunc, signed = form
    u = scale * torch.randn(C, n, L, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, n + 1, (C,), generator=gen)
    lengths[0] = n
    m = max(n - 1, 0)
    if kind == "dense":
        pw = dict(tables=torch.randn(C, m, L, L, generator=gen, dtype=torch.float64))
    elif kind == "weighted":
        pw = dict(
            tables=torch.randn(C, L, L, generator=gen, dtype=torch.float64),
            weight=torch.randn(C, m, generator=gen, dtype=torch.float64),
        )
    else:
        w = 2.0 * torch.rand(C, m, generator=gen, dtype=torch.float64)
        pw = dict(weight=scale * (w - 1.0 if signed else w), truncation=trunc)
    # round to the kernel's input dtype once: both sides see the same numbers
    u = u.to(dtype)
    pw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in pw.items()}
    return kind, u, pw, lengths


def _leaves(u, pw):
    return [u] + [pw[k] for k in ("tables", "weight") if k in pw]


def _run(fn, kind, leaves, pw, lengths, gamma, dm, dv, device):
    xs = [t.detach().to(device).requires_grad_(True) for t in leaves]
    names = [k for k in ("tables", "weight") if k in pw]
    args = {k: x for k, x in zip(names, xs[1:])}
    if "truncation" in pw:
        args["truncation"] = pw["truncation"]
    m, v = fn(xs[0], ChainPairwise(kind, **args), lengths.to(device), gamma)
    loss = (m.double() * dm.to(device)).sum() + (v.double() * dv.to(device)).sum()
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    return m, v, grads


def _compare(form, C, n, L, gamma, seed, dtype=torch.float32, fn=None, tol=None, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    kind, u, pw, lengths = _problem(form, C, n, L, gen, dtype, scale)
    leaves = _leaves(u, pw)
    dm = torch.randn(C, n, L, generator=gen, dtype=torch.float64)
    dv = torch.randn(C, generator=gen, dtype=torch.float64)
    ref_leaves = [t.double() for t in leaves]
    ref_pw = {k: (v.double() if torch.is_tensor(v) else v) for k, v in pw.items()}
    m_ref, v_ref, g_ref = _run(
        chain_marginals_reference, kind, ref_leaves, ref_pw, lengths, gamma, dm, dv, "cpu"
    )
    fn = fn or T.chain_marginals_triton
    m, v, grads = _run(fn, kind, leaves, pw, lengths, gamma, dm, dv, DEVICE)
    assert m.dtype == dtype and v.dtype == dtype
    assert m.shape == (C, n, L) and v.shape == (C,)
    if tol is None:  # float32 accumulation: errors of a few ulps of the values involved
        tol = 2e-5 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps

    def close(a, b):
        a = a.detach().double().cpu()
        scale = 1.0 + b.detach().abs().max().item() if b.numel() else 1.0
        torch.testing.assert_close(a, b.detach(), atol=tol * scale, rtol=tol)

    close(m, m_ref)
    close(v, v_ref)
    for x, gk, gr in zip(leaves, grads, g_ref):
        assert gk is not None and gk.dtype == x.dtype and gk.shape == x.shape
        close(gk, gr if gr is not None else torch.zeros_like(gk, dtype=torch.float64))


@in_process
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_matches_reference_grid(form, gamma):
    """Forward and all gradients on the grid (L in 1,2,3,5) x (n in 1,2,4) x (C in 1,3)."""
    for i, (L, n, C) in enumerate(SIZES):
        _compare(form, C, n, L, gamma, seed=1000 + 17 * i + int(10 * gamma))


@in_process
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize(
    "form",
    [FORMS[0], FORMS[1], FORMS[4], POTTS_SIGNED],
    ids=["dense", "weighted", "tl2_signed", "potts_signed"],
)
def test_label_tiles_and_chain_groups(form, gamma):
    """Labels split into tiles (online reductions across tiles); several chains per program."""
    cfg = (
        dict(BLOCK_I=2, BLOCK_J=4, BLOCK_C=2)
        if gamma == 0.0
        else dict(BLOCK_I=4, BLOCK_J=2, BLOCK_C=1)
    )

    def fn(u, pw, lengths, gamma):
        return T.chain_marginals_triton(u, pw, lengths, gamma, config=cfg)

    _compare(form, 3, 3, 5, gamma, seed=7, fn=fn)


@in_process
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize(
    "form", [FORMS[0], FORMS[1], FORMS[2], FORMS[3]], ids=["dense", "weighted", "tl2", "potts"]
)
def test_half_precision_inputs(form, gamma, dtype):
    """fp16/bf16 in, float32 accumulation, outputs and gradients back in the input dtype."""
    _compare(form, 3, 4, 5, gamma, seed=11, dtype=dtype)


@in_process
@pytest.mark.parametrize("form", [FORMS[0], FORMS[2], FORMS[3]], ids=["dense", "tl2", "potts"])
def test_large_scores_small_gamma(form):
    """Scores 30x larger than gamma = 0.05 (w / gamma up to 1200): no overflow, no underflow to
    log(0), gradients still match (relative to the size of the numbers)."""
    _compare(form, 3, 4, 5, 0.05, seed=21, scale=30.0, tol=1e-4)


@in_process
@pytest.mark.parametrize("gamma", GAMMAS)
def test_strided_tables(gamma):
    """Expanded views (one table shared by every chain / every edge) need no copy and give the
    gradient of the shared table by autograd's sum over the expansion."""
    gen = torch.Generator().manual_seed(3)
    C, n, L = 3, 4, 3
    u = torch.randn(C, n, L, generator=gen)
    t0 = torch.randn(L, L, generator=gen)
    w = torch.randn(C, n - 1, generator=gen)
    lengths = torch.tensor([4, 3, 2])
    dm = torch.randn(C, n, L, generator=gen)
    out = []
    for impl in (chain_marginals_reference, T.chain_marginals_triton):
        x = [
            u.clone().to(DEVICE).requires_grad_(),
            t0.clone().to(DEVICE).requires_grad_(),
            w.clone().to(DEVICE).requires_grad_(),
        ]
        pw_w = ChainPairwise("weighted", tables=x[1].expand(C, L, L), weight=x[2])
        pw_d = ChainPairwise("dense", tables=x[1].expand(C, n - 1, L, L))
        m1, v1 = impl(x[0], pw_w, lengths.to(DEVICE), gamma)
        m2, v2 = impl(x[0], pw_d, lengths.to(DEVICE), gamma)
        loss = (m1 * dm.to(DEVICE)).sum() + v1.sum() + (m2 * dm.to(DEVICE)).sum() + 2 * v2.sum()
        out.append([m1, m2, v1, v2, *torch.autograd.grad(loss, x)])
    for a, b in zip(out[1], out[0]):
        torch.testing.assert_close(a.detach().cpu(), b.detach().cpu(), atol=1e-5, rtol=1e-5)


@in_process
def test_bad_input_is_refused():
    u = torch.randn(2, 3, 4, device=DEVICE)
    lengths = torch.tensor([3, 2], device=DEVICE)
    good = ChainPairwise("dense", tables=torch.randn(2, 2, 4, 4, device=DEVICE))
    with pytest.raises(CRFShapeError, match=r"\[C, n-1, L, L\]"):
        T.chain_marginals_triton(
            u, ChainPairwise("dense", tables=torch.randn(2, 3, 4, 4, device=DEVICE)), lengths, 0.5
        )
    with pytest.raises(CRFShapeError, match="lengths"):
        T.chain_marginals_triton(u, good, torch.tensor([3, 2, 1], device=DEVICE), 0.5)
    with pytest.raises(CRFValueError, match="gamma"):
        T.chain_marginals_triton(u, good, lengths, -1.0)
    with pytest.raises(TypeError, match="integer"):
        T.chain_marginals_triton(u, good, lengths.float(), 0.5)


# ---------------------------------------------------------------------------------------------
# the custom op (both implementations behind it) and torch.compile
# ---------------------------------------------------------------------------------------------
@in_process
@pytest.mark.skipif(not O.REGISTERED, reason="torch.library.custom_op needs torch >= 2.4")
@pytest.mark.parametrize("use_triton", [True, False], ids=["triton", "torch_fallback"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_custom_op_matches_reference(monkeypatch, use_triton, gamma):
    monkeypatch.setattr(O, "_use_triton", lambda unary: use_triton)
    for form in (FORMS[0], FORMS[1], FORMS[3], FORMS[4]):
        _compare(form, 3, 4, 3, gamma, seed=5, fn=O.chain_marginals_op)


@pytest.mark.skipif(not O.REGISTERED, reason="torch.library.custom_op needs torch >= 2.4")
def test_custom_op_torch_fallback_gradcheck(monkeypatch):
    """The op's PyTorch implementation (the CPU fallback) in float64 against finite differences."""
    monkeypatch.setattr(O, "_use_triton", lambda unary: False)
    gen = torch.Generator().manual_seed(2)
    C, n, L = 2, 3, 3
    u = torch.randn(C, n, L, generator=gen, dtype=torch.float64, requires_grad=True)
    tab = torch.randn(C, L, L, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, n - 1, generator=gen, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def fn(u, tab, w):
        return O.chain_marginals_op(
            u, ChainPairwise("weighted", tables=tab, weight=w), lengths, 0.7
        )

    assert torch.autograd.gradcheck(fn, (u, tab, w))


def _compile_check(backend):
    gen = torch.Generator().manual_seed(4)
    C, n, L = 3, 4, 3
    lengths = torch.tensor([4, 2, 1], device=DEVICE)
    u0 = torch.randn(C, n, L, generator=gen).to(DEVICE)
    w0 = torch.rand(C, n - 1, generator=gen).to(DEVICE)
    if T.AVAILABLE:  # through the dispatcher, which hands the traced call to the custom op

        def impl(u, pw, lengths, gamma):
            return chain_marginals(u, pw, lengths, gamma, implementation="triton")

    else:
        impl = O.chain_marginals_op

    def make_model(impl):
        def model(u, w):
            pw = ChainPairwise("truncated_linear", weight=w, truncation=2.0)
            m, v = impl(u * 1.5, pw, lengths, 0.5)
            return (m.square()).sum() + v.sum()

        return model

    torch._dynamo.reset()
    compiled = torch.compile(make_model(impl), fullgraph=True, backend=backend)
    outs = []
    for f in (make_model(chain_marginals_reference), compiled, compiled):  # second call: cached
        u, w = u0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = f(u, w)
        outs.append([loss, *torch.autograd.grad(loss, (u, w))])
    for out in outs[1:]:
        for a, b in zip(out, outs[0]):
            torch.testing.assert_close(a.detach(), b.detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not O.REGISTERED, reason="torch.library.custom_op needs torch >= 2.4")
def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) through the op: no graph break, same values and gradients
    (aot_eager: Dynamo + AOT autograd with the op's fake implementations, no code generation)."""
    _compile_check("aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not O.REGISTERED, reason="torch.library.custom_op needs torch >= 2.4")
def test_torch_compile_inductor():
    """The same with code generation (a C++ compiler on the CPU: tens of seconds)."""
    _compile_check("inductor")


# ---------------------------------------------------------------------------------------------
# when Triton was imported first without the interpreter variable
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(IN_PROCESS or _CUDA, reason="checked in this process")
def test_in_subprocess_with_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not _CUDA, reason="needs a CUDA GPU")


@gpu
@needs_cuda
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize("L", [21, 64, 100])
def test_gpu_realistic_sizes(form, gamma, L):
    """The paper's sizes (L = 21, chains of 33), the stereo label count, and L = 100 (two tiles).

    For gamma = 0 at these sizes some arg-maxes are closer than float32 rounding, so the
    gradient is checked as what it must be: the indicator of a labelling whose score (summed
    in float64) is the maximum."""
    if gamma > 0:
        _compare(form, 40, 33, L, gamma, seed=L, tol=1e-4)
    else:
        _check_max_solution(form, 40, 33, L, seed=L, tol=1e-4)


def _check_max_solution(form, C, n, L, seed, tol):
    gen = torch.Generator().manual_seed(seed)
    kind, u, pw, lengths = _problem(form, C, n, L, gen)
    ref_pw = ChainPairwise(
        kind, **{k: (v.double() if torch.is_tensor(v) else v) for k, v in pw.items()}
    )
    m_ref, v_ref = chain_marginals_reference(u.double(), ref_pw, lengths, 0.0)
    xs = [t.detach().to(DEVICE).requires_grad_(True) for t in _leaves(u, pw)]
    names = [k for k in ("tables", "weight") if k in pw]
    args = {k: x for k, x in zip(names, xs[1:])}
    if "truncation" in pw:
        args["truncation"] = pw["truncation"]
    m, v = T.chain_marginals_triton(xs[0], ChainPairwise(kind, **args), lengths.to(DEVICE), 0.0)
    scale = 1.0 + m_ref.abs().max().item()
    torch.testing.assert_close(m.detach().double().cpu(), m_ref, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(v.detach().double().cpu(), v_ref, atol=tol * scale, rtol=tol)
    (gu,) = torch.autograd.grad(v.sum(), xs[0])
    gu = gu.double().cpu()
    valid = torch.arange(n)[None, :] < lengths[:, None]
    assert bool(((gu == 0) | (gu == 1)).all())
    torch.testing.assert_close(gu.sum(-1), valid.double())
    labels = gu.argmax(-1)  # [C, n]
    score = (u.double().gather(2, labels[:, :, None]).squeeze(2) * valid).sum(1)
    if n > 1:
        phi = ref_pw.dense(L)  # [C, n-1, L, L]
        pair = phi.gather(3, labels[:, 1:, None, None].expand(C, n - 1, L, 1)).squeeze(3)
        pair = pair.gather(2, labels[:, :-1, None]).squeeze(2)  # [C, n-1]
        score = score + (pair * valid[:, 1:]).sum(1)
    torch.testing.assert_close(score, v_ref, atol=tol * scale, rtol=tol)


@gpu
@needs_cuda
def test_gpu_torch_compile_inductor():
    _compile_check("inductor")


@gpu
@needs_cuda
def test_gpu_bfloat16():
    _compare(FORMS[0], 64, 17, 21, 0.5, seed=1, dtype=torch.bfloat16, tol=0.05)


@gpu
@needs_cuda
def test_gpu_cuda_graph_capture():
    """The forward and backward are capturable in a CUDA graph and replay to the same numbers."""
    gen = torch.Generator().manual_seed(0)
    C, n, L = 64, 17, 21
    u = torch.randn(C, n, L, generator=gen).cuda().requires_grad_()
    tab = torch.randn(C, n - 1, L, L, generator=gen).cuda().requires_grad_()
    lengths = torch.full((C,), n, device="cuda")
    pw = ChainPairwise("dense", tables=tab)

    def step():
        m, v = T.chain_marginals_triton(u, pw, lengths, 1.0)
        return torch.autograd.grad(m.square().sum() + v.sum(), (u, tab))

    expected = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up (JIT) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
