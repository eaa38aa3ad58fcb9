"""``DualDecompositionCRF``: the unrolled fixed-point iteration as a differentiable layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import CRFTypeError, check_gamma, check_int
from ..decomposition.grid import grid_chain_problem
from ..inference.dual_decomposition import DualDecomposition
from ..inference.solver_options import MAX_FIXED_STEP, check_gamma_range, check_step
from ..models.grid import DEFAULT_OFFSETS, GridCRF, check_offsets

__all__ = ["DualDecompositionCRF", "dual_decomposition_marginals", "MAX_FIXED_STEP"]


def dual_decomposition_marginals(
    unary: torch.Tensor,
    pairwise,
    *,
    num_iters: int = 5,
    gamma: float = 2.0,
    offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
    step: str | float = "paper",
    stop_if_rises: bool = True,
    implementation: str | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    """Summed (smoothed) max-marginals after ``num_iters`` chain passes (Eq. 23's logits).

    Args:
        unary: ``[B, L, H, W]``.
        pairwise: as :class:`~crfkit.GridCRF` accepts (one entry per offset, or ``[B, K, L, L, H, W]``).
        num_iters: chain passes; ``num_iters - 1`` fixed-point updates (Eq. 42) happen between them.
        gamma: smoothing (``0`` = max, sub-differentiable only).
        step: ``"paper"`` (``1 / max_t |V^t|``, monotone) or a number in ``(0, MAX_FIXED_STEP]``
            (larger fixed steps diverge to NaN).
        stop_if_rises: keep the previous marginals of a batch element whose dual rose (paper).
        implementation: force a chain kernel by name.
        validate_args: run the checks that read tensors on the host (NaN/inf in the potentials,
            chain lengths, the weights' sign for a fast path): device syncs on every call.
            ``False`` keeps the shape and dtype checks only; a truncated-linear tensor weight of
            unknown sign then takes the exact table path.

    Returns:
        ``[B, L, H, W]`` logits ``Σ_t ν_i^t``; differentiable w.r.t. ``unary`` and ``pairwise``.
    """
    gamma = check_gamma(gamma)
    num_iters = check_int(num_iters, "num_iters", 1)
    step = check_step(step, ("paper",))
    _check_flag(stop_if_rises, "stop_if_rises")
    _check_flag(validate_args, "validate_args")
    crf = GridCRF(unary, pairwise, offsets, validate_args=validate_args)
    B, L, H, W = crf.shape
    problem = grid_chain_problem(crf)
    check_gamma_range([gamma], problem, validate_args)
    dd = DualDecomposition(problem, implementation=implementation, validate_args=validate_args)
    alpha = dd.paper_step if step == "paper" else step
    lam = unary.new_zeros(dd.S, L)
    mu, dual = dd.evaluate(lam, gamma)
    for _ in range(num_iters - 1):
        lam, mu, dual, _ = dd.step(lam, mu, dual, alpha, gamma, check=stop_if_rises, slack=1e-6)
    beliefs = dd.node_beliefs(mu)
    return beliefs.view(B, H, W, L).permute(0, 3, 1, 2)


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise CRFTypeError(f"expected {name} to be True or False, got {value!r}")
    return value


class DualDecompositionCRF(nn.Module):
    """CRF layer: unrolled dual decomposition returning summed marginals as logits (Eq. 23).

    The paper's defaults: ``gamma = 2.0``, 5 or 15 iterations, step ``1 / max_t |V^t|``, and
    stop early when the dual rises. Apply a soft-max / cross-entropy to the output.

    Args:
        num_iters: chain passes (``num_iters - 1`` fixed-point updates between them).
        gamma: smoothing of the max (``> 0`` for useful gradients).
        offsets: the grid's edge directions ``(dy, dx)``.
        step: ``"paper"`` or a number in ``(0, MAX_FIXED_STEP]``.
        stop_if_rises: keep the previous marginals where the dual rose.
        validate_args: ``True`` (default) checks the inputs' values on every forward (device
            syncs); ``False`` keeps the shape and dtype checks only (see
            :func:`dual_decomposition_marginals`).

    Shape:
        ``forward(unary [B, L, H, W], pairwise) -> [B, L, H, W]``; ``pairwise`` one entry per
        offset in any form :class:`~crfkit.GridCRF` accepts, e.g. a tensor ``[B, K, L, L, H, W]``.
    """

    def __init__(
        self,
        num_iters: int = 5,
        gamma: float = 2.0,
        offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
        step: str | float = "paper",
        stop_if_rises: bool = True,
        validate_args: bool = True,
    ):
        super().__init__()
        self.num_iters = check_int(num_iters, "num_iters", 1)
        self.step = check_step(step, ("paper",))
        self.validate_args = _check_flag(validate_args, "validate_args")
        self.gamma = check_gamma(gamma)
        self.offsets = check_offsets(offsets)
        self.stop_if_rises = _check_flag(stop_if_rises, "stop_if_rises")

    def extra_repr(self) -> str:
        return f"num_iters={self.num_iters}, gamma={self.gamma}, offsets={self.offsets}, step={self.step!r}"

    def forward(self, unary: torch.Tensor, pairwise) -> torch.Tensor:
        return dual_decomposition_marginals(
            unary, pairwise, num_iters=self.num_iters, gamma=self.gamma, offsets=self.offsets,
            step=self.step, stop_if_rises=self.stop_if_rises, validate_args=self.validate_args,
        )
