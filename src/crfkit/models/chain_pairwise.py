"""Pairwise scores along a batch of chains: one class per chain form.

A chain problem (``crfkit.decomposition``) hands each chain backend a :class:`ChainPairwise`
over ``C`` right-padded chains of (padded) length ``n``; edge ``k`` joins positions ``k`` and
``k + 1``. Three forms, each a subclass registered under its ``kind``:

- :class:`DenseChainPairwise` (``"dense"``): ``tables[c, k, a, b]``; ``tables [C, n-1, L, L]``.
- :class:`WeightedChainPairwise` (``"weighted"``): ``weight[c, k] * tables[c, a, b]``;
  ``weight [C, n-1]``, ``tables [C, L, L]``.
- :class:`TruncatedLinearChainPairwise` (``"truncated_linear"``):
  ``-weight[c, k] * min(|a - b|, truncation)``; ``weight [C, n-1]``, a float ``truncation``.

A weighted table is never expanded to ``L²`` per edge (``tables`` is typically an expanded view
of one ``[L, L]`` table per offset). A truncated-linear form is a weighted form whose table is
:func:`~crfkit.models.pairwise.label_distance_table`, with ``truncation <= 1`` the Potts model.

What a chain backend needs is plain attributes: ``kind``, ``tables``, ``weight``,
``truncation`` (``None`` where a form has none) and ``nonneg`` (``True``/``False`` when the sign
of every weight is known without a device sync, else ``None``). ``ChainPairwise(kind, ...)``
still builds the right subclass (``ChainPairwise("dense", tables=t)``), so code written
against the string form keeps working; adding a chain form is one subclass here.

Fast paths are named, not implemented, here (:meth:`ChainPairwise.fast_path`): each backend
maps the name to its own code (``"distance transform"``: max with non-negative weights;
``"Potts closed form"``: smoothed max of a Potts form with non-negative weights).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .._validation import CRFValueError, check_tensor

__all__ = [
    "ChainPairwise",
    "DenseChainPairwise",
    "WeightedChainPairwise",
    "TruncatedLinearChainPairwise",
    "CHAIN_FORMS",
    "DISTANCE_TRANSFORM",
    "POTTS_CLOSED_FORM",
    "fast_path_name",
    "label_distance_table",
]

DISTANCE_TRANSFORM = "distance transform"
POTTS_CLOSED_FORM = "Potts closed form"

#: ``kind -> class`` of every chain form (filled by subclassing :class:`ChainPairwise`).
CHAIN_FORMS: dict[str, type[ChainPairwise]] = {}


def fast_path_name(gamma: float, truncation: float, nonneg: bool | None) -> str | None:
    """The O(L) path of a truncated-linear form: ``"distance transform"`` (``gamma == 0``),
    ``"Potts closed form"`` (``gamma > 0``, ``truncation <= 1``), or ``None`` (exact tables).
    Both need every weight ``>= 0`` (``nonneg``); an unknown sign (``None``) takes the tables."""
    if not nonneg:
        return None
    if gamma == 0.0:
        return DISTANCE_TRANSFORM
    if float(truncation) <= 1.0:
        return POTTS_CLOSED_FORM
    return None


def label_distance_table(num_labels: int, truncation: float, *, dtype=None, device=None) -> torch.Tensor:
    """``[L, L]`` table ``-min(|a - c|, truncation)`` (the unit-weight truncated-linear table).

    The one definition of the truncated distance in crfkit: every form, chain backend and
    reference derives it from here."""
    idx = torch.arange(num_labels, device=device, dtype=dtype or torch.float32)
    return -(idx[:, None] - idx[None, :]).abs().clamp(max=float(truncation))


def _distance_table(L: int, truncation: float, dtype, device) -> torch.Tensor:
    return label_distance_table(L, truncation, dtype=dtype, device=device)


class ChainPairwise:
    """Base class of the chain forms; ``ChainPairwise(kind, ...)`` builds the subclass of ``kind``.

    Args (keyword, as the form needs them):
        tables: ``[C, n-1, L, L]`` (dense) or ``[C, L, L]`` (weighted).
        weight: ``[C, n-1]`` (weighted, truncated linear).
        truncation: a float ``> 0`` (truncated linear).
        nonneg: ``True`` when every weight is known to be ``>= 0`` (decided once, at the model;
            lets the kernels take a fast path without a device sync), ``False`` when not,
            ``None`` when unknown.
    """

    kind: ClassVar[str] = ""
    #: the tensors a backend differentiates, with their shape letters
    SHAPES: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            CHAIN_FORMS[cls.kind] = cls

    def __new__(cls, kind: str | None = None, **kwargs):
        if cls is ChainPairwise:
            if kind not in CHAIN_FORMS:
                raise CRFValueError(f"expected kind in {tuple(CHAIN_FORMS)}, got {kind!r}")
            cls = CHAIN_FORMS[kind]
        elif kind is not None and kind != cls.kind:
            raise CRFValueError(f"expected kind {cls.kind!r} for {cls.__name__}, got {kind!r}")
        return object.__new__(cls)

    def __init__(self, kind: str | None = None, *, tables=None, weight=None, truncation=None, nonneg=None):
        self.tables: torch.Tensor | None = tables
        self.weight: torch.Tensor | None = weight
        self.truncation: float | None = None if truncation is None else float(truncation)
        self.nonneg: bool | None = nonneg
        for name, letters in self.SHAPES.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != len(letters.split()):
                raise CRFValueError(f"{self.kind} chain pairwise needs {name} [{', '.join(letters.split())}]")

    def __repr__(self):
        parts = [f"{k}={tuple(getattr(self, k).shape)}" for k in self.SHAPES]
        if self.truncation is not None:
            parts.append(f"truncation={self.truncation}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- structure ---------------------------------------------------------------------------
    def num_chains(self) -> int:
        return getattr(self, next(iter(self.SHAPES))).shape[0]

    @property
    def is_potts(self) -> bool:
        return False

    def tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(tables, weight)``, ``None`` where absent: what gradients flow to."""
        return self.tables, self.weight

    def replace(self, tables=None, weight=None) -> ChainPairwise:
        """The same form with other tensors (``None`` keeps none: pass every tensor the form has)."""
        return type(self)(tables=tables, weight=weight, truncation=self.truncation, nonneg=self.nonneg)

    def select(self, index: torch.Tensor) -> ChainPairwise:
        """The pairwise of a subset of chains, ``index [C']`` (long)."""
        pick = [None if t is None else t[index] for t in self.tensors()]
        return self.replace(*pick)

    def check(self, C: int, n: int, L: int, device) -> None:
        """Shapes, dtypes and device against a chain operation on ``unary [C, n, L]``."""
        sizes = {"C": C, "n-1": max(n - 1, 0), "L": L}
        for name, letters in self.SHAPES.items():
            t = getattr(self, name)
            check_tensor(t, f"pairwise.{name}", letters, sizes, floating=True)
            if t.device != device:
                raise CRFValueError(f"expected pairwise.{name} on {device}, got {t.device}")

    def weight_nonneg(self, allow_sync: bool = True) -> bool | None:
        """Whether every weight is ``>= 0``: the ``nonneg`` flag, else a host check when
        ``allow_sync`` (one device sync; never during CUDA-graph capture), else ``None``."""
        if self.nonneg is not None or self.weight is None:
            return self.nonneg
        w = self.weight
        if not allow_sync or (w.is_cuda and torch.cuda.is_current_stream_capturing()):
            return None
        return w.numel() == 0 or bool((w >= 0).all())

    def fast_path(self, gamma: float, allow_sync: bool = True) -> str | None:
        """The name of this form's O(L) path at ``gamma``, or ``None`` (exact tables)."""
        return None

    # -- scores ------------------------------------------------------------------------------
    def edge_table(self, k: int, L: int) -> torch.Tensor:
        """The ``[C, L, L]`` table of edge ``k`` of every chain."""
        raise NotImplementedError

    def edge_row(self, k: int, left: torch.Tensor, L: int) -> torch.Tensor:
        """Scores ``phi_k(left[c], ·)`` of edge ``k``: ``left [C]`` long -> ``[C, L]``."""
        C = left.shape[0]
        return self.edge_table(k, L).gather(1, left[:, None, None].expand(C, 1, L)).squeeze(1)

    def dense(self, num_labels: int) -> torch.Tensor:
        """The same scores as full tables ``[C, n-1, L, L]`` (for references and small problems)."""
        raise NotImplementedError

    def score(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Score of label pairs along chains: ``left, right [C, n-1]`` long -> ``[C, n-1]``."""
        raise NotImplementedError

    def row(self, left: torch.Tensor, num_labels: int) -> torch.Tensor:
        """Scores ``phi_k(left_k, ·)``: ``left [C, n-1]`` -> ``[C, n-1, L]`` (the right node's view)."""
        raise NotImplementedError

    def column(self, right: torch.Tensor, num_labels: int) -> torch.Tensor:
        """Scores ``phi_k(·, right_k)``: ``right [C, n-1]`` -> ``[C, n-1, L]`` (the left node's view)."""
        raise NotImplementedError

    def spread(self, num_labels: int) -> float:
        """Mean absolute deviation of the scores from each table's mean (the default γ scale)."""
        raise NotImplementedError

    def accumulate_grad(self, grads: dict, k: int, d_table: torch.Tensor) -> None:
        """Add the gradient of edge ``k``'s table, ``d_table [C, L, L]``, into ``grads``
        (``{"tables": ..., "weight": ...}``, the keys of the tensors the form has)."""
        raise NotImplementedError


class DenseChainPairwise(ChainPairwise):
    """A full table per chain edge: ``tables [C, n-1, L, L]``."""

    kind = "dense"
    SHAPES = {"tables": "C n-1 L L"}

    def edge_table(self, k, L):
        return self.tables[:, k]

    def dense(self, num_labels):
        return self.tables

    def score(self, left, right):
        C, m = left.shape
        L = self.tables.shape[-1]
        flat = self.tables.reshape(C * m, L * L)
        return flat.gather(1, (left * L + right).reshape(-1, 1)).reshape(C, m)

    def row(self, left, num_labels):
        idx = left[:, :, None, None].expand(-1, -1, 1, num_labels)
        return self.tables.gather(2, idx).squeeze(2)

    def column(self, right, num_labels):
        idx = right[:, :, None, None].expand(-1, -1, num_labels, 1)
        return self.tables.gather(3, idx).squeeze(3)

    def spread(self, num_labels):
        if not self.tables.numel():
            return 0.0
        t = self.tables.detach()
        return (t - t.mean(dim=(-1, -2), keepdim=True)).abs().mean().item()

    def accumulate_grad(self, grads, k, d_table):
        grads["tables"][:, k] += d_table


class WeightedChainPairwise(ChainPairwise):
    """A weight per chain edge times one table per chain: ``weight [C, n-1]``, ``tables [C, L, L]``."""

    kind = "weighted"
    SHAPES = {"weight": "C n-1", "tables": "C L L"}

    def chain_tables(self, L: int, dtype=None) -> torch.Tensor:
        """The unit table of each chain, ``[C, L, L]`` (or ``[1, L, L]`` when shared by all)."""
        return self.tables

    def edge_table(self, k, L):
        return self.weight[:, k, None, None] * self.chain_tables(L)

    def dense(self, num_labels):
        return self.weight[:, :, None, None] * self.chain_tables(num_labels)[:, None, :, :]

    def score(self, left, right):
        C = left.shape[0]
        L = self.tables.shape[-1]
        return self.weight * self.tables.reshape(C, L * L).gather(1, left * L + right)

    def row(self, left, num_labels):
        C = left.shape[0]
        rows = self.tables.gather(1, left[:, :, None].expand(C, left.shape[1], num_labels))
        return self.weight[:, :, None] * rows

    def column(self, right, num_labels):
        C = right.shape[0]
        cols = self.tables.transpose(1, 2).gather(1, right[:, :, None].expand(C, right.shape[1], num_labels))
        return self.weight[:, :, None] * cols

    def spread(self, num_labels):
        if not self.weight.numel():
            return 0.0
        t = self.chain_tables(num_labels, torch.float64).detach()[:1]
        return self.weight.detach().abs().mean().item() * (t - t.mean()).abs().mean().item()

    def accumulate_grad(self, grads, k, d_table):
        grads["weight"][:, k] += (d_table * self.chain_tables(d_table.shape[-1], d_table.dtype)).sum(dim=(1, 2))
        if "tables" in grads:
            grads["tables"] += self.weight[:, k, None, None] * d_table


class TruncatedLinearChainPairwise(WeightedChainPairwise):
    """``-weight[c, k] * min(|a - b|, truncation)``: ``weight [C, n-1]``, a float ``truncation > 0``
    (``<= 1``: the Potts model ``-w [a != b]``). O(L) per edge on the fast paths."""

    kind = "truncated_linear"
    SHAPES = {"weight": "C n-1"}

    def __init__(self, kind=None, *, tables=None, weight=None, truncation=None, nonneg=None):
        if truncation is None:
            raise CRFValueError("truncated_linear chain pairwise needs weight [C, n-1] and a truncation")
        super().__init__(kind, tables=tables, weight=weight, truncation=truncation, nonneg=nonneg)
        self._unit: dict = {}

    @property
    def is_potts(self) -> bool:
        return self.truncation <= 1.0

    def chain_tables(self, L, dtype=None):
        key = (L, dtype or self.weight.dtype)
        if key not in self._unit:
            self._unit[key] = _distance_table(L, self.truncation, key[1], self.weight.device)[None]
        return self._unit[key]

    def check(self, C, n, L, device):
        super().check(C, n, L, device)
        if not math.isfinite(self.truncation):
            raise CRFValueError(f"expected a finite truncation, got {self.truncation!r}")

    def fast_path(self, gamma, allow_sync=True):
        return fast_path_name(gamma, self.truncation, self.weight_nonneg(allow_sync))

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``min(|a - b|, truncation)`` of label tensors, in the weight's dtype."""
        return (a - b).abs().to(self.weight.dtype).clamp(max=self.truncation)

    def score(self, left, right):
        return -self.weight * self.distance(left, right)

    def row(self, left, num_labels):
        idx = torch.arange(num_labels, device=left.device)
        return -self.weight[:, :, None] * self.distance(left[:, :, None], idx)

    def edge_row(self, k, left, L):
        idx = torch.arange(L, device=left.device)
        return -self.weight[:, k, None] * self.distance(left[:, None], idx)

    def column(self, right, num_labels):
        return self.row(right, num_labels)
