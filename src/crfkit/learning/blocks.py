"""Node blocks for block BP learning: square tiles of a grid, ranges of node indices."""

from __future__ import annotations

import math

import torch

from .._validation import CRFValueError

__all__ = ["grid_tiles", "index_ranges", "make_blocks"]


def grid_tiles(height: int, width: int, num_blocks: int) -> list[torch.Tensor]:
    """Split an ``H × W`` grid (nodes ``y * W + x``) into about ``num_blocks`` square-ish tiles.

    ``num_blocks`` is rounded to ``k × k`` tiles with ``k = round(sqrt(num_blocks))`` (at least 1).
    Returns a list of ``[n_b]`` long node index tensors covering every node once.
    """
    if num_blocks < 1:
        raise CRFValueError(f"expected num_blocks >= 1, got {num_blocks}")
    k = max(1, int(round(math.sqrt(num_blocks))))
    ky, kx = min(k, height), min(k, width)
    ys = torch.arange(height).tensor_split(ky)
    xs = torch.arange(width).tensor_split(kx)
    return [(y[:, None] * width + x[None, :]).flatten() for y in ys for x in xs]


def index_ranges(num_nodes: int, num_blocks: int) -> list[torch.Tensor]:
    """Split nodes ``0..N-1`` into ``num_blocks`` contiguous ranges of (almost) equal size."""
    if num_blocks < 1:
        raise CRFValueError(f"expected num_blocks >= 1, got {num_blocks}")
    return list(torch.arange(num_nodes).tensor_split(min(num_blocks, num_nodes)))


def make_blocks(num_nodes: int, blocks, grid_shape=None) -> list[torch.Tensor]:
    """Blocks from ``blocks``: an int (tiles when ``grid_shape`` is given, else index ranges)
    or a list of node index tensors (checked to cover every node)."""
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        if grid_shape is not None:
            return grid_tiles(grid_shape[0], grid_shape[1], blocks)
        return index_ranges(num_nodes, blocks)
    out = [torch.as_tensor(b, dtype=torch.long).flatten() for b in blocks]
    if not out:
        raise CRFValueError("expected at least one block, got an empty list")
    seen = torch.zeros(num_nodes, dtype=torch.bool)
    for b in out:
        if b.numel() and (int(b.min()) < 0 or int(b.max()) >= num_nodes):
            raise CRFValueError(
                f"expected block node indices in [0, {num_nodes - 1}], got [{int(b.min())}, {int(b.max())}]"
            )
        seen[b] = True
    if not bool(seen.all()):
        raise CRFValueError(
            f"expected blocks covering all {num_nodes} nodes, got {int(seen.sum())} covered"
        )
    return out
