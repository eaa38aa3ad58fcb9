"""``GridCRF``: a batch of pairwise CRFs on an ``H × W`` pixel grid with any set of offsets."""

from __future__ import annotations

import operator
from collections.abc import Sequence

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
from .pairwise import (
    PairwiseForm,
    PerEdgeTables,
    SharedTable,
    TruncatedLinear,
    WeightedTable,
    coerce_weight,
)

__all__ = ["GridCRF", "DEFAULT_OFFSETS", "check_offsets"]

#: The papers' edges: stride-1 and stride-2, horizontal and vertical.
DEFAULT_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (0, 2), (2, 0))


def check_offsets(offsets) -> tuple[tuple[int, int], ...]:
    """Validate offsets ``(dy, dx)``: ``dy > 0``, or ``dy == 0 and dx > 0``; no repeats."""
    try:
        out = tuple((operator.index(dy), operator.index(dx)) for dy, dx in offsets)
    except (TypeError, ValueError):
        raise CRFTypeError(f"expected offsets as a sequence of (dy, dx) integer pairs, got {offsets!r}") from None
    if len(out) == 0:
        raise CRFValueError("expected at least one offset (dy, dx), got none")
    for dy, dx in out:
        if not (dy > 0 or (dy == 0 and dx > 0)):
            raise CRFValueError(
                f"expected each offset (dy, dx) with dy > 0, or dy == 0 and dx > 0, got ({dy}, {dx})"
            )
    if len(set(out)) != len(out):
        raise CRFValueError(f"expected distinct offsets, got {out}")
    return out


class GridCRF:
    """Pairwise CRFs on a batch of ``H × W`` grids.

    ``score(x) = Σ_pixels unary[b, x_p, y, x] + Σ_offsets Σ_edges pairwise(x_p, x_q)``,
    maximised.  For offset ``(dy, dx)``, the edge at ``(y, x)`` joins pixel ``(y, x)``
    (label ``a``) with ``(y + dy, x + dx)`` (label ``c``); edges whose partner is off the
    grid do not exist and their entries are ignored.

    Args:
        unary: ``[B, L, H, W]`` floating scores.
        pairwise: one entry per offset, each in any form:

            - a tensor ``[B, L, L, H, W]``: a full table per edge (``PerEdgeTables``);
            - a tensor ``[L, L]``: one table for the whole offset (``SharedTable``);
            - a pair ``(weight [B, H, W], table [L, L])``: ``weight * table`` (``WeightedTable``);
            - ``Potts(weight)`` / ``TruncatedLinear(weight, truncation)`` with ``weight``
              ``[B, H, W]`` or a number.

            A single tensor ``[B, K, L, L, H, W]`` gives per-edge tables for all ``K`` offsets.
        offsets: ``K`` pairs ``(dy, dx)``; default :data:`DEFAULT_OFFSETS`.

    The constructor's arguments are kept as attributes of the same names
    (``crf.unary``, ``crf.pairwise``, ``crf.offsets``); ``crf.terms`` holds the pairwise
    entries normalised to :mod:`crfkit.models.pairwise` forms.
    """

    def __init__(self, unary: torch.Tensor, pairwise, offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS):
        self.offsets = check_offsets(offsets)
        sizes = check_tensor(unary, "unary", "B L H W", floating=True)
        if min(sizes["B"], sizes["L"], sizes["H"], sizes["W"]) == 0:
            raise CRFShapeError(f"expected a non-empty grid: unary of shape [B, L, H, W] with all sizes >= 1, got {fmt_shape(unary.shape)}")
        check_finite(unary, "unary")
        self.unary = unary
        self.pairwise = pairwise
        self._sizes = sizes
        self.terms: list[PairwiseForm] = self._normalise(pairwise)

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self._sizes["B"]

    @property
    def num_labels(self) -> int:
        return self._sizes["L"]

    @property
    def height(self) -> int:
        return self._sizes["H"]

    @property
    def width(self) -> int:
        return self._sizes["W"]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, L, H, W)``."""
        s = self._sizes
        return (s["B"], s["L"], s["H"], s["W"])

    def __repr__(self):
        forms = ", ".join(type(t).__name__ for t in self.terms)
        return f"GridCRF(B={self.batch_size}, L={self.num_labels}, H={self.height}, W={self.width}, offsets={self.offsets}, pairwise=[{forms}])"

    # ------------------------------------------------------------------ validation
    def _normalise(self, pairwise) -> list[PairwiseForm]:
        K = len(self.offsets)
        if isinstance(pairwise, torch.Tensor) and pairwise.dim() == 6:
            check_tensor(pairwise, "pairwise", "B K L L H W", {**self._sizes, "K": K}, floating=True)
            entries = list(pairwise.unbind(1))
        elif isinstance(pairwise, (list, tuple)) and not (
            len(pairwise) == 2 and isinstance(pairwise[0], torch.Tensor) and pairwise[0].dim() == 3 and K != 2
        ):
            entries = list(pairwise)
        else:
            raise CRFTypeError(
                f"expected pairwise as a list with one entry per offset ({K} offsets), or a tensor "
                f"[B, K, L, L, H, W]; got {type(pairwise).__name__}"
                + (f" of shape {fmt_shape(pairwise.shape)}" if isinstance(pairwise, torch.Tensor) else "")
            )
        if len(entries) != K:
            raise CRFShapeError(f"expected one pairwise entry per offset ({K} offsets {self.offsets}), got {len(entries)}")
        return [self._normalise_one(e, k) for k, e in enumerate(entries)]

    def _normalise_one(self, entry, k: int) -> PairwiseForm:
        s = self._sizes
        name = f"pairwise[{k}] (offset {self.offsets[k]})"
        edge = {"B": s["B"], "H": s["H"], "W": s["W"]}
        if isinstance(entry, torch.Tensor):
            if entry.dim() == 2:
                entry = SharedTable(entry)
            elif entry.dim() == 5:
                entry = PerEdgeTables(entry)
            else:
                raise CRFShapeError(
                    f"expected {name} of shape [B, L, L, H, W] or [L, L], got {fmt_shape(entry.shape)}"
                )
        elif isinstance(entry, tuple) and len(entry) == 2 and not isinstance(entry, PairwiseForm):
            entry = WeightedTable(*entry)
        if isinstance(entry, PerEdgeTables):
            check_tensor(entry.tables, name, "B L L H W", s, floating=True)
            check_finite(entry.tables, name)
        elif isinstance(entry, SharedTable):
            check_tensor(entry.table, name, "L L", {"L": s["L"]}, floating=True)
            check_finite(entry.table, name)
        elif isinstance(entry, WeightedTable):
            check_tensor(entry.weight, name + " weight", "B H W", edge, floating=True)
            check_tensor(entry.table, name + " table", "L L", {"L": s["L"]}, floating=True)
            check_finite(entry.weight, name + " weight")
            check_finite(entry.table, name + " table")
        elif isinstance(entry, TruncatedLinear):
            w = coerce_weight(entry.weight, name + " weight")
            if isinstance(w, torch.Tensor):
                check_tensor(w, name + " weight", "B H W", edge, floating=True)
                check_finite(w, name + " weight")
            elif w != w or abs(w) == float("inf"):
                raise CRFValueError(f"expected a finite {name} weight, got {w}")
        else:
            raise CRFTypeError(
                f"expected {name} as a tensor [B, L, L, H, W] or [L, L], a pair (weight [B, H, W], table [L, L]), "
                f"Potts or TruncatedLinear; got {type(entry).__name__}"
            )
        return entry

    # ------------------------------------------------------------------ conversion
    def edge_list(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All edges as ``edges [E, 2]`` (node ``y * W + x`` within one grid) and dense tables
        ``[B, E, L, L]``, offsets in order, edges of one offset in row-major order of their first
        pixel.  Dense: for small models, references and LPs."""
        from ..models.pairwise import label_distance_table  # local: avoid a cycle in docs tools

        B, L, H, W = self.shape
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        all_edges, all_tables = [], []
        for (dy, dx), term in zip(self.offsets, self.terms):
            y2, x2 = ys + dy, xs + dx
            ok = (y2 < H) & (x2 >= 0) & (x2 < W)
            e = torch.stack([(ys * W + xs)[ok], (y2 * W + x2)[ok]], dim=1)
            if isinstance(term, PerEdgeTables):
                t = term.tables.permute(0, 3, 4, 1, 2)[:, ok]
            elif isinstance(term, SharedTable):
                t = term.table.expand(B, e.shape[0], L, L)
            elif isinstance(term, WeightedTable):
                t = term.weight[:, ok][..., None, None] * term.table
            else:
                dist = label_distance_table(L, term.truncation, dtype=self.unary.dtype, device=self.unary.device)
                w = term.weight
                w = w[:, ok] if isinstance(w, torch.Tensor) else torch.full((B, e.shape[0]), float(w), dtype=self.unary.dtype, device=self.unary.device)
                t = w[..., None, None] * dist
            all_edges.append(e)
            all_tables.append(t)
        edges = torch.cat(all_edges).to(self.unary.device)
        return edges, torch.cat(all_tables, dim=1)

    def to_graph_mrf(self):
        """The same model as a batched :class:`~crfkit.GraphMRF` (nodes ``y * W + x``, dense tables)."""
        from .graph import GraphMRF

        B, L, H, W = self.shape
        edges, tables = self.edge_list()
        return GraphMRF(self.unary.permute(0, 2, 3, 1).reshape(B, H * W, L), edges, tables)

    # ------------------------------------------------------------------ scoring
    def edge_scores(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """Per-edge scores ``[B, H - dy, W - |dx|]``-like maps, one per offset (zero off-grid)."""
        B, L, H, W = self.shape
        out = []
        for (dy, dx), term in zip(self.offsets, self.terms):
            ys = slice(0, H - dy)
            if dx >= 0:
                xs_a, xs_c = slice(0, W - dx), slice(dx, W)
            else:
                xs_a, xs_c = slice(-dx, W), slice(0, W + dx)
            a = labels[:, ys, xs_a]
            c = labels[:, dy:H, xs_c]
            if isinstance(term, PerEdgeTables):
                t = term.tables[:, :, :, ys, xs_a]
                v = t.gather(1, a[:, None, None].expand(-1, 1, L, -1, -1)).squeeze(1)
                v = v.gather(1, c[:, None]).squeeze(1)
            elif isinstance(term, SharedTable):
                v = term.table[a, c]
            elif isinstance(term, WeightedTable):
                v = term.weight[:, ys, xs_a] * term.table[a, c]
            else:
                dist = (a - c).abs().to(self.unary.dtype).clamp(max=float(term.truncation))
                w = term.weight
                w = w[:, ys, xs_a] if isinstance(w, torch.Tensor) else w
                v = -w * dist
            out.append(v)
        return out

    def score(self, labels: torch.Tensor) -> torch.Tensor:
        """Score of labellings ``labels [B, H, W]`` (long) -> ``[B]``."""
        s = self._sizes
        check_tensor(labels, "labels", "B H W", {"B": s["B"], "H": s["H"], "W": s["W"]}, integer=True)
        check_labels(labels, "labels", s["L"])
        labels = labels.long()
        total = self.unary.gather(1, labels[:, None]).squeeze(1).sum(dim=(1, 2))
        for v in self.edge_scores(labels):
            total = total + v.sum(dim=(1, 2))
        return total
