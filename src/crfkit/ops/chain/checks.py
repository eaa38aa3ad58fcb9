"""Input checks of the chain operation, shared by every implementation."""

from __future__ import annotations

import torch

from ..._validation import CRFShapeError, CRFTypeError, CRFValueError, check_gamma, check_tensor
from ...decomposition.chains import ChainPairwise

__all__ = ["check_chain_inputs"]


def check_chain_inputs(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    gamma: float,
    *,
    check_lengths: bool = True,
) -> float:
    """Check shapes, dtypes and devices of the chain operation's inputs; returns ``gamma``.

    ``check_lengths``: also check ``1 <= lengths <= n`` (reads ``lengths`` on the host: one
    device sync; skipped with ``validate_args=False`` and by the GPU kernels).
    """
    sizes = check_tensor(unary, "unary", "C n L", floating=True)
    C, n, L = sizes["C"], sizes["n"], sizes["L"]
    if n < 1 or L < 1:
        raise CRFShapeError(f"expected unary [C, n, L] with n >= 1 and L >= 1, got [{C}, {n}, {L}]")
    check_tensor(lengths, "lengths", "C", {"C": C}, integer=True)
    if not isinstance(pairwise, ChainPairwise):
        raise CRFTypeError(f"expected pairwise to be a ChainPairwise, got {type(pairwise).__name__}")
    pairwise.check(C, n, L, unary.device)
    if lengths.device != unary.device:
        raise CRFValueError(f"expected lengths on {unary.device}, got {lengths.device}")
    if check_lengths and lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > n:
            raise CRFValueError(f"expected lengths in [1, {n}] (n={n}), got values in [{lo}, {hi}]")
    return check_gamma(gamma)
