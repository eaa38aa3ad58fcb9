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
    check_flag,
    check_labels,
    check_score_range,
    check_tensor,
    fmt_shape,
)
from .pairwise import EdgeLayout, PairwiseForm, as_form

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
        validate_args: check values too (NaN, inf, the sign of truncated-linear weights), which
            reads tensors on the host (device syncs). ``False`` keeps the shape and dtype checks
            only (e.g. inside a training step); a truncated-linear tensor weight of unknown sign
            then takes the chain kernels' exact table path instead of their O(L) fast path.

    The constructor's arguments are kept as attributes of the same names
    (``crf.unary``, ``crf.pairwise``, ``crf.offsets``); ``crf.terms`` holds the pairwise
    entries normalised to :mod:`crfkit.models.pairwise` forms.
    """

    def __init__(
        self,
        unary: torch.Tensor,
        pairwise,
        offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
        *,
        validate_args: bool = True,
    ):
        self.offsets = check_offsets(offsets)
        sizes = check_tensor(unary, "unary", "B L H W", floating=True)
        if min(sizes["B"], sizes["L"], sizes["H"], sizes["W"]) == 0:
            raise CRFShapeError(f"expected a non-empty grid: unary of shape [B, L, H, W] with all sizes >= 1, got {fmt_shape(unary.shape)}")
        self.validate_args = check_flag(validate_args, "validate_args")
        if self.validate_args:
            check_finite(unary, "unary")
        self.unary = unary
        self.pairwise = pairwise
        self._sizes = sizes
        self.terms: list[PairwiseForm] = self._normalise(pairwise)
        if self.validate_args:
            H, W = sizes["H"], sizes["W"]
            counts = [max(H - dy, 0) * max(W - abs(dx), 0) for dy, dx in self.offsets]
            check_score_range(unary, H * W, list(zip(counts, self.terms)), sizes["L"])

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

    def layout(self, k: int) -> EdgeLayout:
        """The edge layout of offset ``k``: weights ``[B, H, W]``, tables ``[B, L, L, H, W]``; the flat
        index of the edge whose first pixel is ``(y, x)`` in grid ``b`` is ``b * H * W + y * W + x``."""
        B, L, H, W = self.shape
        return EdgeLayout(
            name=f"pairwise[{k}] (offset {self.offsets[k]})",
            weight_letters="B H W",
            table_letters="B L L H W",
            sizes=dict(self._sizes),
            flat_weight=lambda w: w.reshape(B * H * W),
            flat_tables=lambda t: t.permute(0, 3, 4, 1, 2).reshape(B * H * W, L, L),
            dtype=self.unary.dtype,
            device=self.unary.device,
            check_values=self.validate_args,
        )

    def _normalise_one(self, entry, k: int) -> PairwiseForm:
        return as_form(entry, self.layout(k))

    def _edge_index(self, rows: slice | torch.Tensor, cols: slice | None = None) -> torch.Tensor:
        """Flat edge indices of pixels: a boolean mask ``[H, W]`` -> ``[B, count]``; or slices of
        rows and columns -> ``[B, h, w]``."""
        B, _, H, W = self.shape
        pix = torch.arange(H * W, device=self.unary.device).view(H, W)
        sel = pix[rows] if cols is None else pix[rows, cols]
        base = torch.arange(B, device=self.unary.device) * (H * W)
        return base.view(B, *([1] * sel.dim())) + sel

    # ------------------------------------------------------------------ conversion
    def edge_list(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All edges as ``edges [E, 2]`` (node ``y * W + x`` within one grid) and dense tables
        ``[B, E, L, L]``, offsets in order, edges of one offset in row-major order of their first
        pixel.  Dense: for small models, references and LPs."""
        B, L, H, W = self.shape
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        all_edges, all_tables = [], []
        for k, ((dy, dx), term) in enumerate(zip(self.offsets, self.terms)):
            y2, x2 = ys + dy, xs + dx
            ok = (y2 < H) & (x2 >= 0) & (x2 < W)
            all_edges.append(torch.stack([(ys * W + xs)[ok], (y2 * W + x2)[ok]], dim=1))
            all_tables.append(term.edge_tables(self.layout(k), self._edge_index(ok.to(self.unary.device))))
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
        for k, ((dy, dx), term) in enumerate(zip(self.offsets, self.terms)):
            ys = slice(0, H - dy)
            if dx >= 0:
                xs_a, xs_c = slice(0, W - dx), slice(dx, W)
            else:
                xs_a, xs_c = slice(-dx, W), slice(0, W + dx)
            a = labels[:, ys, xs_a]
            c = labels[:, dy:H, xs_c]
            out.append(term.pair_scores(self.layout(k), self._edge_index(ys, xs_a), a, c))
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
