"""``GraphMRF``: a pairwise MRF (optionally a batch of them) on any graph."""

from __future__ import annotations

import torch

from .._validation import (
    CRFShapeError,
    CRFValueError,
    check_finite,
    check_flag,
    check_labels,
    check_score_range,
    check_tensor,
    fmt_shape,
)
from .pairwise import EdgeLayout, PairwiseForm, as_form

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

        validate_args: check values too (NaN, inf, edge indices, repeated edges, the sign of
            truncated-linear weights), which reads tensors on the host (device syncs); ``False``
            keeps the shape and dtype checks only.

    The arguments are kept as ``mrf.unary``, ``mrf.edges``, ``mrf.pairwise``; ``mrf.term``
    is the pairwise normalised to a :mod:`crfkit.models.pairwise` form; ``mrf.batched`` says
    whether a batch dimension was given.
    """

    def __init__(self, unary: torch.Tensor, edges: torch.Tensor, pairwise, *, validate_args: bool = True):
        if isinstance(unary, torch.Tensor) and unary.dim() == 2:
            sizes = check_tensor(unary, "unary", "N L", floating=True)
            self.batched = False
        else:
            sizes = check_tensor(unary, "unary", "B N L", floating=True)
            self.batched = True
        if sizes["N"] == 0 or sizes["L"] == 0 or sizes.get("B", 1) == 0:
            raise CRFShapeError(f"expected a non-empty model: unary with N >= 1 and L >= 1, got {fmt_shape(unary.shape)}")
        self.validate_args = check_flag(validate_args, "validate_args")
        if self.validate_args:
            check_finite(unary, "unary")
        sizes = check_tensor(edges, "edges", "E 2", sizes, integer=True)
        if sizes["E"] > 0 and self.validate_args:
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
        if self.validate_args:
            check_score_range(unary, sizes["N"], [(sizes["E"], self.term)], sizes["L"])

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

    def layout(self) -> EdgeLayout:
        """The edge layout: weights ``[E]`` / ``[B, E]``, tables ``[E, L, L]`` / ``[B, E, L, L]``;
        edge ``e`` of model ``b`` has the flat index ``b * E + e``."""
        s = self._sizes
        L = s["L"]
        return EdgeLayout(
            name="pairwise",
            weight_letters="B E" if self.batched else "E",
            table_letters="B E L L" if self.batched else "E L L",
            sizes=dict(s),
            flat_weight=lambda w: w.reshape(-1),
            flat_tables=lambda t: t.reshape(-1, L, L),
            dtype=self.unary.dtype,
            device=self.unary.device,
            check_values=self.validate_args,
        )

    def _normalise(self, pairwise) -> PairwiseForm:
        return as_form(pairwise, self.layout())

    def _edge_index(self) -> torch.Tensor:
        """Flat indices of all edges: ``[E]``, or ``[B, E]`` when batched."""
        E = self._sizes["E"]
        idx = torch.arange(self.batch_size * E, device=self.unary.device)
        return idx.view(self.batch_size, E) if self.batched else idx

    def edge_tables(self) -> torch.Tensor:
        """Dense per-edge tables ``[E, L, L]`` (``[B, E, L, L]`` when batched). Small models only."""
        return self.term.edge_tables(self.layout(), self._edge_index())

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
        pw = self.term.pair_scores(self.layout(), self._edge_index(), a, c)
        return un + pw.sum(-1)
