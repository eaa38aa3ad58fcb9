"""Dense stereo for any rectified pair: ``crfkit.stereo.match(left, right, max_disparity=...)``.

The pair is turned into a grid CRF (:func:`crfkit.data.stereo.build_stereo_crf`: census matching
costs, contrast-sensitive truncated-linear smoothness, every weight expressed per full-resolution
pixel so that ``scale`` changes the resolution and not the balance of the energy) and solved by
:func:`crfkit.solve_map` (dual decomposition into chains, with a certificate).  The disparity
comes back at full resolution.

Conventions (Middlebury's): the disparity ``d`` of left pixel ``(y, x)`` says that it shows the
same point as right pixel ``(y, x - d)``; ground truth is ``inf`` where unknown.

    >>> import crfkit.stereo
    >>> res = crfkit.stereo.match("im0.png", "im1.png", max_disparity=64)   # doctest: +SKIP
    >>> res.disparity.shape, res.score, res.bound, res.gap                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ._validation import CRFShapeError, CRFTypeError, CRFValueError, check_gamma, fmt_shape
from .data.stereo import (
    StereoPair,
    StereoParams,
    bad_pixel_rate,
    build_stereo_crf,
    upsample_disparity,
    winner_take_all,
)

__all__ = [
    "StereoResult",
    "match",
    "check_pair",
    "check_scale",
    "load_image",
    "load_ground_truth",
    "evaluate",
    "IMAGE_SUFFIXES",
    "MAX_LABELS",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pnm", ".pbm")
MAX_LABELS = 512  # more labels than this is refused (memory: L x grid cost volume and chain messages)


@dataclass
class StereoResult:
    """The result of :func:`match`.

    Attributes:
        disparity: ``[H, W]`` float32, the CRF's disparity at full resolution (pixels).
        wta_disparity: ``[H, W]`` float32, winner-take-all on the same costs (for comparison).
        labels: ``[h, w]`` long, the CRF's labels on the grid (label ``l`` is ``l * step`` px).
        score: the labelling's score (maximised; the energy is ``-score``).
        bound: the certificate, an upper bound on the best possible score.
        gap: ``bound - score >= 0``: the labelling is at most this far from optimal.
        wta_score: the winner-take-all labelling's score.
        step: full-resolution disparity of one label step.
        factor: the grid's downscale factor (``1 / scale``).
        iterations: solver iterations run.
        timing: seconds per phase (``build``, ``solve``, ``total``).
        params: the energy's settings.
    """

    disparity: np.ndarray
    wta_disparity: np.ndarray
    labels: torch.Tensor
    score: float
    bound: float
    gap: float
    wta_score: float
    step: int
    factor: int
    iterations: int
    timing: dict = field(default_factory=dict)
    params: StereoParams | None = None

    @property
    def relative_gap(self) -> float:
        return self.gap / max(abs(self.score), 1e-12)


# ----------------------------------------------------------------------------- input


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file (PNG, JPEG, PPM/PGM, ...) via Pillow: ``[H, W]`` (grey) or ``[H, W, 3]``
    (colour) uint8; 16-bit images are scaled to 0..255, an alpha channel is dropped."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("reading images needs pillow: pip install 'crfkit[cli]'") from None
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise CRFValueError(f"expected an image file, got {p!r} (no such file)")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                return np.clip(np.round(arr / top * 255), 0, 255).astype(np.uint8)
            if im.mode in ("1", "LA", "La"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except (OSError, SyntaxError) as exc:  # Pillow's "cannot identify image file" and friends
        raise CRFValueError(f"expected a PNG/JPEG/PPM/PGM image in {p!r}, got an unreadable file ({exc})") from None


def load_ground_truth(path: str | os.PathLike, scale: float = 1.0) -> np.ndarray:
    """Ground-truth disparity ``[H, W]`` float32, ``inf`` where unknown.

    PFM (``.pfm``): the values as stored, non-finite = unknown (Middlebury 2014), then divided by
    ``scale``.  Other images (PNG/PGM, 8 or 16 bit): ``value / scale`` with 0 = unknown
    (Middlebury 2001-2006: e.g. ``scale = 4`` for quarter-size Teddy and Cones, ``8`` for Tsukuba).
    """
    s = _positive(scale, "gt scale")
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise CRFValueError(f"expected a ground-truth file, got {p!r} (no such file)")
    if p.lower().endswith(".pfm"):
        from .io.pfm import read_pfm

        d = np.asarray(read_pfm(p), dtype=np.float32)
        if d.ndim == 3:
            d = d[..., 0]
        d = np.where(np.isfinite(d), d / s, np.inf).astype(np.float32)
    else:
        try:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                raw = np.asarray(im, dtype=np.float64)
        except (OSError, SyntaxError) as exc:
            raise CRFValueError(
                f"expected a PFM, PNG or PGM disparity map in {p!r}, got an unreadable file ({exc})"
            ) from None
        if raw.ndim == 3:
            raw = raw[..., 0]
        d = np.where(raw > 0, raw / s, np.inf).astype(np.float32)
    if not np.isfinite(d).any():
        raise CRFValueError(f"expected some known ground-truth pixels in {p!r}, got none")
    return d


def _positive(x, name: str) -> float:
    if isinstance(x, bool):
        raise CRFTypeError(f"expected {name} a number > 0, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise CRFTypeError(f"expected {name} a number > 0, got {x!r}") from None
    if not (0 < v < math.inf):
        raise CRFValueError(f"expected {name} a finite number > 0, got {x!r}")
    return v


def check_scale(scale) -> int:
    """``scale`` (1, 0.5, 0.25, ...) -> the integer downscale factor ``1 / scale``."""
    s = _positive(scale, "scale")
    if s > 1:
        raise CRFValueError(f"expected scale in (0, 1] (e.g. 0.25 for quarter resolution), got {scale}")
    f = round(1 / s)
    if abs(1 / f - s) > 1e-6 * s:
        raise CRFValueError(f"expected scale = 1 / an integer (1, 0.5, 0.25, ...), got {scale}")
    return int(f)


def _as_image(img, name: str) -> np.ndarray:
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img)
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    if not isinstance(img, np.ndarray):
        raise CRFTypeError(f"expected {name} an image file or an array [H, W] or [H, W, 3], got {type(img).__name__}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise CRFShapeError(f"expected {name} of shape [H, W] or [H, W, 3], got {fmt_shape(img.shape)}")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise CRFTypeError(f"expected {name} with an integer or floating dtype, got {img.dtype}")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise CRFValueError(f"expected finite pixel values in {name}, got NaN or inf")
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] != 1 else img[..., 0]
    return img


def check_pair(left, right, max_disparity, scale=0.25) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Check a pair before any work: ``(left, right, max_disparity, factor)``.

    ``left``/``right``: image files or arrays ``[H, W]`` / ``[H, W, 3]`` of one shape (a grey
    view next to a colour one is made grey), at least ``2 * factor`` pixels each way (the grid
    needs 2 x 2 nodes), grey levels 0..255; ``max_disparity``: a number in ``(0, W)`` (full
    pixels); ``scale``: ``1 / factor``.
    """
    f = check_scale(scale)
    lft, rgt = _as_image(left, "left"), _as_image(right, "right")
    if lft.shape[:2] != rgt.shape[:2]:
        raise CRFShapeError(
            f"expected left and right of the same size, got {fmt_shape(lft.shape[:2])} and {fmt_shape(rgt.shape[:2])}"
        )
    if lft.ndim != rgt.ndim:  # one grey view, one colour view: compare grey levels
        lft = lft if lft.ndim == 2 else lft.astype(np.float32).mean(axis=2)
        rgt = rgt if rgt.ndim == 2 else rgt.astype(np.float32).mean(axis=2)
    H, W = lft.shape[:2]
    if H < 2 * f or W < 2 * f or min(H, W) < 4:
        raise CRFShapeError(
            f"expected images of at least {max(2 * f, 4)} x {max(2 * f, 4)} pixels at scale 1/{f}, got {W} x {H}"
        )
    D = _positive(max_disparity, "max_disparity")
    if D >= W:
        raise CRFValueError(f"expected max_disparity below the image width {W}, got {max_disparity}")
    return lft, rgt, D, f


def evaluate(disparity: np.ndarray, ground_truth: np.ndarray, thresholds=(1.0, 2.0, 4.0)) -> dict:
    """Bad-pixel rates ``{"bad_1px": ..., "bad_2px": ..., "bad_4px": ...}`` on known pixels."""
    return {f"bad_{t:g}px": bad_pixel_rate(disparity, ground_truth, t) for t in thresholds}


# ----------------------------------------------------------------------------- matching


def _int_in(value, name: str, lo: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CRFTypeError(f"expected {name} an integer >= {lo}, got {value!r}")
    if value < lo:
        raise CRFValueError(f"expected {name} an integer >= {lo}, got {value}")


def _check_solver_args(iters, gamma, stages, decode_every, icm_sweeps, callback) -> None:
    """The solver's arguments of :func:`match`, checked before the cost volume is built."""
    _int_in(iters, "iters", 1)
    _int_in(stages, "stages", 1)
    _int_in(decode_every, "decode_every", 0, allow_none=True)
    _int_in(icm_sweeps, "icm_sweeps", 0)
    if gamma is not None:
        check_gamma(gamma)
    if callback is not None and not callable(callback):
        raise CRFTypeError(f"expected callback a function or None, got {type(callback).__name__}")


def _energy_params(params, factor: int, max_disparity: float, overrides: dict) -> StereoParams:
    """``params`` (or the defaults) at the grid ``factor`` and ``max_disparity``, with the
    ``StereoParams`` fields in ``overrides``; checked: 2 to ``MAX_LABELS`` labels."""
    base = params if params is not None else StereoParams()
    if not isinstance(base, StereoParams):
        raise CRFTypeError(f"expected params a StereoParams, got {type(base).__name__}")
    unknown = set(overrides) - set(StereoParams.__dataclass_fields__)
    if unknown:
        raise CRFTypeError(f"expected StereoParams fields as keywords, got {sorted(unknown)}")
    p = replace(base, factor=factor, max_disparity=max_disparity, **overrides)
    L = p.labels()
    if not 2 <= L <= MAX_LABELS:
        raise CRFValueError(
            f"expected 2 to {MAX_LABELS} labels (max_disparity >= the label step {p.label_step()} px at scale "
            f"1/{factor}), got {L}"
        )
    return p


def match(
    left,
    right,
    max_disparity: float,
    *,
    scale: float = 0.25,
    params: StereoParams | None = None,
    iters: int = 100,
    gamma: float | None = 0.0,
    stages: int = 4,
    decode_every: int | None = 20,
    icm_sweeps: int = 1,
    callback: Callable[[dict], None] | None = None,
    **overrides,
) -> StereoResult:
    """Dense disparity of a rectified pair by a CRF solved with :func:`crfkit.solve_map`.

    Args:
        left, right: image files (PNG/JPEG/PPM/PGM) or arrays ``[H, W]`` / ``[H, W, 3]``
            (grey levels 0..255), of one size.
        max_disparity: the largest disparity searched, full-resolution pixels, ``0 < D < W``.
        scale: grid resolution, ``1 / integer`` (0.25 = quarter, default; 0.5; 1).
        params: a :class:`~crfkit.data.stereo.StereoParams` (its ``factor`` and
            ``max_disparity`` are replaced by ``scale`` and ``max_disparity``).
        iters, gamma, stages, decode_every, icm_sweeps, callback: passed to ``solve_map``
            (``gamma=0.0``: the max iteration with the adaptive step; ``None``: continuation).
        **overrides: fields of ``StereoParams`` (``smooth_weight=...``, ``truncation=...``).

    Returns a :class:`StereoResult` (disparity at full resolution, score, bound, gap, timing).
    """
    from .inference.dual_decomposition import solve_map

    t_start = time.perf_counter()
    _check_solver_args(iters, gamma, stages, decode_every, icm_sweeps, callback)
    lft, rgt, D, f = check_pair(left, right, max_disparity, scale)
    p = _energy_params(params, f, D, overrides)
    H, W = lft.shape[:2]
    crf, parts = build_stereo_crf(StereoPair(lft, rgt), p)
    step = parts["step"]
    wta = winner_take_all(crf.unary)
    t_build = time.perf_counter() - t_start
    t0 = time.perf_counter()
    res = solve_map(
        crf,
        iters=int(iters),
        gamma=gamma,
        stages=int(stages),
        icm_sweeps=int(icm_sweeps),
        decode_every=decode_every,
        callback=callback,
    )
    t_solve = time.perf_counter() - t0
    to_work = float(step) / f  # label -> working-resolution disparity; upsampling multiplies by f
    disp = upsample_disparity(res.labels[0].double().numpy() * to_work, f, (H, W)).astype(np.float32)
    wta_disp = upsample_disparity(wta[0].double().numpy() * to_work, f, (H, W)).astype(np.float32)
    return StereoResult(
        disparity=disp,
        wta_disparity=wta_disp,
        labels=res.labels[0],
        score=float(res.primal[0]),
        bound=float(res.dual[0]),
        gap=float(res.gap[0]),
        wta_score=float(crf.score(wta)[0]),
        step=int(step),
        factor=f,
        iterations=int(res.iterations),
        timing={"build": t_build, "solve": t_solve, "total": time.perf_counter() - t_start},
        params=p,
    )
