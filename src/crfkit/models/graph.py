"""``GraphMRF``: a pairwise MRF (optionally a batch of them) on any graph."""

from __future__ import annotations

import torch

from .._validation import (
    CRFShapeError,
    CRFTypeError,
    CRFValueError,
    check_finite,
    check_labels,
    check_tensor,
    fmt_shape,
)
from .pairwise import PairwiseForm, PerEdgeTables, SharedTable, TruncatedLinear, WeightedTable, coerce_weight

__all__ = ["GraphMRF"]


class GraphMRF:
    """Pairwise MRF ``score(x) = Σ_i unary[i, x_i] + Σ_e pairwise_e(x_{e0}, x_{e1})`` (maximised).

    Args:
        unary: ``[N, L]``, or ``[B, N, L]`` for a batch of models on the same graph.
        edges: ``[E, 2]`` long; edge ``e`` joins ``edges[e, 0]`` (label ``a``) and
            ``edges[e, 1]`` (label ``c``). No self-loops; an edge may not repeat.
        pairwise: a tensor ``[E, L, L]`` (``[B, E, L, L]`` when batched) of per-edge tables,
            a tensor ``[L, L]`` shared by all edges, a pair ``(weight [E] or [B, E], table [L, L])``,
            or ``Potts(weight)`` / ``TruncatedLinear(weight, truncation)``.

    The arguments are kept as ``mrf.unary``, ``mrf.edges``, ``mrf.pairwise``; ``mrf.term``
    is the pairwise normalised to a :mod:`crfkit.models.pairwise` form; ``mrf.batched`` says
    whether a batch dimension was given.
    """

    def __init__(self, unary: torch.Tensor, edges: torch.Tensor, pairwise):
        if isinstance(unary, torch.Tensor) and unary.dim() == 2:
            sizes = check_tensor(unary, "unary", "N L", floating=True)
            self.batched = False
        else:
            sizes = check_tensor(unary, "unary", "B N L", floating=True)
            self.batched = True
        if sizes["N"] == 0 or sizes["L"] == 0 or sizes.get("B", 1) == 0:
            raise CRFShapeError(f"expected a non-empty model: unary with N >= 1 and L >= 1, got {fmt_shape(unary.shape)}")
        check_finite(unary, "unary")
        sizes = check_tensor(edges, "edges", "E 2", sizes, integer=True)
        if sizes["E"] > 0:
            lo, hi = int(edges.min()), int(edges.max())
            if lo < 0 or hi >= sizes["N"]:
                raise CRFValueError(f"expected edges with node indices in [0, {sizes['N'] - 1}], got values in [{lo}, {hi}]")
            if bool((edges[:, 0] == edges[:, 1]).any()):
                raise CRFValueError("expected no self-loops in edges, got an edge (i, i)")
            key = torch.minimum(edges[:, 0], edges[:, 1]) * sizes["N"] + torch.maximum(edges[:, 0], edges[:, 1])
            if key.unique().numel() != key.numel():
                raise CRFValueError("expected each edge once, got a repeated edge (the same pair of nodes twice)")
        self.unary = unary
        self.edges = edges.long()
        self.pairwise = pairwise
        self._sizes = sizes
        self.term: PairwiseForm = self._normalise(pairwise)

    @property
    def num_nodes(self) -> int:
        return self._sizes["N"]

    @property
    def num_edges(self) -> int:
        return self._sizes["E"]

    @property
    def num_labels(self) -> int:
        return self._sizes["L"]

    @property
    def batch_size(self) -> int:
        return self._sizes.get("B", 1)

    def __repr__(self):
        b = f"B={self.batch_size}, " if self.batched else ""
        return f"GraphMRF({b}N={self.num_nodes}, E={self.num_edges}, L={self.num_labels}, pairwise={type(self.term).__name__})"

    def _edge_letters(self) -> str:
        return "B E" if self.batched else "E"

    def _normalise(self, pairwise) -> PairwiseForm:
        s = self._sizes
        if isinstance(pairwise, torch.Tensor):
            if pairwise.dim() == 2:
                pairwise = SharedTable(pairwise)
            else:
                pairwise = PerEdgeTables(pairwise)
        elif isinstance(pairwise, tuple) and len(pairwise) == 2:
            pairwise = WeightedTable(*pairwise)
        if isinstance(pairwise, PerEdgeTables):
            check_tensor(pairwise.tables, "pairwise", self._edge_letters() + " L L", s, floating=True)
            check_finite(pairwise.tables, "pairwise")
        elif isinstance(pairwise, SharedTable):
            check_tensor(pairwise.table, "pairwise", "L L", {"L": s["L"]}, floating=True)
            check_finite(pairwise.table, "pairwise")
        elif isinstance(pairwise, WeightedTable):
            check_tensor(pairwise.weight, "pairwise weight", self._edge_letters(), s, floating=True)
            check_tensor(pairwise.table, "pairwise table", "L L", {"L": s["L"]}, floating=True)
            check_finite(pairwise.weight, "pairwise weight")
            check_finite(pairwise.table, "pairwise table")
        elif isinstance(pairwise, TruncatedLinear):
            w = coerce_weight(pairwise.weight, "pairwise weight")
            if isinstance(w, torch.Tensor):
                check_tensor(w, "pairwise weight", self._edge_letters(), s, floating=True)
                check_finite(w, "pairwise weight")
        else:
            raise CRFTypeError(
                "expected pairwise as a tensor [E, L, L] (or [B, E, L, L]), a tensor [L, L], a pair "
                f"(weight, table), Potts or TruncatedLinear; got {type(pairwise).__name__}"
            )
        return pairwise

    def edge_tables(self) -> torch.Tensor:
        """Dense per-edge tables ``[E, L, L]`` (``[B, E, L, L]`` when batched). Small models only."""
        s, t = self._sizes, self.term
        L, E = s["L"], s["E"]
        lead = (s["B"], E) if self.batched else (E,)
        if isinstance(t, PerEdgeTables):
            return t.tables
        if isinstance(t, SharedTable):
            return t.table.expand(*lead, L, L)
        if isinstance(t, WeightedTable):
            return t.weight[..., None, None] * t.table
        idx = torch.arange(L, device=self.unary.device, dtype=self.unary.dtype)
        dist = -(idx[:, None] - idx[None, :]).abs().clamp(max=float(t.truncation))
        w = t.weight if isinstance(t.weight, torch.Tensor) else torch.full(lead, float(t.weight), dtype=self.unary.dtype, device=self.unary.device)
        return w[..., None, None] * dist

    def score(self, labels: torch.Tensor) -> torch.Tensor:
        """Score of labellings: ``labels [N]`` -> scalar, or ``[B, N]`` -> ``[B]`` when batched."""
        s = self._sizes
        letters = "B N" if self.batched else "N"
        check_tensor(labels, "labels", letters, s, integer=True)
        check_labels(labels, "labels", s["L"])
        labels = labels.long()
        un = self.unary.gather(-1, labels[..., None]).squeeze(-1).sum(-1)
        a = labels[..., self.edges[:, 0]]
        c = labels[..., self.edges[:, 1]]
        t = self.term
        if isinstance(t, PerEdgeTables):
            L = s["L"]
            flat = t.tables.reshape(*t.tables.shape[:-2], L * L)
            pw = flat.gather(-1, (a * L + c)[..., None]).squeeze(-1)
        elif isinstance(t, SharedTable):
            pw = t.table[a, c]
        elif isinstance(t, WeightedTable):
            pw = t.weight * t.table[a, c]
        else:
            pw = -t.weight * (a - c).abs().to(self.unary.dtype).clamp(max=float(t.truncation))
        return un + pw.sum(-1)
