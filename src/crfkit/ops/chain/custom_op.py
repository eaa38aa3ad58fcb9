"""The chain operation as a PyTorch custom op, so that ``torch.compile`` keeps it in the graph.

Two ops, opaque to the compiler, with fake (meta) implementations for tracing:

- ``crfkit::chain_fwd(unary, tables?, weight?, lengths, kind, truncation, gamma)
  -> (marginals [C, n, L], value [C], f [C, n, L], g [C, n, L], rf [C, n, L] | [0], rg ...)``
- ``crfkit::chain_bwd(...) -> (d_unary, d_tables, d_weight)`` (empty tensors for absent inputs),

tied together by ``torch.library.register_autograd``. The saved messages ``f, g`` (float32)
and arg-max indices ``rf, rg`` (int32, ``gamma == 0`` only; otherwise empty) are extra
outputs of the forward op, so the backward recomputes nothing it already has.

Implementations: the Triton kernels (``crfkit.ops.chain.triton``) on CUDA tensors (and on
the CPU under ``TRITON_INTERPRET=1``); elsewhere a plain PyTorch version of the same
message/adjoint recursions (:func:`_torch_forward`, :func:`_torch_backward`, dense tables,
one step per chain position), which is also a readable specification of the kernels.

:func:`chain_marginals_op` has the signature of :func:`crfkit.ops.chain.chain_marginals`.
``REGISTERED`` is false on a PyTorch without ``torch.library.custom_op`` (< 2.4).
"""

from __future__ import annotations

import torch

from ...decomposition.chains import ChainPairwise
from . import triton as _tr

__all__ = ["REGISTERED", "chain_marginals_op"]

Tensor = torch.Tensor


def _use_triton(unary: Tensor) -> bool:
    return _tr.AVAILABLE and (unary.is_cuda or (_tr.INTERPRET and unary.device.type == "cpu"))


def _acc_dtype(unary: Tensor) -> torch.dtype:
    """Accumulation dtype: float32, or float64 for float64 inputs."""
    return torch.promote_types(unary.dtype, torch.float32)


def _smax(t: Tensor, gamma: float, dim: int):
    if gamma == 0.0:
        return t.max(dim=dim)
    return gamma * torch.logsumexp(t / gamma, dim=dim), None


def _torch_forward(unary, kind, tables, weight, truncation, lengths, gamma):
    """Messages and marginals in float32 with PyTorch ops; same outputs as the Triton forward."""
    C, n, L = unary.shape
    dev = unary.device
    pw = ChainPairwise(kind, tables=tables, weight=weight, truncation=truncation)
    acc = _acc_dtype(unary)
    phi = pw.dense(L).to(acc)
    u = unary.to(acc)
    lens = lengths.to(dev)
    pos = torch.arange(n, device=dev)
    ev = pos[None, : max(n - 1, 0)] < (lens[:, None] - 1)  # [C, n-1]
    f = torch.zeros((C, n, L), device=dev, dtype=acc)
    g = torch.zeros((C, n, L), device=dev, dtype=acc)
    is_max = gamma == 0.0
    shape_r = (C, n, L) if is_max else (0,)
    rf = torch.zeros(shape_r, device=dev, dtype=torch.int32)
    rg = torch.zeros(shape_r, device=dev, dtype=torch.int32)
    for k in range(n - 1):
        val, idx = _smax((u[:, k] + f[:, k])[:, :, None] + phi[:, k], gamma, dim=1)
        f[:, k + 1] = torch.where(ev[:, k, None], val, 0.0)
        if is_max:
            rf[:, k + 1] = torch.where(ev[:, k, None], idx, 0).int()
    for k in range(n - 2, -1, -1):
        val, idx = _smax(phi[:, k] + (u[:, k + 1] + g[:, k + 1])[:, None, :], gamma, dim=2)
        g[:, k] = torch.where(ev[:, k, None], val, 0.0)
        if is_max:
            rg[:, k] = torch.where(ev[:, k, None], idx, 0).int()
    valid = pos[None, :] < lens[:, None]
    marg = torch.where(valid[:, :, None], u + f + g, 0.0)
    value = _smax(marg[:, 0], gamma, dim=1)[0]
    return marg, value, f, g, rf, rg


def _torch_backward(
    unary, kind, tables, weight, truncation, lengths, gamma, f, g, rf, rg, d_marg, d_value
):
    """The adjoint recursions of the module docs of ``crfkit.ops.chain.triton``, in PyTorch."""
    C, n, L = unary.shape
    dev = unary.device
    pw = ChainPairwise(kind, tables=tables, weight=weight, truncation=truncation)
    acc = f.dtype
    phi = pw.dense(L).to(acc)
    u = unary.to(acc)
    lens = lengths.to(dev)
    pos = torch.arange(n, device=dev)
    valid = pos[None, :] < lens[:, None]
    ev = pos[None, : max(n - 1, 0)] < (lens[:, None] - 1)
    is_max = gamma == 0.0
    dm = torch.where(valid[:, :, None], d_marg.to(acc), 0.0)
    m0 = u[:, 0] + g[:, 0]
    if is_max:
        p0 = torch.zeros_like(m0).scatter_(1, m0.argmax(dim=1, keepdim=True), 1.0)
    else:
        p0 = torch.softmax(m0 / gamma, dim=1)
    dm[:, 0] += d_value.to(acc)[:, None] * p0
    lab = torch.arange(L, device=dev)

    def w_f(k):  # [C, a, c]
        if is_max:
            return (rf[:, k + 1, None, :] == lab[None, :, None]).to(acc)
        t = (u[:, k] + f[:, k])[:, :, None] + phi[:, k] - f[:, k + 1, None, :]
        return torch.exp(t.clamp(max=0.0) / gamma)

    def w_g(k):
        if is_max:
            return (rg[:, k, :, None] == lab[None, None, :]).to(acc)
        t = phi[:, k] + (u[:, k + 1] + g[:, k + 1])[:, None, :] - g[:, k, :, None]
        return torch.exp(t.clamp(max=0.0) / gamma)

    dx = torch.zeros((C, n, L), device=dev, dtype=acc)
    for k in range(n - 2, -1, -1):
        fa = dm[:, k + 1] + dx[:, k + 1]
        dx[:, k] = torch.where(ev[:, k, None], (w_f(k) * fa[:, None, :]).sum(2), 0.0)
    gs = torch.zeros((C, n, L), device=dev, dtype=acc)
    gs[:, 0] = dm[:, 0]
    dphi = torch.zeros((C, max(n - 1, 0), L, L), device=dev, dtype=acc)
    for k in range(n - 1):
        fa = dm[:, k + 1] + dx[:, k + 1]
        tg = gs[:, k, :, None] * w_g(k)
        dphi[:, k] = torch.where(ev[:, k, None, None], w_f(k) * fa[:, None, :] + tg, 0.0)
        gs[:, k + 1] = torch.where(ev[:, k, None], dm[:, k + 1] + tg.sum(1), 0.0)
    du = (dx + gs).to(unary.dtype)
    empty = unary.new_empty(0)
    if kind == "dense":
        return du, dphi.to(tables.dtype), empty
    if kind == "weighted":
        d_tab = (weight.to(acc)[:, :, None, None] * dphi).sum(1)
        d_w = (dphi * tables.to(acc)[:, None]).sum((2, 3))
        return du, d_tab.to(tables.dtype), d_w.to(weight.dtype)
    dist = (lab[:, None] - lab[None, :]).abs().to(acc).clamp(max=float(truncation))
    return du, empty, (-(dphi * dist).sum((2, 3))).to(weight.dtype)


REGISTERED = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")

if REGISTERED:

    @torch.library.custom_op("crfkit::chain_fwd", mutates_args=())
    def _chain_fwd(
        unary: Tensor,
        tables: Tensor | None,
        weight: Tensor | None,
        lengths: Tensor,
        kind: str,
        truncation: float,
        gamma: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        if _use_triton(unary):
            marg, value, f, g, rf, rg, _ = _tr.chain_forward(
                unary, kind, tables, weight, truncation, lengths, gamma
            )
            f, g = f.to(_acc_dtype(unary)), g.to(_acc_dtype(unary))
            if gamma != 0.0:  # two distinct empty tensors: outputs of a custom op may not alias
                rf = torch.zeros(0, device=unary.device, dtype=torch.int32)
                rg = torch.zeros(0, device=unary.device, dtype=torch.int32)
        else:
            marg, value, f, g, rf, rg = _torch_forward(
                unary, kind, tables, weight, truncation, lengths, gamma
            )
        return marg.to(unary.dtype), value.to(unary.dtype), f, g, rf, rg

    @_chain_fwd.register_fake
    def _chain_fwd_fake(unary, tables, weight, lengths, kind, truncation, gamma):
        C, n, L = unary.shape
        r_shape = (C, n, L) if gamma == 0.0 else (0,)
        return (
            unary.new_empty((C, n, L)),
            unary.new_empty((C,)),
            unary.new_empty((C, n, L), dtype=_acc_dtype(unary)),
            unary.new_empty((C, n, L), dtype=_acc_dtype(unary)),
            unary.new_empty(r_shape, dtype=torch.int32),
            unary.new_empty(r_shape, dtype=torch.int32),
        )

    @torch.library.custom_op("crfkit::chain_bwd", mutates_args=())
    def _chain_bwd(
        unary: Tensor,
        tables: Tensor | None,
        weight: Tensor | None,
        lengths: Tensor,
        kind: str,
        truncation: float,
        gamma: float,
        f: Tensor,
        g: Tensor,
        rf: Tensor,
        rg: Tensor,
        d_marg: Tensor,
        d_value: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        empty = unary.new_empty(0)
        if _use_triton(unary):
            du, dt, dw = _tr.chain_backward(
                unary,
                kind,
                tables,
                weight,
                truncation,
                lengths,
                gamma,
                f.float(),
                g.float(),
                rf,
                rg,
                d_marg,
                d_value,
            )
            return (
                du.to(unary.dtype),
                dt.to(tables.dtype) if dt is not None else empty,
                dw.to(weight.dtype) if dw is not None else empty,
            )
        return _torch_backward(
            unary, kind, tables, weight, truncation, lengths, gamma, f, g, rf, rg, d_marg, d_value
        )

    @_chain_bwd.register_fake
    def _chain_bwd_fake(
        unary, tables, weight, lengths, kind, truncation, gamma, f, g, rf, rg, d_marg, d_value
    ):
        empty = unary.new_empty(0)
        return (
            torch.empty_like(unary),
            torch.empty_like(tables)
            if kind == "dense"
            else (tables.new_empty(tables.shape) if kind == "weighted" else empty),
            weight.new_empty(weight.shape) if weight is not None else empty,
        )

    def _setup_context(ctx, inputs, output):
        unary, tables, weight, lengths, kind, truncation, gamma = inputs
        _, _, f, g, rf, rg = output
        ctx.save_for_backward(unary, tables, weight, lengths, f, g, rf, rg)
        ctx.kind, ctx.truncation, ctx.gamma = kind, truncation, gamma
        ctx.has_tables, ctx.has_weight = tables is not None, weight is not None

    def _backward(ctx, d_marg, d_value, _df, _dg, _drf, _drg):
        unary, tables, weight, lengths, f, g, rf, rg = ctx.saved_tensors
        C, n, L = unary.shape
        if d_marg is None:
            d_marg = unary.new_zeros((C, n, L))
        if d_value is None:
            d_value = unary.new_zeros((C,))
        du, dt, dw = torch.ops.crfkit.chain_bwd(
            unary,
            tables,
            weight,
            lengths,
            ctx.kind,
            ctx.truncation,
            ctx.gamma,
            f,
            g,
            rf,
            rg,
            d_marg,
            d_value,
        )
        return (
            du,
            dt if ctx.has_tables else None,
            dw if ctx.has_weight else None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("crfkit::chain_fwd", _backward, setup_context=_setup_context)


def chain_marginals_op(
    unary: Tensor, pairwise: ChainPairwise, lengths: Tensor, gamma: float
) -> tuple[Tensor, Tensor]:
    """(Smoothed) max-marginals through the registered custom op (``torch.compile``-friendly).

    Args:
        unary: ``[C, n, L]`` node scores.
        pairwise: :class:`~crfkit.decomposition.ChainPairwise` over the same chains.
        lengths: ``[C]`` integer, valid positions per chain.
        gamma: ``0`` for max, ``> 0`` for ``gamma * logsumexp(· / gamma)``.

    Returns:
        ``marginals [C, n, L]`` (zero on padding) and ``value [C]``, differentiable with respect
        to ``unary``, ``pairwise.tables`` and ``pairwise.weight``.
    """
    if not REGISTERED:  # pragma: no cover - torch < 2.4
        raise RuntimeError("crfkit's custom chain op needs torch.library.custom_op (torch >= 2.4)")
    gamma = _tr.validate_chain_inputs(unary, pairwise, lengths, gamma)
    truncation = float(pairwise.truncation) if pairwise.truncation is not None else 0.0
    marg, value, *_ = torch.ops.crfkit.chain_fwd(
        unary, pairwise.tables, pairwise.weight, lengths, pairwise.kind, truncation, gamma
    )
    return marg, value
