"""Layer 3, chain kernels: (smoothed) max-marginals of a batch of chains.

One operation, three implementations with one signature::

    marginals [C, n, L], value [C] = chain_marginals(unary [C, n, L], pairwise, lengths [C], gamma)

- ``reference``: plain loops, dense tables, autograd (obviously correct, slow);
- ``torch``: vectorised over chains and labels, hand-written backward (CPU and any device);
- ``triton``: GPU kernels (CUDA tensors, Triton installed).

``CRFKIT_CHAIN_IMPL=reference|torch|triton`` forces one implementation; by default
CUDA tensors use Triton when it is importable, everything else the PyTorch path.
"""

from __future__ import annotations

import os

import torch

from ..._validation import CRFValueError, check_gamma, check_tensor
from ...decomposition.chains import ChainPairwise
from .reference import chain_marginals_reference, smooth_max

__all__ = ["chain_marginals", "chain_marginals_reference", "smooth_max", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("reference", "torch", "triton")


def _triton_available() -> bool:
    try:
        from . import triton as _t  # noqa: F401

        return _t.AVAILABLE
    except Exception:  # pragma: no cover - depends on the machine
        return False


def choose_implementation(unary: torch.Tensor, implementation: str | None = None) -> str:
    impl = implementation or os.environ.get("CRFKIT_CHAIN_IMPL") or None
    if impl is not None:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"expected a chain implementation in {IMPLEMENTATIONS}, got {impl!r}")
        return impl
    if unary.is_cuda and _triton_available():
        return "triton"
    return "torch"


def chain_marginals(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    gamma: float,
    *,
    implementation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of right-padded chains.

    Args:
        unary: ``[C, n, L]`` node scores along each chain (padding ignored).
        pairwise: :class:`~crfkit.decomposition.ChainPairwise` over the same chains.
        lengths: ``[C]`` long, number of valid positions of each chain (``1 <= lengths <= n``).
        gamma: ``0`` for max, ``> 0`` for the smoothed max ``gamma * logsumexp(· / gamma)``.
        implementation: force ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``marginals [C, n, L]`` (zero on padding) and ``value [C]``, the (smoothed) max of
        each chain's score; differentiable with respect to ``unary`` and the pairwise tensors.
    """
    gamma = check_gamma(gamma)
    sizes = check_tensor(unary, "unary", "C n L", floating=True)
    check_tensor(lengths, "lengths", "C", sizes, integer=True)
    n = sizes["n"]
    if lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > n:
            raise CRFValueError(f"expected lengths in [1, {n}] (n={n}), got values in [{lo}, {hi}]")
    s = {**sizes, "n-1": max(n - 1, 0)}
    if pairwise.kind == "dense":
        check_tensor(pairwise.tables, "pairwise tables", "C n-1 L L", s, floating=True)
    else:
        check_tensor(pairwise.weight, "pairwise weight", "C n-1", s, floating=True)
        if pairwise.kind == "weighted":
            check_tensor(pairwise.tables, "pairwise tables", "C L L", s, floating=True)
    impl = choose_implementation(unary, implementation)
    if impl == "reference":
        return chain_marginals_reference(unary, pairwise, lengths, gamma)
    if impl == "triton":
        from .triton import chain_marginals_triton

        return chain_marginals_triton(unary, pairwise, lengths, gamma)
    from .torch import chain_marginals_torch

    return chain_marginals_torch(unary, pairwise, lengths, gamma)
