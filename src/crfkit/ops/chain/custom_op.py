"""The chain operation as a PyTorch custom op, so that ``torch.compile`` keeps it in the graph.

Two ops, opaque to the compiler, with fake (meta) implementations for tracing:

- ``crfkit::chain_fwd(unary, tables?, weight?, lengths, kind, truncation, gamma)
  -> (marginals [C, n, L], value [C], f, g, rf, rg)`` (the saved messages and, for the
  Triton kernels at ``gamma == 0``, their arg-max indices; empty tensors where unused);
- ``crfkit::chain_bwd(...) -> (d_unary, d_tables, d_weight)`` (empty tensors for absent inputs),

tied together by ``torch.library.register_autograd``. The pairwise form crosses the op boundary
as its ``kind`` and tensors (an op takes only tensors and scalars) and is rebuilt inside.

Implementations: the Triton kernels (``crfkit.ops.chain.triton``) on CUDA tensors (and on the
CPU under ``TRITON_INTERPRET=1``); elsewhere the PyTorch path (``crfkit.ops.chain.torch``,
:func:`torch_forward` / :func:`torch_backward`), whose saved messages are ``[n, C, L]`` in the
input dtype (the Triton ones ``[C, n, L]`` float32). No third implementation lives here.

:func:`chain_marginals_op` has the signature of :func:`crfkit.ops.chain.chain_marginals`.
``REGISTERED`` is false on a PyTorch without ``torch.library.custom_op`` (< 2.4).
"""

from __future__ import annotations

import torch

from ...decomposition.chains import ChainPairwise
from . import triton as _tr
from .checks import check_chain_inputs
from .torch import torch_backward, torch_forward

__all__ = ["REGISTERED", "chain_marginals_op"]

Tensor = torch.Tensor


def _use_triton(unary: Tensor) -> bool:
    return _tr.AVAILABLE and (unary.is_cuda or (_tr.INTERPRET and unary.device.type == "cpu"))


def _acc_dtype(unary: Tensor) -> torch.dtype:
    """Accumulation dtype of the Triton kernels' saved messages: float32 (float64 for float64 input)."""
    return torch.promote_types(unary.dtype, torch.float32)


def _form(kind: str, tables, weight, truncation: float) -> ChainPairwise:
    trunc = truncation if kind == "truncated_linear" else None
    return ChainPairwise(kind, tables=tables, weight=weight, truncation=trunc)


REGISTERED = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")

if REGISTERED:

    @torch.library.custom_op("crfkit::chain_fwd", mutates_args=())
    def _chain_fwd(
        unary: Tensor, tables: Tensor | None, weight: Tensor | None, lengths: Tensor, kind: str, truncation: float,
        gamma: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        pw = _form(kind, tables, weight, truncation)
        if _use_triton(unary):
            marg, value, f, g, rf, rg, _ = _tr.chain_forward(unary, pw, lengths, gamma)
            f, g = f.to(_acc_dtype(unary)), g.to(_acc_dtype(unary))
        else:
            marg, value, f, g, _ = torch_forward(unary, pw, lengths, gamma)
            rf = rg = None
        if rf is None or gamma != 0.0:  # two distinct empty tensors: outputs of a custom op may not alias
            rf = torch.zeros(0, device=unary.device, dtype=torch.int32)
            rg = torch.zeros(0, device=unary.device, dtype=torch.int32)
        return marg.to(unary.dtype), value.to(unary.dtype), f, g, rf, rg

    @_chain_fwd.register_fake
    def _chain_fwd_fake(unary, tables, weight, lengths, kind, truncation, gamma):
        C, n, L = unary.shape
        triton = _use_triton(unary)
        r_shape = (C, n, L) if gamma == 0.0 and triton else (0,)
        m_shape, m_dtype = ((C, n, L), _acc_dtype(unary)) if triton else ((n, C, L), unary.dtype)
        return (
            unary.new_empty((C, n, L)),
            unary.new_empty((C,)),
            unary.new_empty(m_shape, dtype=m_dtype),
            unary.new_empty(m_shape, dtype=m_dtype),
            unary.new_empty(r_shape, dtype=torch.int32),
            unary.new_empty(r_shape, dtype=torch.int32),
        )

    @torch.library.custom_op("crfkit::chain_bwd", mutates_args=())
    def _chain_bwd(
        unary: Tensor, tables: Tensor | None, weight: Tensor | None, lengths: Tensor, kind: str, truncation: float,
        gamma: float, f: Tensor, g: Tensor, rf: Tensor, rg: Tensor, d_marg: Tensor, d_value: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        empty = unary.new_empty(0)
        pw = _form(kind, tables, weight, truncation)
        if _use_triton(unary):
            du, dt, dw = _tr.chain_backward(unary, pw, lengths, gamma, f.float(), g.float(), rf, rg, d_marg, d_value)
        else:
            du, dt, dw = torch_backward(unary, pw, lengths, gamma, f, g, d_marg, d_value)
        return (
            du.to(unary.dtype),
            dt.to(tables.dtype) if dt is not None else empty,
            dw.to(weight.dtype) if dw is not None else empty,
        )

    @_chain_bwd.register_fake
    def _chain_bwd_fake(
        unary, tables, weight, lengths, kind, truncation, gamma, f, g, rf, rg, d_marg, d_value
    ):
        empty = unary.new_empty(0)
        return (
            torch.empty_like(unary),
            tables.new_empty(tables.shape) if tables is not None else empty,
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
            unary, tables, weight, lengths, ctx.kind, ctx.truncation, ctx.gamma, f, g, rf, rg, d_marg, d_value
        )
        return du, dt if ctx.has_tables else None, dw if ctx.has_weight else None, None, None, None, None

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
    gamma = check_chain_inputs(unary, pairwise, lengths, gamma, check_lengths=False)
    # the op carries a form as its kind and tensors: a form it cannot rebuild goes as dense tables
    pairwise = _tr.as_kernel_form(pairwise, unary.shape[-1])
    truncation = pairwise.truncation if pairwise.truncation is not None else 0.0
    tables, weight = pairwise.tensors()
    marg, value, *_ = torch.ops.crfkit.chain_fwd(unary, tables, weight, lengths, pairwise.kind, truncation, gamma)
    return marg, value
