"""Cut a grid into chains along each offset.

For offset ``(dy, dx)`` the pixels form disjoint chains ``p, p + (dy, dx), p + 2 (dy, dx), ...``
starting at every pixel whose predecessor ``p - (dy, dx)`` is off the grid.  Every edge of
the offset lies in exactly one chain and every pixel in exactly one chain per offset.
The index tensors depend only on ``(H, W, offset)`` and are computed once (cached).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..models.grid import GridCRF
from .chains import ChainGroup, ChainProblem

__all__ = ["grid_chains", "grid_chain_problem"]


@lru_cache(maxsize=256)
def _grid_chains_np(H: int, W: int, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    py, px = ys - dy, xs - dx
    is_start = (py < 0) | (px < 0) | (px >= W)
    sy, sx = ys[is_start], xs[is_start]
    # number of nodes along the chain from each start
    big = H + W + 1
    steps_y = (H - 1 - sy) // dy if dy > 0 else np.full_like(sy, big)
    if dx > 0:
        steps_x = (W - 1 - sx) // dx
    elif dx < 0:
        steps_x = sx // (-dx)
    else:
        steps_x = np.full_like(sx, big)
    lengths = np.minimum(steps_y, steps_x) + 1
    n = int(lengths.max())
    t = np.arange(n)
    cy = sy[:, None] + t[None, :] * dy
    cx = sx[:, None] + t[None, :] * dx
    nodes = cy * W + cx
    nodes[t[None, :] >= lengths[:, None]] = -1
    # deterministic order: longest chains first is not needed; keep start order (row-major)
    return nodes.astype(np.int64), lengths.astype(np.int64)


def grid_chains(H: int, W: int, offset: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chains of one offset on an ``H × W`` grid: ``nodes [C, n]`` (``y * W + x``, ``-1`` pad), ``lengths [C]``."""
    nodes, lengths = _grid_chains_np(int(H), int(W), int(offset[0]), int(offset[1]))
    return torch.from_numpy(nodes).to(device), torch.from_numpy(lengths).to(device)


def _batched(nodes: torch.Tensor, B: int, HW: int) -> torch.Tensor:
    base = (torch.arange(B, device=nodes.device) * HW)[:, None, None]
    out = nodes[None] + base
    out = torch.where(nodes[None] >= 0, out, torch.full_like(out, -1))
    return out.reshape(-1, nodes.shape[1])


def grid_chain_problem(crf: GridCRF) -> ChainProblem:
    """Compile a :class:`GridCRF` into a :class:`ChainProblem` (one chain group per offset).

    Differentiable: chain potentials are gathered from the model's tensors.
    """
    B, L, H, W = crf.shape
    device = crf.unary.device
    HW = H * W
    unary = crf.unary.permute(0, 2, 3, 1).reshape(B * HW, L)
    node_batch = torch.arange(B, device=device).repeat_interleave(HW)
    groups = []
    for k, ((dy, dx), term) in enumerate(zip(crf.offsets, crf.terms)):
        nodes1, lengths1 = grid_chains(H, W, (dy, dx), device)
        nodes = _batched(nodes1, B, HW)
        edge_idx = nodes[:, :-1].clamp(min=0)  # [C, n-1]: edge (y, x) indexed by its first pixel
        pw = term.along_chains(crf.layout(k), edge_idx)
        groups.append(ChainGroup(nodes=nodes, lengths=lengths1.repeat(B), pairwise=pw, name=f"offset ({dy}, {dx})"))
    return ChainProblem(unary=unary, node_batch=node_batch, batch_size=B, groups=groups, node_shape=(B, H, W))
