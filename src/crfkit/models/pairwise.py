"""Pairwise forms: how the score of a pair of labels on an edge is given.

Scores are maximised (``DESIGN.md``).  For an edge joining node ``i`` (label ``a``)
to node ``j`` (label ``c``):

=====================  =============================================  ======================
form                   score of (a, c)                                memory per edge
=====================  =============================================  ======================
``PerEdgeTables``      ``tables[..., a, c, edge]``                    ``L²``
``SharedTable``        ``table[a, c]``                                none (one ``[L, L]``)
``WeightedTable``      ``weight[edge] * table[a, c]``                 one number
``Potts``              ``-weight[edge] * [a != c]``                   one number
``TruncatedLinear``    ``-weight[edge] * min(|a - c|, truncation)``   one number
=====================  =============================================  ======================

``Potts`` is ``TruncatedLinear`` with ``truncation = 1``; both get O(L) per-edge
paths in the chain kernels.  A weighted table is never expanded to ``L²`` per edge.

The *edge layout* (``[B, H, W]`` on a grid, ``[E]`` or ``[B, E]`` on a graph) is
decided by the model that holds the form; these classes only carry tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import CRFTypeError, CRFValueError

__all__ = [
    "PairwiseForm",
    "PerEdgeTables",
    "SharedTable",
    "WeightedTable",
    "Potts",
    "TruncatedLinear",
]


class PairwiseForm:
    """Base class of the pairwise forms."""

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class PerEdgeTables(PairwiseForm):
    """A full ``L × L`` table per edge (grid: ``[B, L, L, H, W]``; graph: ``[E, L, L]`` or ``[B, E, L, L]``)."""

    tables: torch.Tensor

    def tensors(self):
        return [self.tables]


@dataclass(frozen=True)
class SharedTable(PairwiseForm):
    """One ``[L, L]`` table shared by every edge of the offset (or graph)."""

    table: torch.Tensor

    def tensors(self):
        return [self.table]


@dataclass(frozen=True)
class WeightedTable(PairwiseForm):
    """A per-edge weight times one shared ``[L, L]`` table: ``weight[edge] * table[a, c]``."""

    weight: torch.Tensor
    table: torch.Tensor

    def tensors(self):
        return [self.weight, self.table]


@dataclass(frozen=True)
class TruncatedLinear(PairwiseForm):
    """``-weight[edge] * min(|a - c|, truncation)``; ``weight`` a tensor per edge or a number."""

    weight: torch.Tensor | float
    truncation: float

    def __post_init__(self):
        t = float(self.truncation)
        if not (t > 0) or t == float("inf"):
            raise CRFValueError(f"expected truncation > 0 and finite, got {self.truncation!r}")

    def tensors(self):
        return [self.weight] if isinstance(self.weight, torch.Tensor) else []


class Potts(TruncatedLinear):
    """``-weight[edge] * [a != c]``: the Potts model, ``TruncatedLinear`` with truncation 1."""

    def __init__(self, weight: torch.Tensor | float):
        super().__init__(weight=weight, truncation=1.0)

    def __repr__(self):
        return f"Potts(weight={self.weight!r})"


def label_distance_table(num_labels: int, truncation: float, *, dtype=None, device=None) -> torch.Tensor:
    """``[L, L]`` table ``-min(|a - c|, truncation)`` (the unit-weight truncated-linear table)."""
    idx = torch.arange(num_labels, device=device, dtype=dtype or torch.float32)
    return -(idx[:, None] - idx[None, :]).abs().clamp(max=float(truncation))


def coerce_weight(weight, name: str) -> torch.Tensor | float:
    if isinstance(weight, torch.Tensor):
        if not weight.is_floating_point():
            raise CRFTypeError(f"expected {name} to have a floating dtype, got {weight.dtype}")
        return weight
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return float(weight)
    raise CRFTypeError(f"expected {name} to be a tensor or a number, got {type(weight).__name__}")
