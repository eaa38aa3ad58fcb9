"""Plain reference for the chain operation: obviously correct, slow.

Loops over chains and positions with dense ``L × L`` tables; gradients come from
autograd.  Every fast implementation is tested against this one.
"""

from __future__ import annotations

import torch

from ...decomposition.chains import ChainPairwise
from .semiring import smax

__all__ = ["chain_marginals_reference", "smooth_max"]


def smooth_max(x: torch.Tensor, gamma: float, dim: int) -> torch.Tensor:
    """``max`` over ``dim`` if ``gamma == 0``, else ``gamma * logsumexp(x / gamma)`` (:func:`semiring.smax`)."""
    return smax(x, gamma, dim)


def chain_marginals_reference(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of chains.

    Args:
        unary: ``[C, n, L]`` node scores along each chain.
        pairwise: :class:`ChainPairwise` over the same chains.
        lengths: ``[C]`` long, valid positions per chain (right padding).
        gamma: ``0`` for max, ``> 0`` for ``gamma * logsumexp(· / gamma)``.

    Returns:
        ``marginals [C, n, L]``: ``μ_k(l) = smax over labellings with x_k = l`` of the chain
        score (zero on padding); ``value [C]``: ``smax`` over all labellings of the chain.
    """
    C, n, L = unary.shape
    phi = pairwise.dense(L)
    rows, values = [], []
    for c in range(C):
        m = int(lengths[c])
        fwd = [unary.new_zeros(L)]
        for k in range(m - 1):
            fwd.append(smax((unary[c, k] + fwd[k])[:, None] + phi[c, k], gamma, dim=0))
        bwd = [unary.new_zeros(L) for _ in range(m)]
        for k in range(m - 2, -1, -1):
            bwd[k] = smax(phi[c, k] + (unary[c, k + 1] + bwd[k + 1])[None, :], gamma, dim=1)
        marg = [unary[c, k] + fwd[k] + bwd[k] for k in range(m)]
        marg += [unary.new_zeros(L)] * (n - m)
        rows.append(torch.stack(marg))
        values.append(smax(marg[0], gamma, dim=0))
    return torch.stack(rows), torch.stack(values)
