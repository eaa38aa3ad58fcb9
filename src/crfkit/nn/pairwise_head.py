"""Pairwise heads: pairwise tables for every grid edge from the features of its two endpoints.

The paper (Sec. 6) obtains the pairwise potentials "by applying a fully-connected layer
over concatenated features of pairs of locations on the feature map just before the
final layer".  For an edge of offset ``(dy, dx)`` joining pixel ``p = (y, x)`` (label
``a``) to ``q = (y + dy, x + dx)`` (label ``c``), with features ``f [B, F, H, W]``::

    table[b, a, c, p] = (W @ concat(f[b, :, p], f[b, :, q]) + bias)[a * L + c]

with one ``W [L², 2F]`` shared by all offsets.  Splitting ``W = [W_a | W_c]`` gives
``W_a f_p + W_c f_q``, so the layer is computed as one ``1×1`` convolution of ``f`` to
``2 L²`` channels followed by a shift per offset — exactly the layer over the
concatenation, at the cost of one convolution instead of ``K``.

Three forms (``form=``):

- ``full``: score ``W [L², 2F] · [f_p; f_q] + b``; parameters ``2F·L² + L²``; output a
  tensor ``[B, K, L, L, H, W]``.
- ``weighted``: score ``w_e · T_k[a, c]`` with ``w_e = v · [f_p; f_q] + c``; parameters
  ``2F + 1`` and one ``[L, L]`` table per offset (or one shared); output ``K`` pairs
  ``(weight [B, H, W], table [L, L])``.
- ``lowrank``: score ``Σ_r s_{e,r} · T_r[a, c]`` with ``s_e = U [f_p; f_q] + u``; parameters
  ``2F·R + R + R·L²``; output a tensor ``[B, K, L, L, H, W]``.

``weighted`` never expands to ``L²`` per edge (the chain kernels handle the
``WeightedTable`` form natively); ``lowrank`` saves parameters and convolution work for
many labels but still hands the CRF full tables (``L²`` memory per edge).

Entries whose partner ``q`` lies off the grid are zero (GridCRF ignores them).  The
outputs are in the pairwise forms accepted by :class:`crfkit.GridCRF` and
:class:`crfkit.nn.DualDecompositionCRF`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import CRFValueError, check_tensor
from ..models.grid import DEFAULT_OFFSETS, check_offsets

__all__ = ["PairwiseHead", "shift_to_partner"]

FORMS = ("full", "weighted", "lowrank")


def shift_to_partner(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]`` where that pixel is on the grid, else ``0``.

    Args:
        t: ``[..., H, W]``.
        dy, dx: the offset (any signs).

    Returns:
        ``[..., H, W]``, same dtype and device.
    """
    H, W = t.shape[-2], t.shape[-1]
    if abs(dy) >= H or abs(dx) >= W:
        return torch.zeros_like(t)
    # pad so that index (y + dy + top, x + dx + left) is valid for all y, x
    top, bottom = max(-dy, 0), max(dy, 0)
    left, right = max(-dx, 0), max(dx, 0)
    padded = F.pad(t, (left, right, top, bottom))
    y0, x0 = top + dy, left + dx
    return padded[..., y0 : y0 + H, x0 : x0 + W]


class PairwiseHead(nn.Module):
    """Pairwise potentials for every edge of every offset from endpoint features.

    Args:
        in_channels: ``F``, channels of the feature map.
        num_labels: ``L``.
        offsets: ``K`` grid offsets ``(dy, dx)`` (default: the papers' four).
        form: ``"full"`` (the paper's layer), ``"weighted"`` or ``"lowrank"`` (see the module doc).
        rank: ``R`` for ``form="lowrank"``.
        init_std: standard deviation of the normal initialisation of the layer's weights
            (biases start at zero), small so that the CRF starts close to the unaries.
        per_offset_tables: for ``weighted``, one learned table per offset (default) or one
            shared by all offsets.

    Forward:
        ``features [B, F, H, W]`` -> pairwise for ``GridCRF`` / ``DualDecompositionCRF``:

        - ``full`` / ``lowrank``: a tensor ``[B, K, L, L, H, W]``;
        - ``weighted``: a list of ``K`` pairs ``(weight [B, H, W], table [L, L])``.

        Scores are maximised: a large ``[a, a]`` entry rewards equal labels across the edge.
    """

    def __init__(
        self,
        in_channels: int,
        num_labels: int,
        offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
        *,
        form: str = "full",
        rank: int = 4,
        init_std: float = 1e-3,
        per_offset_tables: bool = True,
    ):
        super().__init__()
        if form not in FORMS:
            raise CRFValueError(f"expected form in {FORMS}, got {form!r}")
        if int(in_channels) < 1 or int(num_labels) < 1:
            raise CRFValueError(
                f"expected in_channels >= 1 and num_labels >= 1, got {in_channels} and {num_labels}"
            )
        if form == "lowrank" and int(rank) < 1:
            raise CRFValueError(f"expected rank >= 1, got {rank}")
        self.in_channels = int(in_channels)
        self.num_labels = int(num_labels)
        self.offsets = check_offsets(offsets)
        self.form = form
        self.rank = int(rank)
        L, K = self.num_labels, len(self.offsets)
        out = {"full": L * L, "weighted": 1, "lowrank": self.rank}[form]
        self.out_per_edge = out
        # one 1x1 conv producing [W_a f ; W_c f]: the concatenated-feature layer, split
        self.proj = nn.Conv2d(self.in_channels, 2 * out, kernel_size=1, bias=True)
        nn.init.normal_(self.proj.weight, std=float(init_std))
        nn.init.zeros_(self.proj.bias)
        with torch.no_grad():  # only the W_a half carries the layer's bias
            self.proj.bias[out:].zero_()
        if form == "weighted":
            n_tables = K if per_offset_tables else 1
            self.tables = nn.Parameter(torch.randn(n_tables, L, L) * float(init_std))
            with torch.no_grad():
                self.proj.bias[:out].fill_(1.0)
        elif form == "lowrank":
            self.basis = nn.Parameter(torch.randn(self.rank, L, L) * float(init_std))
            with torch.no_grad():
                self.proj.bias[:out].fill_(1.0)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_labels={self.num_labels}, form={self.form!r}, "
            f"offsets={self.offsets}" + (f", rank={self.rank}" if self.form == "lowrank" else "")
        )

    def edge_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """The layer's raw per-edge outputs ``[B, K, O, H, W]`` (``O = L²``, ``1`` or ``R``)."""
        check_tensor(features, "features", "B F H W", {"F": self.in_channels}, floating=True)
        O = self.out_per_edge
        z = self.proj(features)
        za, zc = z[:, :O], z[:, O:]
        return torch.stack([za + shift_to_partner(zc, dy, dx) for dy, dx in self.offsets], dim=1)

    def forward(self, features: torch.Tensor):
        e = self.edge_outputs(features)  # [B, K, O, H, W]
        B, K, _, H, W = e.shape
        L = self.num_labels
        if self.form == "full":
            out = e.reshape(B, K, L, L, H, W)
        elif self.form == "lowrank":
            out = torch.einsum("bkrhw,rac->bkachw", e, self.basis)
        else:
            tables = self.tables if self.tables.shape[0] == K else self.tables.expand(K, L, L)
            return [(e[:, k, 0], tables[k]) for k in range(K)]
        # zero the entries whose partner is off the grid (ignored by the CRF anyway)
        return out * self.edge_mask(H, W, device=out.device, dtype=out.dtype)[None, :, None, None]

    def edge_mask(self, H: int, W: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """``[K, H, W]``: 1 where the edge's partner pixel lies on the grid, else 0."""
        ones = torch.ones(1, H, W, device=device, dtype=dtype)
        return torch.cat([shift_to_partner(ones, dy, dx) for dy, dx in self.offsets])
