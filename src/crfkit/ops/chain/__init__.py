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
from torch.compiler import is_compiling as _is_compiling

from ...decomposition.chains import ChainPairwise
from .checks import check_chain_inputs
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
    # the host read of `lengths` is skipped while torch.compile traces (no graph break there)
    gamma = check_chain_inputs(unary, pairwise, lengths, gamma, check_lengths=not _is_compiling())
    impl = choose_implementation(unary, implementation)
    if impl == "reference":
        return chain_marginals_reference(unary, pairwise, lengths, gamma)
    if impl == "triton":
        from .triton import chain_marginals_triton

        return chain_marginals_triton(unary, pairwise, lengths, gamma)
    from .torch import chain_marginals_torch

    return chain_marginals_torch(unary, pairwise, lengths, gamma)
