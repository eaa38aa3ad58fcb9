"""Input checks of the chain operation, shared by every implementation."""

from __future__ import annotations

import math

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
    device sync; the GPU kernels skip it).
    """
    sizes = check_tensor(unary, "unary", "C n L", floating=True)
    C, n, L = sizes["C"], sizes["n"], sizes["L"]
    if n < 1 or L < 1:
        raise CRFShapeError(f"expected unary [C, n, L] with n >= 1 and L >= 1, got [{C}, {n}, {L}]")
    check_tensor(lengths, "lengths", "C", {"C": C}, integer=True)
    if not isinstance(pairwise, ChainPairwise):
        raise CRFTypeError(
            f"expected pairwise to be a ChainPairwise, got {type(pairwise).__name__}"
        )
    m1 = max(n - 1, 0)
    if pairwise.kind == "dense":
        check_tensor(
            pairwise.tables,
            "pairwise.tables",
            "C n-1 L L",
            {"C": C, "n-1": m1, "L": L},
            floating=True,
        )
    elif pairwise.kind == "weighted":
        check_tensor(pairwise.tables, "pairwise.tables", "C L L", {"C": C, "L": L}, floating=True)
        check_tensor(
            pairwise.weight, "pairwise.weight", "C n-1", {"C": C, "n-1": m1}, floating=True
        )
    else:
        check_tensor(
            pairwise.weight, "pairwise.weight", "C n-1", {"C": C, "n-1": m1}, floating=True
        )
        t = float(pairwise.truncation)
        if not math.isfinite(t):
            raise CRFValueError(f"expected a finite truncation, got {pairwise.truncation!r}")
    for name, t in (
        ("pairwise.tables", pairwise.tables),
        ("pairwise.weight", pairwise.weight),
        ("lengths", lengths),
    ):
        if t is not None and t.device != unary.device:
            raise CRFValueError(f"expected {name} on {unary.device}, got {t.device}")
    if check_lengths and lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > n:
            raise CRFValueError(f"expected lengths in [1, {n}] (n={n}), got values in [{lo}, {hi}]")
    return check_gamma(gamma)
