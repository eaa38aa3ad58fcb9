"""Stereo matching as a grid CRF: the bundled Middlebury motorcycle pair, matching costs,
contrast-sensitive smoothness, winner-take-all and the bad-pixel rate.

Conventions (Middlebury's): the disparity ``d`` of left pixel ``(y, x)`` says that it shows the
same point as right pixel ``(y, x - d)``; ground truth is ``inf`` where unknown.  Labels are
integers ``0 .. L - 1`` on the working (downscaled) grid; label ``l`` is the full-resolution
disparity ``l * step`` (``StereoParams.label_step``, from the disparity range).

Scores are maximised: the unary score of label ``l`` at a pixel is ``-data_weight * cost``, the
pairwise score of an edge is ``-w_edge * min(|l - l'|, truncation)`` with ``w_edge`` large where
the two pixels look alike and small across intensity edges (``TruncatedLinear``); every weight is
per full-resolution pixel (:class:`StereoParams`), so the grid's resolution does not change the
balance of data and smoothness.

The defaults of :class:`StereoParams` were chosen on generated pairs (:func:`synthetic_pair`,
seeds 100..102), not on the bundled motorcycle pair; their accuracy on held-out generated pairs
and on the motorcycle, against OpenCV's ``StereoSGBM``, is measured by
``benchmarks/bench_stereo.py``.

Images are numpy arrays ``[H, W]`` or ``[H, W, 3]`` (uint8 or float); computations run in torch.
The bundled pair needs scikit-image (the ``cli`` extra), imported only by :func:`load_motorcycle`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, fmt_shape
from ..models.grid import DEFAULT_OFFSETS, GridCRF, check_offsets
from ..models.pairwise import TruncatedLinear

__all__ = [
    "StereoPair",
    "StereoParams",
    "load_motorcycle",
    "to_grey",
    "downscale",
    "downscale_disparity",
    "upsample_disparity",
    "census_transform",
    "matching_cost",
    "contrast_weights",
    "stereo_unary",
    "winner_take_all",
    "bad_pixel_rate",
    "build_stereo_crf",
    "synthetic_pair",
]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StereoPair:
    """A rectified stereo pair with optional ground truth.

    Attributes:
        left: ``[H, W, 3]`` (or ``[H, W]``) image, uint8 or float.
        right: same shape as ``left``.
        disparity: ``[H, W]`` float32 ground-truth disparity of the left image, ``inf`` where
            unknown; ``None`` if there is none.
        name: a short name for reports.
    """

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray | None = None
    name: str = "pair"


def load_motorcycle() -> StereoPair:
    """The Middlebury 2014 motorcycle pair bundled with scikit-image (``skimage.data``).

    Returns a :class:`StereoPair` with ``left``, ``right`` uint8 ``[500, 741, 3]`` and
    ``disparity`` float32 ``[500, 741]`` (``inf`` where invalid, about 7% of pixels).
    """
    try:
        from skimage import data as skdata
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "the bundled stereo pair needs scikit-image: pip install 'crfkit[cli]' (or pip install scikit-image)"
        ) from None
    left, right, disparity = skdata.stereo_motorcycle()
    return StereoPair(
        np.ascontiguousarray(left),
        np.ascontiguousarray(right),
        np.ascontiguousarray(disparity, dtype=np.float32),
        name="middlebury-motorcycle",
    )


def _check_image(img, name: str) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    if not isinstance(img, np.ndarray):
        raise CRFTypeError(f"expected {name} to be a numpy array [H, W] or [H, W, 3], got {type(img).__name__}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise CRFShapeError(f"expected {name} of shape [H, W] or [H, W, 3], got {fmt_shape(img.shape)}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise CRFShapeError(f"expected a non-empty {name}, got shape {fmt_shape(img.shape)}")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise CRFTypeError(f"expected {name} with an integer or floating dtype, got {img.dtype}")
    return img


def to_grey(image) -> np.ndarray:
    """Grey levels ``[H, W]`` float32 in the image's own range (the mean of R, G, B)."""
    img = _check_image(image, "image").astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    return img


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise CRFValueError(f"expected an integer downscale factor >= 1, got {factor!r}")
    return int(factor)


def downscale(image, factor: int) -> np.ndarray:
    """Area averaging by an integer ``factor``: ``[H, W(, C)] -> [H // f, W // f(, C)]`` float32.

    The last ``H % f`` rows and ``W % f`` columns are dropped.
    """
    img = _check_image(image, "image").astype(np.float32)
    f = _check_factor(factor)
    H, W = img.shape[:2]
    h, w = H // f, W // f
    if h == 0 or w == 0:
        raise CRFValueError(f"expected factor <= min(H, W) = {min(H, W)}, got {f}")
    img = img[: h * f, : w * f]
    return img.reshape(h, f, w, f, *img.shape[2:]).mean(axis=(1, 3))


def downscale_disparity(disparity: np.ndarray, factor: int) -> np.ndarray:
    """Ground truth at the working resolution: the mean of the finite values of each
    ``f × f`` block, divided by ``f`` (``inf`` where a block has none).
    ``[H, W] -> [H // f, W // f]``."""
    d = _check_image(disparity, "disparity").astype(np.float32)
    f = _check_factor(factor)
    H, W = d.shape
    h, w = H // f, W // f
    blocks = d[: h * f, : w * f].reshape(h, f, w, f)
    ok = np.isfinite(blocks)
    total = np.where(ok, blocks, 0.0).sum(axis=(1, 3))
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1) / f, np.inf)
    return out.astype(np.float32)


def upsample_disparity(disparity, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A working-resolution disparity ``[h, w]`` (labels or floats) at full resolution
    ``shape = (H, W)``: each value times ``factor``, each pixel repeated ``f × f`` times
    (nearest), rows/columns past ``h * f`` / ``w * f`` copied from the last ones."""
    if isinstance(disparity, torch.Tensor):
        disparity = disparity.detach().cpu().numpy()
    d = np.asarray(disparity, dtype=np.float32)
    if d.ndim != 2:
        raise CRFShapeError(f"expected disparity of shape [h, w], got {fmt_shape(d.shape)}")
    f = _check_factor(factor)
    H, W = int(shape[0]), int(shape[1])
    if H < d.shape[0] * f or W < d.shape[1] * f or H >= (d.shape[0] + 1) * f or W >= (d.shape[1] + 1) * f:
        raise CRFShapeError(
            f"expected a full-resolution shape (H, W) with H // {f} = {d.shape[0]} and W // {f} = "
            f"{d.shape[1]}, got {(H, W)}"
        )
    up = np.repeat(np.repeat(d * f, f, axis=0), f, axis=1)
    rows = np.minimum(np.arange(H), up.shape[0] - 1)
    cols = np.minimum(np.arange(W), up.shape[1] - 1)
    return np.ascontiguousarray(up[rows][:, cols])


# ----------------------------------------------------------------------------- costs


def _shift_right(right: torch.Tensor, d: int) -> torch.Tensor:
    """``right[..., x - d]`` at every ``x`` (the leftmost column repeated where ``x < d``)."""
    if d == 0:
        return right
    W = right.shape[-1]
    if d >= W:
        return right[..., :1].expand_as(right)
    pad = right[..., :1].expand(*right.shape[:-1], d)
    return torch.cat([pad, right[..., : W - d]], dim=-1)


def census_transform(grey: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Census bits ``[(2r+1)² - 1, H, W]`` bool: is the neighbour darker than the centre?
    Borders are replicated."""
    r = int(radius)
    H, W = grey.shape
    padded = torch.nn.functional.pad(grey[None, None], (r, r, r, r), mode="replicate")[0, 0]
    bits = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            bits.append(padded[r + dy : r + dy + H, r + dx : r + dx + W] < grey)
    return torch.stack(bits)


def matching_cost(
    left,
    right,
    num_labels: int,
    method: str = "ad_census",
    *,
    ad_truncation: float = 20.0,
    census_radius: int = 2,
    ad_scale: float = 10.0,
    census_scale: float = 30.0,
    step: int = 1,
    outside: str = "replicate",
) -> torch.Tensor:
    """Cost volume ``[L, H, W]`` (float32): left pixel ``(y, x)`` against right ``(y, x - l * step)``.

    Args:
        left, right: images ``[H, W]`` or ``[H, W, 3]`` (grey levels 0..255 expected).
        num_labels: ``L``, disparities ``0 .. L - 1``.
        method:
            - ``"tad"``: truncated absolute difference of grey levels,
              ``min(|I_L - I_R|, ad_truncation)``;
            - ``"census"``: Hamming distance of census bits in a ``(2r+1)²`` window, divided by
              the number of bits (in ``[0, 1]``);
            - ``"ad_census"``: ``(1 - exp(-AD / ad_scale)) + (1 - exp(-HD / census_scale * nbits))``
              — colour absolute difference (mean over channels) and the census Hamming
              distance mapped robustly to ``[0, 1)`` each and summed (Mei et al., 2011).
        ad_truncation, census_radius, ad_scale, census_scale: see ``method``.
        step: label ``l`` is the shift ``l * step`` pixels (default 1).
        outside: where ``x - l * step < 0`` (no partner in the right view): ``"replicate"``
            (default) matches the right image's first column; ``"mean"`` gives the mean of the
            pixel's costs over its labels that have a partner (no preference among them, so the
            smoothness decides; the leftmost column keeps its label-0 cost everywhere).
    """
    lft = _check_image(left, "left")
    rgt = _check_image(right, "right")
    if lft.shape != rgt.shape:
        raise CRFShapeError(
            f"expected left and right of the same shape, got {fmt_shape(lft.shape)} and {fmt_shape(rgt.shape)}"
        )
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise CRFValueError(f"expected num_labels an integer >= 1, got {num_labels!r}")
    L = int(num_labels)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise CRFValueError(f"expected step an integer >= 1, got {step!r}")
    k = int(step)
    if method not in ("tad", "census", "ad_census"):
        raise CRFValueError(f"expected method 'tad', 'census' or 'ad_census', got {method!r}")
    if outside not in ("replicate", "mean"):
        raise CRFValueError(f"expected outside 'replicate' or 'mean', got {outside!r}")
    cost = _cost_volume(lft, rgt, L, method, k, ad_truncation, census_radius, ad_scale, census_scale)
    if outside == "mean":
        W = cost.shape[-1]
        shifts = torch.arange(L)[:, None] * k  # [L, 1]
        valid = (torch.arange(W)[None, :] >= shifts)[:, None, :].expand_as(cost)  # [L, H, W]
        mean = (cost * valid).sum(0) / valid.sum(0).clamp(min=1)
        cost = torch.where(valid, cost, mean[None].expand_as(cost))
    return cost


def _cost_volume(lft, rgt, L, method, k, ad_truncation, census_radius, ad_scale, census_scale) -> torch.Tensor:
    """:func:`matching_cost` with the right image's first column replicated (arguments checked)."""
    gl = torch.from_numpy(to_grey(lft))
    gr = torch.from_numpy(to_grey(rgt))
    H, W = gl.shape
    cost = torch.empty(L, H, W, dtype=torch.float32)
    if method == "tad":
        for d in range(L):
            cost[d] = (gl - _shift_right(gr, d * k)).abs().clamp(max=float(ad_truncation))
        return cost
    cl = census_transform(gl, census_radius)
    cr = census_transform(gr, census_radius)
    nbits = cl.shape[0]
    if method == "census":
        for d in range(L):
            cost[d] = (cl ^ _shift_right(cr, d * k)).sum(0).float() / nbits
        return cost
    col_l = torch.from_numpy(lft.astype(np.float32).reshape(H, W, -1)[..., :3]).permute(2, 0, 1)
    col_r = torch.from_numpy(rgt.astype(np.float32).reshape(H, W, -1)[..., :3]).permute(2, 0, 1)
    for d in range(L):
        ad = (col_l - _shift_right(col_r, d * k)).abs().mean(0)
        hd = (cl ^ _shift_right(cr, d * k)).sum(0).float()
        cost[d] = (1 - torch.exp(-ad / ad_scale)) + (1 - torch.exp(-hd / census_scale * (48.0 / nbits)))
    return cost


def stereo_unary(cost: torch.Tensor, data_weight: float = 1.0) -> torch.Tensor:
    """Unary scores ``[1, L, H, W] = -data_weight * cost`` from a cost volume ``cost [L, H, W]``."""
    if not isinstance(cost, torch.Tensor) or cost.dim() != 3:
        got = fmt_shape(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__
        raise CRFShapeError(f"expected cost of shape [L, H, W], got {got}")
    return (-float(data_weight) * cost)[None].contiguous()


def contrast_weights(
    image,
    offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
    *,
    weight: float = 1.0,
    sigma: float = 10.0,
    floor: float = 0.0,
    stride_scale: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """Contrast-sensitive edge weights, one ``[1, H, W]`` map per offset.

    The edge of offset ``(dy, dx)`` at ``(y, x)`` joins ``p = (y, x)`` to ``q = (y + dy, x + dx)``;
    its weight is ``weight * s_k * (floor + (1 - floor) * exp(-|I_p - I_q| / sigma))`` with
    ``|I_p - I_q|`` the largest absolute difference over colour channels between the endpoints
    (for stride-2 edges, the endpoints themselves) and ``s_k = stride_scale[k]`` (default 1).
    Entries of edges whose partner is off the grid are 0 (ignored by the model anyway).
    """
    img = _check_image(image, "image").astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    offs = check_offsets(offsets)
    if stride_scale is None:
        stride_scale = [1.0] * len(offs)
    if len(stride_scale) != len(offs):
        raise CRFShapeError(f"expected one stride_scale per offset ({len(offs)}), got {len(stride_scale)}")
    if not sigma > 0:
        raise CRFValueError(f"expected sigma > 0, got {sigma!r}")
    t = torch.from_numpy(img).permute(2, 0, 1)  # [C, H, W]
    _, H, W = t.shape
    out = []
    for (dy, dx), s in zip(offs, stride_scale):
        w = torch.zeros(1, H, W, dtype=torch.float32)
        y1, x1a, x1b = H - dy, max(0, -dx), W - max(0, dx)
        if y1 > 0 and x1b > x1a:
            a = t[:, :y1, x1a:x1b]
            c = t[:, dy:, x1a + dx : x1b + dx]
            diff = (a - c).abs().amax(0)
            w[0, :y1, x1a:x1b] = float(weight) * float(s) * (floor + (1 - floor) * torch.exp(-diff / float(sigma)))
        out.append(w)
    return out


# ------------------------------------------------------------------------ decoding / evaluation


def winner_take_all(unary: torch.Tensor) -> torch.Tensor:
    """Per-pixel best label ``[B, H, W]`` (long) of unary scores ``[B, L, H, W]`` (maximised)."""
    if not isinstance(unary, torch.Tensor) or unary.dim() != 4:
        got = fmt_shape(unary.shape) if isinstance(unary, torch.Tensor) else type(unary).__name__
        raise CRFShapeError(f"expected unary of shape [B, L, H, W], got {got}")
    return unary.argmax(dim=1)


def bad_pixel_rate(disparity, ground_truth, threshold: float) -> float:
    """Fraction of pixels with finite ground truth where ``|disparity - ground_truth| > threshold``.

    Args:
        disparity: ``[H, W]`` estimate (same resolution as the ground truth).
        ground_truth: ``[H, W]``, non-finite where unknown.
        threshold: in pixels (Middlebury's ``bad 1.0`` / ``bad 2.0`` use 1 and 2).
    """
    d = disparity.detach().cpu().numpy() if isinstance(disparity, torch.Tensor) else np.asarray(disparity)
    g = ground_truth.detach().cpu().numpy() if isinstance(ground_truth, torch.Tensor) else np.asarray(ground_truth)
    if d.shape != g.shape or d.ndim != 2:
        raise CRFShapeError(
            f"expected disparity and ground_truth of the same shape [H, W], got "
            f"{fmt_shape(d.shape)} and {fmt_shape(g.shape)}"
        )
    ok = np.isfinite(g)
    if not ok.any():
        raise CRFValueError("expected at least one finite ground-truth pixel, got none")
    err = np.abs(d.astype(np.float64)[ok] - g.astype(np.float64)[ok])
    return float(np.mean(err > float(threshold)))


# ----------------------------------------------------------------------------- the CRF


@dataclass(frozen=True)
class StereoParams:
    """The stereo energy's settings, in full-resolution units so that the grid resolution
    (``factor``) changes the resolution, not the balance of data and smoothness.

    The energy of a disparity map ``d`` (full-resolution pixels) on the full-resolution image is
    ``sum_p cost_p(d_p) + smooth_weight * sum_{p~q} c_pq * min(|d_p - d_q|, truncation)`` over
    pixels ``p`` and 4-neighbour pairs ``p ~ q`` (``c_pq`` the contrast factor of
    :func:`contrast_weights`).  On a grid downscaled by ``f`` whose labels are ``step`` pixels
    apart, a grid pixel stands for ``f²`` pixels and a grid edge for ``f`` pixel pairs, so after
    dividing by ``f²``: unary ``-data_weight * mean cost`` and edge weight
    ``smooth_weight * step / f`` per label of difference, truncated at ``truncation / step``
    labels.

    Attributes:
        factor: integer downscale factor of the grid (4 = quarter resolution).
        cost_factor: integer downscale factor at which matching costs are computed; it
            divides ``factor``, and each grid pixel's cost is the mean over its
            ``(factor / cost_factor)²`` cost pixels.  ``None``: ``max(1, factor // 2)``.
        max_disparity: the largest disparity searched, in full-resolution pixels (> 0).
        num_labels: ``L``, labels ``0 .. L - 1``; ``None``: ``floor(max_disparity / step) + 1``.
        max_labels: the label step (a multiple of ``cost_factor``) is the smallest that keeps
            ``L <= max_labels``.
        cost: matching cost, ``"census"``, ``"ad_census"`` or ``"tad"`` (:func:`matching_cost`).
        census_radius: census window radius at the cost resolution.
        outside: costs of disparities with no partner in the right view (``x < d``), see
            :func:`matching_cost`: ``"mean"`` (default) or ``"replicate"``.
        data_weight: multiplies the mean cost in the unary score.
        smooth_weight: smoothness per full-resolution pixel pair and pixel of disparity jump,
            between like-looking pixels (relative to the per-pixel cost).
        truncation: of the truncated-linear smoothness, in full-resolution pixels.
        sigma: contrast scale of :func:`contrast_weights` (grey levels 0..255).
        floor: smallest relative edge weight across strong intensity edges.
        stride2_scale: relative weight of stride-2 edges (offsets with a component of 2).
        offsets: the grid's offsets.
    """

    factor: int = 4
    cost_factor: int | None = None
    max_disparity: float = 64.0
    num_labels: int | None = None
    max_labels: int = 96
    cost: str = "census"
    census_radius: int = 2
    outside: str = "mean"
    data_weight: float = 1.0
    smooth_weight: float = 0.4
    truncation: float = 8.0
    sigma: float = 10.0
    floor: float = 0.2
    stride2_scale: float = 0.5
    offsets: tuple[tuple[int, int], ...] = field(default=DEFAULT_OFFSETS)

    def resolved_cost_factor(self) -> int:
        f = _check_factor(self.factor)
        cf = _check_factor(max(1, f // 2) if self.cost_factor is None else self.cost_factor)
        if f % cf != 0:
            raise CRFValueError(f"expected cost_factor to divide factor = {self.factor}, got {self.cost_factor}")
        return cf

    def _checked_max_disparity(self) -> float:
        D = self.max_disparity
        if (
            isinstance(D, bool)
            or not isinstance(D, (int, float, np.integer, np.floating))
            or not (0 < float(D) < math.inf)
        ):
            raise CRFValueError(f"expected max_disparity a finite number > 0 (pixels), got {D!r}")
        return float(D)

    def label_step(self) -> int:
        """Full-resolution disparity between consecutive labels: ``cost_factor`` times the
        smallest integer ``k`` with ``floor(max_disparity / (k * cost_factor)) + 1 <= max_labels``
        (``k = 1`` when ``num_labels`` is given)."""
        cf = self.resolved_cost_factor()
        if self.num_labels is not None:
            return cf
        D = self._checked_max_disparity()
        if (
            isinstance(self.max_labels, bool)
            or not isinstance(self.max_labels, (int, np.integer))
            or (self.max_labels < 2)
        ):
            raise CRFValueError(f"expected max_labels an integer >= 2, got {self.max_labels!r}")
        k = 1
        while math.floor(D / (k * cf)) + 1 > self.max_labels:
            k += 1
        return cf * k

    def disparity_step(self) -> int:
        """Alias of :meth:`label_step` (full-resolution disparity of one label step)."""
        return self.label_step()

    def labels(self) -> int:
        if self.num_labels is not None:
            n = self.num_labels
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise CRFValueError(f"expected num_labels an integer >= 1, got {n!r}")
            return int(n)
        return int(math.floor(self._checked_max_disparity() / self.label_step())) + 1

    def edge_weight(self) -> float:
        """Weight of a stride-1 grid edge between like-looking pixels, per label of difference."""
        return float(self.smooth_weight) * self.label_step() / _check_factor(self.factor)

    def truncation_labels(self) -> float:
        """The truncation in labels: ``truncation / step`` rounded, at least 1 and at most
        ``L - 1`` (no two labels are further apart, so a larger truncation changes nothing)."""
        T = float(self.truncation)
        if not (0 < T < math.inf):
            raise CRFValueError(f"expected truncation a finite number > 0 (pixels), got {self.truncation!r}")
        return float(max(1, min(round(T / self.label_step()), self.labels() - 1)))


def build_stereo_crf(pair: StereoPair, params: StereoParams | None = None) -> tuple[GridCRF, dict]:
    """The stereo CRF of ``pair`` at the working resolution ``(h, w) = (H // factor, W // factor)``.

    Returns ``(crf, parts)``: ``crf`` a :class:`~crfkit.GridCRF` with unary ``[1, L, h, w]`` and
    one ``TruncatedLinear(weight [1, h, w], truncation)`` per offset; ``parts`` a dict with the
    downscaled ``left``/``right`` images, the ``cost`` volume ``[L, h, w]``, the ``unary``, the
    ``params`` and the label ``step`` (label ``l`` is the full-resolution disparity ``l * step``).
    """
    p = params or StereoParams()
    f = _check_factor(p.factor)
    cf = p.resolved_cost_factor()
    L = p.labels()
    step = p.label_step()
    left = downscale(pair.left, f)
    right = downscale(pair.right, f)
    kw = {"census_radius": int(p.census_radius), "step": step // cf, "outside": p.outside}
    if cf == f:
        cost = matching_cost(left, right, L, p.cost, **kw)
    else:
        cost = matching_cost(downscale(pair.left, cf), downscale(pair.right, cf), L, p.cost, **kw)
        r = f // cf
        h, w = left.shape[:2]
        cost = cost[:, : h * r, : w * r].reshape(L, h, r, w, r).mean(dim=(2, 4))
    unary = stereo_unary(cost, p.data_weight)
    offsets = check_offsets(p.offsets)
    scales = [p.stride2_scale if max(abs(dy), abs(dx)) >= 2 else 1.0 for dy, dx in offsets]
    weights = contrast_weights(left, offsets, weight=p.edge_weight(), sigma=p.sigma, floor=p.floor, stride_scale=scales)
    pairwise = [TruncatedLinear(w, p.truncation_labels()) for w in weights]
    crf = GridCRF(unary, pairwise, offsets=offsets)
    return crf, {"left": left, "right": right, "cost": cost, "unary": unary, "params": p, "step": step}


# ----------------------------------------------------------------------------- generated pairs


def _texture(g: np.random.Generator, H: int, W: int, strength: float) -> np.ndarray:
    """A random colour texture ``[H, W, 3]`` float (0..255 before clipping): smoothed noise at
    several scales plus a few flat patches, its contrast ``strength`` (1: strong)."""
    from scipy.ndimage import gaussian_filter

    base = g.uniform(60, 190, size=3)
    out = np.zeros((H, W, 3))
    for s in (0.8, 2.0, 5.0, 12.0):
        n = gaussian_filter(g.standard_normal((H, W)), s)
        n /= max(n.std(), 1e-9)
        tint = g.uniform(0.6, 1.0, size=3)
        out += g.uniform(6, 22) * strength * n[..., None] * tint
    for _ in range(int(g.integers(2, 6))):  # flat patches: piecewise-constant regions
        y0, x0 = int(g.integers(0, H)), int(g.integers(0, W))
        hh, ww = int(g.integers(H // 10, H // 3)), int(g.integers(W // 10, W // 3))
        out[y0 : y0 + hh, x0 : x0 + ww] += g.uniform(-40, 40, size=3) * strength
    return out + base


def synthetic_pair(
    kind: str = "layers",
    seed: int = 0,
    shape: tuple[int, int] = (180, 240),
    max_disparity: float = 32.0,
    *,
    gain: float = 1.0,
    bias: float = 0.0,
    gamma: float = 1.0,
    noise: float = 2.0,
) -> StereoPair:
    """A generated rectified pair with known disparity: textured layers in front of a slanted
    background plane, rendered into both views with occlusions.

    Args:
        kind: ``"layers"`` (fronto-parallel foreground layers: rectangles and ellipses) or
            ``"planes"`` (slanted foreground planes).
        seed: the random seed.
        shape: ``(H, W)`` of the images.
        max_disparity: the largest disparity in the scene is at most this (full pixels).
        gain, bias, gamma: exposure change of the right view, ``gain * 255 (I / 255)^gamma + bias``.
        noise: standard deviation of Gaussian noise added to each view (grey levels).

    Returns a :class:`StereoPair` with uint8 ``[H, W, 3]`` views and float32 ``disparity``
    ``[H, W]`` of the left view (finite everywhere, occluded pixels included).  Each surface
    ``k`` has disparity ``a_k + b_k x + c_k y`` (left coordinates) and a texture fixed to it;
    a pixel of either view shows the surface of largest disparity that covers it there.
    """
    if kind not in ("layers", "planes"):
        raise CRFValueError(f"expected kind 'layers' or 'planes', got {kind!r}")
    H, W = int(shape[0]), int(shape[1])
    D = float(max_disparity)
    if not (H >= 8 and W >= 8 and 2 <= D < W / 2):
        raise CRFValueError(f"expected shape >= (8, 8) and 2 <= max_disparity < W / 2, got {shape}, {D}")
    g = np.random.default_rng(seed)
    surfaces = _random_surfaces(g, kind, H, W, D)
    left, disp = _render_view(surfaces, H, W, right=False)
    right, _ = _render_view(surfaces, H, W, right=True)
    right = np.clip(right, 0, 255)
    right = float(gain) * 255.0 * (right / 255.0) ** float(gamma) + float(bias)
    left = left + g.normal(0, noise, left.shape)
    right = right + g.normal(0, noise, right.shape)
    to8 = lambda im: np.clip(np.round(im), 0, 255).astype(np.uint8)  # noqa: E731
    name = f"synthetic-{kind}-{seed}" + ("" if (gain, bias, gamma) == (1.0, 0.0, 1.0) else "-exposure")
    return StereoPair(to8(left), to8(right), disp.astype(np.float32), name=name)


def _random_surfaces(g: np.random.Generator, kind: str, H: int, W: int, D: float) -> list:
    """A slanted background and 3..5 foreground surfaces: ``(a, b, c, shape, texture)`` each, with
    disparity ``a + b x + c y`` (left coordinates), ``shape`` ``None`` (everywhere) or
    ``(cy, cx, ry, rx, ellipse)``, and a texture ``[H, W + D + 2, 3]`` fixed to the surface."""
    lo = g.uniform(0.05, 0.25) * D
    hi = g.uniform(0.3, 0.5) * D
    # background: slanted, disparity from lo to hi over the image
    b_bg, c_bg = g.uniform(-0.5, 0.5) * (hi - lo) / W, (hi - lo) / H * g.uniform(0.3, 1.0)
    a_bg = lo - min(0.0, b_bg * W)
    surfaces = [(a_bg, b_bg, c_bg, None, _texture(g, H, W + int(D) + 2, g.uniform(0.5, 1.0)))]
    n_fg = int(g.integers(3, 6))
    for i in range(n_fg):
        d0 = hi + (0.85 * D - hi) * (i + g.uniform(0.2, 0.9)) / n_fg
        if kind == "planes":
            b, c = g.uniform(-0.15, 0.15) * D / W, g.uniform(-0.15, 0.15) * D / H
        else:
            b = c = 0.0
        cy, cx = g.uniform(0.15, 0.85) * H, g.uniform(0.2, 0.9) * W
        ry, rx = g.uniform(0.1, 0.3) * H, g.uniform(0.08, 0.25) * W
        ellipse = bool(g.integers(0, 2))
        a = d0 - b * cx - c * cy
        surfaces.append((a, b, c, (cy, cx, ry, rx, ellipse), _texture(g, H, W + int(D) + 2, g.uniform(0.2, 1.0))))
    return surfaces


def _covers(shape, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Where a surface of :func:`_random_surfaces` covers the left-view points ``(y, x)``."""
    if shape is None:
        return np.ones_like(x, dtype=bool)
    cy, cx, ry, rx, ellipse = shape
    if ellipse:
        return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    return (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)


def _render_view(surfaces: list, H: int, W: int, *, right: bool) -> tuple[np.ndarray, np.ndarray]:
    """One view ``[H, W, 3]`` float of ``surfaces`` and the disparity ``[H, W]`` it shows: each pixel
    shows the surface of largest disparity covering it."""
    from scipy.ndimage import map_coordinates

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    best = np.full((H, W), -np.inf)
    img = np.zeros((H, W, 3))
    disp = np.zeros((H, W))
    for a, b, c, shape, tex in surfaces:
        # the left x of the surface point seen at this pixel: x - d(x, y) = x_view (right view)
        x_left = (xs + a + c * ys) / (1.0 - b) if right else xs
        d = a + b * x_left + c * ys
        vis = _covers(shape, ys, x_left) & (d > best)
        coords = [ys[vis], x_left[vis]]
        for ch in range(3):
            img[..., ch][vis] = map_coordinates(tex[..., ch], coords, order=1, mode="nearest")
        best = np.where(vis, d, best)
        disp = np.where(vis, d, disp)
    return img, disp
