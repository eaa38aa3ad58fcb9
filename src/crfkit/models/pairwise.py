"""Pairwise forms: how the score of a pair of labels on an edge is given.

Scores are maximised (``docs/maths.md``, "Conventions").  For an edge joining node ``i`` (label ``a``)
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

Each form knows how to validate itself, give dense tables, score label pairs and lay itself
out along chains, for any *edge layout* (``[B, H, W]`` per grid offset, ``[E]`` or ``[B, E]``
on a graph): the model describes its layout once in an :class:`EdgeLayout` and every form
works through it, so a grid and a graph share one implementation per form. Adding a form is
one class here (plus its chain form in :mod:`crfkit.models.chain_pairwise` if it needs a new
one); models and decomposition do not switch on the form.

**Bare pairs.** Where a model takes a pairwise entry, a plain ``tuple`` ``(weight, table)`` means
``WeightedTable(weight, table)`` (:func:`as_form`, the one place this is decided); any other
tuple is refused.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, check_finite, check_tensor, fmt_shape
from .chain_pairwise import (
    ChainPairwise,
    DenseChainPairwise,
    TruncatedLinearChainPairwise,
    WeightedChainPairwise,
    fast_path_name,
    label_distance_table,
)

__all__ = [
    "PairwiseForm",
    "PerEdgeTables",
    "SharedTable",
    "WeightedTable",
    "Potts",
    "TruncatedLinear",
    "EdgeLayout",
    "as_form",
    "label_distance_table",
]


def coerce_weight(weight, name: str) -> torch.Tensor | float:
    if isinstance(weight, torch.Tensor):
        if not weight.is_floating_point():
            raise CRFTypeError(f"expected {name} to have a floating dtype, got {weight.dtype}")
        return weight
    if isinstance(weight, numbers.Real) and not isinstance(weight, (bool, np.bool_)):
        return float(weight)
    raise CRFTypeError(f"expected {name} to be a tensor or a real number, got {type(weight).__name__} {weight!r:.40}")


def _check_truncation(truncation) -> float:
    """``truncation`` as a float, > 0 and finite (a real number: bools, strings, tensors refused)."""
    if not isinstance(truncation, numbers.Real) or isinstance(truncation, (bool, np.bool_)):
        raise CRFTypeError(
            f"expected truncation to be a real number > 0, got {type(truncation).__name__} {truncation!r:.40}"
        )
    t = float(truncation)
    if not (t > 0) or t == float("inf"):
        raise CRFValueError(f"expected truncation > 0 and finite, got {truncation!r}")
    return t


@dataclass(frozen=True)
class EdgeLayout:
    """How a model lays out one set of edges (one grid offset, or a graph's edges).

    Edges are addressed by a flat index ``0 .. num_flat - 1`` over the whole batch (a grid:
    ``b * H * W + y * W + x``, the edge whose first pixel is ``(y, x)``; a graph: ``b * E + e``).

    Attributes:
        name: how messages call the entry (``"pairwise[0] (offset (0, 1))"``).
        weight_letters / table_letters: the shape letters of a per-edge weight / per-edge tables
            (``"B H W"`` / ``"B L L H W"`` on a grid; ``"E"`` / ``"E L L"`` or ``"B E"`` /
            ``"B E L L"`` on a graph).
        sizes: the known sizes of those letters (and ``L``).
        flat_weight / flat_tables: per-edge weight -> ``[num_flat]``; per-edge tables ->
            ``[num_flat, L, L]``.
        dtype, device: of the model's scores.
        check_values: check values (NaN, inf, the sign of truncated-linear weights), which
            reads tensors on the host (device syncs); shapes and dtypes are always checked.
    """

    name: str
    weight_letters: str
    table_letters: str
    sizes: dict
    flat_weight: Callable[[torch.Tensor], torch.Tensor]
    flat_tables: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype
    device: torch.device
    check_values: bool = True

    @property
    def num_labels(self) -> int:
        return self.sizes["L"]

    def pretty(self, letters: str) -> str:
        return "[" + ", ".join(letters.split()) + "]"


def as_form(entry, layout: EdgeLayout) -> PairwiseForm:
    """One pairwise entry as a :class:`PairwiseForm`: a tensor ``[L, L]`` is a :class:`SharedTable`,
    a tensor of the layout's per-edge shape :class:`PerEdgeTables`, a plain tuple ``(weight, table)``
    a :class:`WeightedTable`; forms pass through. Validated against ``layout``."""
    name = layout.name
    if isinstance(entry, torch.Tensor):
        if entry.dim() == 2:
            entry = SharedTable(entry)
        elif entry.dim() == len(layout.table_letters.split()):
            entry = PerEdgeTables(entry)
        else:
            raise CRFShapeError(
                f"expected {name} of shape {layout.pretty(layout.table_letters)} or [L, L], "
                f"got {fmt_shape(entry.shape)}"
            )
    elif isinstance(entry, tuple) and not isinstance(entry, PairwiseForm):
        if len(entry) != 2:
            raise CRFTypeError(
                f"expected {name} as a pair (weight, table) when given a tuple, got a tuple of length {len(entry)}"
            )
        entry = WeightedTable(*entry)
    if not isinstance(entry, PairwiseForm):
        raise CRFTypeError(
            f"expected {name} as a tensor {layout.pretty(layout.table_letters)} or [L, L], a pair "
            f"(weight {layout.pretty(layout.weight_letters)}, table [L, L]), Potts or TruncatedLinear; "
            f"got {type(entry).__name__}"
        )
    return entry.validate(layout)


def _check(t: torch.Tensor, name: str, letters: str, layout: EdgeLayout) -> None:
    check_tensor(t, name, letters, layout.sizes, floating=True)
    if layout.check_values:
        check_finite(t, name)


class PairwiseForm:
    """Base class of the pairwise forms (see the module docs for the protocol)."""

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def validate(self, layout: EdgeLayout) -> PairwiseForm:
        """Check shapes, dtypes (and values, per ``layout.check_values``); returns the form to keep."""
        raise NotImplementedError

    def edge_tables(self, layout: EdgeLayout, index: torch.Tensor) -> torch.Tensor:
        """Dense tables of the edges ``index`` (flat edge indices, any shape) -> ``[*index.shape, L, L]``."""
        raise NotImplementedError

    def pair_scores(self, layout: EdgeLayout, index: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Scores of labels ``a`` (first node) and ``c`` (second node) on the edges ``index``
        (same shapes) -> that shape."""
        raise NotImplementedError

    def along_chains(
        self, layout: EdgeLayout, index: torch.Tensor, flip: torch.Tensor | None = None
    ) -> ChainPairwise:
        """The form laid out along chains: ``index [C, n-1]`` the flat edge of each chain edge,
        ``flip [C, n-1]`` bool where a chain walks an edge from its second node to its first."""
        raise NotImplementedError

    def needs_direction(self) -> bool:
        """Whether chains should walk edges only first node -> second (no flips): true for a
        shared table that is not symmetric (or needs gradients), so that it stays one table."""
        return False

    def fast_path(self, gamma: float) -> str | None:
        """The name of the chain kernels' O(L) path for this form at ``gamma`` (``None``: tables)."""
        return None


@dataclass(frozen=True)
class PerEdgeTables(PairwiseForm):
    """A full ``L × L`` table per edge (grid: ``[B, L, L, H, W]``; graph: ``[E, L, L]`` or ``[B, E, L, L]``)."""

    tables: torch.Tensor

    def tensors(self):
        return [self.tables]

    def validate(self, layout):
        _check(self.tables, layout.name, layout.table_letters, layout)
        return self

    def edge_tables(self, layout, index):
        return layout.flat_tables(self.tables)[index]

    def pair_scores(self, layout, index, a, c):
        L = layout.num_labels
        flat = layout.flat_tables(self.tables).reshape(-1, L * L)
        return flat[index, a * L + c]

    def along_chains(self, layout, index, flip=None):
        tables = layout.flat_tables(self.tables)[index]
        if flip is not None:
            tables = torch.where(flip[:, :, None, None], tables.transpose(-1, -2), tables).contiguous()
        return DenseChainPairwise(tables=tables)


class _OneTable(PairwiseForm):
    """A weight per edge (``_weight``) times one ``[L, L]`` table: shared and weighted tables."""

    table: torch.Tensor

    def _weight(self, layout, index) -> torch.Tensor:
        raise NotImplementedError

    def edge_tables(self, layout, index):
        return self._weight(layout, index)[..., None, None] * self.table.to(layout.dtype)

    def along_chains(self, layout, index, flip=None):
        C, L = index.shape[0], layout.num_labels
        table = self.table.to(layout.dtype)
        weight = self._weight(layout, index)
        if flip is not None and bool(flip.any()):
            # mixed orientations along a chain: dense tables (the table or its transpose per edge)
            both = torch.stack([table, table.transpose(0, 1)])
            return DenseChainPairwise(tables=weight[:, :, None, None] * both[flip.long()])
        return WeightedChainPairwise(weight=weight, tables=table[None].expand(C, L, L))

    def needs_direction(self):
        return self.table.requires_grad or not bool(torch.equal(self.table, self.table.transpose(-1, -2)))


@dataclass(frozen=True)
class SharedTable(_OneTable):
    """One ``[L, L]`` table shared by every edge of the offset (or graph)."""

    table: torch.Tensor

    def tensors(self):
        return [self.table]

    def validate(self, layout):
        _check(self.table, layout.name, "L L", layout)
        return self

    def _weight(self, layout, index):
        return torch.ones(index.shape, device=layout.device, dtype=layout.dtype)

    def pair_scores(self, layout, index, a, c):
        return self.table[a, c]


@dataclass(frozen=True)
class WeightedTable(_OneTable):
    """A per-edge weight times one shared ``[L, L]`` table: ``weight[edge] * table[a, c]``.

    Written ``WeightedTable(weight, table)``; a plain tuple ``(weight, table)`` means the same."""

    weight: torch.Tensor
    table: torch.Tensor

    def tensors(self):
        return [self.weight, self.table]

    def validate(self, layout):
        _check(self.weight, layout.name + " weight", layout.weight_letters, layout)
        _check(self.table, layout.name + " table", "L L", layout)
        return self

    def _weight(self, layout, index):
        return layout.flat_weight(self.weight)[index]

    def pair_scores(self, layout, index, a, c):
        return self._weight(layout, index) * self.table[a, c]


@dataclass(frozen=True)
class TruncatedLinear(PairwiseForm):
    """``-weight[edge] * min(|a - c|, truncation)``; ``weight`` a tensor per edge or a number.

    ``nonneg`` (set by :meth:`validate`, not an argument): ``True``/``False`` when the sign of
    every weight is known (a number; a tensor checked once when values are checked), else
    ``None``; it decides the chain kernels' fast paths without a device sync."""

    weight: torch.Tensor | float
    truncation: float
    nonneg = None

    def __post_init__(self):
        _check_truncation(self.truncation)
        coerce_weight(self.weight, "weight")  # the type only: values are checked against a model

    def tensors(self):
        return [self.weight] if isinstance(self.weight, torch.Tensor) else []

    def validate(self, layout):
        name = layout.name + " weight"
        w = coerce_weight(self.weight, name)
        if isinstance(w, torch.Tensor):
            _check(w, name, layout.weight_letters, layout)
            nonneg = (w.numel() == 0 or bool((w >= 0).all())) if layout.check_values else None
        else:
            if w != w or abs(w) == float("inf"):
                raise CRFValueError(f"expected a finite {name}, got {w}")
            nonneg = w >= 0
        out = copy.copy(self)
        object.__setattr__(out, "nonneg", nonneg)
        return out

    def _weight(self, layout, index) -> torch.Tensor:
        if isinstance(self.weight, torch.Tensor):
            return layout.flat_weight(self.weight)[index]
        return torch.full(index.shape, float(self.weight), dtype=layout.dtype, device=layout.device)

    def edge_tables(self, layout, index):
        dist = label_distance_table(layout.num_labels, self.truncation, dtype=layout.dtype, device=layout.device)
        return self._weight(layout, index)[..., None, None] * dist

    def pair_scores(self, layout, index, a, c):
        return -self._weight(layout, index) * (a - c).abs().to(layout.dtype).clamp(max=float(self.truncation))

    def along_chains(self, layout, index, flip=None):
        return TruncatedLinearChainPairwise(
            weight=self._weight(layout, index), truncation=float(self.truncation), nonneg=self.nonneg
        )

    def fast_path(self, gamma):
        return fast_path_name(gamma, float(self.truncation), self.nonneg)


class Potts(TruncatedLinear):
    """``-weight[edge] * [a != c]``: the Potts model, ``TruncatedLinear`` with truncation 1."""

    def __init__(self, weight: torch.Tensor | float):
        super().__init__(weight=weight, truncation=1.0)

    def __repr__(self):
        return f"Potts(weight={self.weight!r})"
