"""Naive PyTorch chain operation: the baseline the benchmarks measure against.

A Python loop over chain positions with ``torch.logsumexp`` / ``max`` on dense
``[C, L, L]`` slices, all chains of the batch at once, gradients by autograd (what a
user would write first).  Same signature and semantics as
:func:`crfkit.ops.chain.chain_marginals`::

    marginals [C, n, L], value [C] = naive_chain_marginals(unary [C, n, L], pairwise,
                                                            lengths [C], gamma)

Padding is handled by masking: messages are reset to zero past each chain's end, and
the marginals are zero on padded positions.
"""

from __future__ import annotations

import torch

from crfkit.decomposition.chains import ChainPairwise

__all__ = ["naive_chain_marginals"]


def _smax(x: torch.Tensor, gamma: float, dim: int) -> torch.Tensor:
    if gamma == 0.0:
        return x.max(dim=dim).values
    return gamma * torch.logsumexp(x / gamma, dim=dim)


def _table(pairwise: ChainPairwise, k: int, L: int) -> torch.Tensor:
    """The dense ``[C, L, L]`` scores of edge ``k`` (built per step, as a user would)."""
    if pairwise.kind == "dense":
        return pairwise.tables[:, k]
    w = pairwise.weight[:, k, None, None]
    if pairwise.kind == "weighted":
        return w * pairwise.tables
    idx = torch.arange(L, device=w.device, dtype=w.dtype)
    return -w * (idx[:, None] - idx[None, :]).abs().clamp(max=float(pairwise.truncation))


def naive_chain_marginals(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of right-padded chains, by a Python loop over positions.

    Args:
        unary: ``[C, n, L]`` node scores.
        pairwise: :class:`~crfkit.decomposition.ChainPairwise` (each edge's ``[C, L, L]`` table is
            built when its step runs).
        lengths: ``[C]`` long, valid positions per chain.
        gamma: ``0`` for max, ``> 0`` for ``gamma * logsumexp(· / gamma)``.

    Returns:
        ``marginals [C, n, L]`` (zero on padding) and ``value [C]``.
    """
    C, n, L = unary.shape
    lengths = lengths.to(unary.device)
    pos = torch.arange(n, device=unary.device)
    valid = pos[None, :] < lengths[:, None]  # [C, n]
    edge_valid = pos[None, : max(n - 1, 0)] + 1 < lengths[:, None]  # [C, n-1]
    zero = unary.new_zeros(C, L)
    fwd = [zero]
    for k in range(n - 1):
        msg = _smax((unary[:, k] + fwd[k])[:, :, None] + _table(pairwise, k, L), gamma, dim=1)
        fwd.append(torch.where(edge_valid[:, k, None], msg, zero))
    bwd = [zero] * n
    for k in range(n - 2, -1, -1):
        msg = _smax(
            _table(pairwise, k, L) + (unary[:, k + 1] + bwd[k + 1])[:, None, :], gamma, dim=2
        )
        bwd[k] = torch.where(edge_valid[:, k, None], msg, zero)
    marg = torch.stack([unary[:, k] + fwd[k] + bwd[k] for k in range(n)], dim=1)
    marg = torch.where(valid[:, :, None], marg, torch.zeros_like(marg))
    return marg, _smax(marg[:, 0], gamma, dim=1)
