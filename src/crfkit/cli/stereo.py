"""``crfkit stereo [LEFT RIGHT]``: dense stereo on any rectified pair (default: the bundled
Middlebury motorcycle pair).

Builds a stereo CRF (census matching costs, contrast-sensitive truncated-linear smoothness on the
default stride-1 and stride-2 grid edges, weights per full-resolution pixel), solves it with
:func:`crfkit.solve_map` (dual decomposition into chains, with a certificate), and writes to
``--out``:

- ``disparity.pfm``: the CRF's disparity at full resolution (Middlebury's PFM format);
- ``disparity.png``: the same, colour-mapped, with a colour bar;
- ``side_by_side.png``: left image | ground truth (when there is one) | winner-take-all | CRF;
- ``report.json``: score, dual bound, gap, bad-pixel rates at 1, 2 and 4 px (with ground
  truth), iterations, times, every setting and a run id.

Every option is checked before any work.  The files are written into a fresh temporary folder
next to ``--out`` and moved in whole: ``--out`` holds all the files of one run or none.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["register", "run_stereo", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("disparity.pfm", "disparity.png", "report.json", "side_by_side.png")
BUNDLED_MAX_DISPARITY = 64  # the motorcycle's ground truth reaches 60 px

HELP = (
    "Dense stereo on a rectified pair: LEFT RIGHT image files (PNG, JPEG, PPM, PGM; colour or "
    "grey), or with no images the Middlebury motorcycle pair bundled with scikit-image."
    "\n\n"
    "The pair is downscaled by --scale (area averaging) for the CRF's grid. Matching costs: "
    "census of a 5x5 window (Hamming distance; insensitive to exposure differences between the "
    "views), computed at twice the grid's resolution (at most full) and averaged over each grid "
    "pixel. Smoothness: truncated linear min(|d_p - d_q|, truncation) on the stride-1 and "
    "stride-2 horizontal and vertical edges, weighted down across intensity edges. Every weight "
    "is per full-resolution pixel, so --scale changes the resolution, not the balance of data "
    "and smoothness. Labels: disparities 0 .. --max-disparity, one label per 1/cost-resolution "
    "pixels (coarser if there would be more than 96). The CRF is solved by dual decomposition "
    "into chains (crfkit.solve_map): the result carries a certificate, an upper bound on the "
    "best possible score, so the report states how far from optimal the labelling can be at "
    "most."
    "\n\n"
    "--max-disparity is required for your own pair (it is not estimated): the largest "
    "disparity in full-resolution pixels, below the image width (Middlebury gives it as ndisp "
    "in calib.txt). --gt FILE: ground truth to score against, a PFM (inf = unknown) or a "
    "PNG/PGM (0 = unknown) whose values are divided by --gt-scale (e.g. 4 for quarter-size "
    "Teddy/Cones, 8 for Tsukuba)."
    "\n\n"
    "Writes to --out (a new or empty folder, or one from an earlier run, which is replaced "
    "whole): disparity.pfm (full resolution, Middlebury's format), disparity.png (colour map "
    "with a colour bar), side_by_side.png (left image, ground truth if any, winner-take-all, "
    "CRF) and report.json (score, dual bound, gap; bad-pixel rates at 1, 2, 4 px with ground "
    "truth; iterations, time, settings, run id). The default weights were tuned on generated "
    "pairs (crfkit.data.stereo.synthetic_pair), not on the bundled pair."
)


MAX_THREADS = 1024  # torch's thread pool is created at this size: a typo like 10**6 must not reach it
MAX_SMOOTH_WEIGHT = 1e6  # far above any useful value (costs are <= 1 per pixel); keeps float32 weights finite

# numeric options: (name, lowest, lowest allowed?, highest); checked before any work
_NUMBER_BOUNDS = (
    ("smooth_weight", 0.0, True, MAX_SMOOTH_WEIGHT),
    ("truncation", 0.0, False, None),
    ("gt_scale", 0.0, False, None),
    ("max_disparity", 0.0, False, None),
)


def _fail(msg: str):
    from .._validation import CRFValueError

    raise CRFValueError(msg)


def _int_at_least(value, lo: int, name: str, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(f"expected {name} an integer >= {lo}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        _fail(
            f"expected {name} an integer in [{lo}, {hi}], got {value}"
            if hi
            else f"expected {name} >= {lo}, got {value}"
        )
    return int(value)


def _number_in(value, name: str, lo: float, lo_ok: bool, hi: float | None) -> None:
    flag = "--" + name.replace("_", "-")
    lo_txt = f"{'>=' if lo_ok else '>'} {lo:g}"
    want = f"a finite number {lo_txt}" if hi is None else f"a number {lo_txt} and <= {hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(f"expected {flag} {want}, got {value!r}")
    if (value < lo if lo_ok else value <= lo) or (hi is not None and value > hi):
        _fail(f"expected {flag} {want}, got {value:g}")


def _gamma_of(gamma) -> float | None:
    """``"auto"``, ``"continuation"`` or ``None`` -> ``None`` (solve_map's continuation);
    otherwise a number >= 0."""
    if gamma is None or (isinstance(gamma, str) and gamma.strip().lower() in ("auto", "continuation", "none")):
        return None
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"expected --gamma 'auto' or a number >= 0, got {gamma!r}") from None
    if not (g >= 0) or math.isinf(g):
        raise ValueError(f"expected --gamma 'auto' or a finite number >= 0, got {gamma!r}")
    return g


def _factor_of(scale, name: str) -> int:
    from ..stereo import check_scale

    try:
        return check_scale(scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc).replace("scale", name, 1)) from None


# ----------------------------------------------------------------------------- output folder


@dataclass
class _OutFolder:
    """Where a run writes: ``staging`` (a fresh folder beside ``final``), moved to ``final`` whole."""

    final: Path
    staging: Path
    created: list  # parent folders this run created (removed again if the run fails)

    def commit(self, run_id: str) -> None:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.staging, 0o777 & ~mask)  # mkdtemp makes 0700
        if self.final.is_dir() and any(self.final.iterdir()):
            old = self.final.parent / f".{self.final.name}.old-{run_id}"
            os.rename(self.final, old)
            try:
                os.rename(self.staging, self.final)
            except BaseException:  # put the old run back whole: never a folder with neither
                os.rename(old, self.final)
                raise
            if set(os.listdir(old)) <= set(OUTPUT_NAMES):
                shutil.rmtree(old, ignore_errors=True)
            else:  # something else appeared in --out during the run: keep it, never delete it
                sys.stderr.write(f"crfkit stereo: the previous contents of --out are kept in {old}\n")
        else:
            os.replace(self.staging, self.final)  # onto a missing or empty folder

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self.created):
            try:
                os.rmdir(folder)
            except OSError:
                break


def _prepare_out(out) -> _OutFolder:
    """Check ``--out`` and create the staging folder beside it (the writability probe)."""
    text = "" if out is None else os.fspath(out)
    if not text.strip():
        _fail(f"expected --out a folder path, got {text!r}")
    final = Path(os.path.abspath(os.path.expanduser(text)))
    if final.exists() and not final.is_dir():
        _fail(f"expected --out a folder, got {text!r}, which is an existing file")
    if final.is_dir():
        others = sorted(set(os.listdir(final)) - set(OUTPUT_NAMES))
        if others:
            shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
            _fail(
                f"expected --out a new or empty folder or one written by crfkit stereo, got {text!r} "
                f"holding other files ({shown})"
            )
    if final.parent == final:
        _fail(f"expected --out a folder below the file-system root, got {text!r}")
    anc = final.parent
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if not anc.is_dir():
        _fail(f"expected --out under a folder, got {text!r}, under the file {str(anc)!r}")
    created = []
    try:
        for folder in reversed([final.parent, *final.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                break
        _fail(f"expected a writable --out, got {text!r} ({exc.strerror or exc})")
    return _OutFolder(final, staging, created)


# ----------------------------------------------------------------------------- pictures


def _colourise(disp: np.ndarray, vmax: float, cmap: str = "turbo") -> np.ndarray:
    """``[H, W]`` disparities -> ``[H, W, 3]`` uint8; non-finite values black."""
    try:
        from matplotlib import colormaps
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("colour-mapped PNGs need matplotlib: pip install 'crfkit[cli]'") from None
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    ok = np.isfinite(disp)
    idx = np.clip(np.where(ok, disp, 0) / max(vmax, 1e-6) * 255, 0, 255).round().astype(np.int64)
    out = lut[idx]
    out[~ok] = 0
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _with_colour_bar(rgb: np.ndarray, vmax: float) -> np.ndarray:
    """``[H, W, 3]`` colour-mapped disparities with a colour bar (0 .. vmax px) below them."""
    from PIL import Image, ImageDraw

    H, W = rgb.shape[:2]
    band, margin = 46, max(8, W // 40)
    canvas = Image.new("RGB", (W, H + band), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (0, 0))
    ramp = np.linspace(0, vmax, max(W - 2 * margin, 2))[None, :].repeat(14, axis=0)
    canvas.paste(Image.fromarray(_colourise(ramp, vmax)), (margin, H + 4))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = margin + frac * (W - 2 * margin - 1)
        draw.line([(x, H + 18), (x, H + 22)], fill=(0, 0, 0))
        label = f"{frac * vmax:.0f}" + (" px" if frac == 1.0 else "")
        tw = draw.textlength(label, font=font)
        draw.text((min(max(x - tw / 2, 0), W - tw), H + 24), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _png_bytes(rgb: np.ndarray) -> bytes:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("PNG output needs pillow: pip install 'crfkit[cli]'") from None
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _side_by_side(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Panels ``[H, W, 3]`` uint8 in a row, each with its title on a bar above it."""
    from PIL import Image, ImageDraw

    H, W = panels[0][1].shape[:2]
    bar, gap = 34, 6
    canvas = Image.new("RGB", (len(panels) * W + (len(panels) - 1) * gap, H + bar), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    size = 22  # one size for every title, the largest at which the longest fits its panel
    while size > 8 and max(draw.textlength(t, font=_font(size)) for t, _ in panels) > W - 8:
        size -= 1
    font = _font(size)
    for i, (title, img) in enumerate(panels):
        x0 = i * (W + gap)
        canvas.paste(Image.fromarray(np.ascontiguousarray(img)), (x0, bar))
        draw.text((x0 + 4, 5), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]


# ----------------------------------------------------------------------------- the job


def _check_options(o: dict) -> dict:
    """Check every numeric option (before any work); returns the solver settings."""
    from ..stereo import MAX_LABELS

    _int_at_least(o["iters"], 1, "--iters")
    _int_at_least(o["stages"], 1, "--stages")
    _int_at_least(o["icm_sweeps"], 0, "--icm-sweeps")
    _int_at_least(o["threads"], 0, "--threads", MAX_THREADS)
    if o["decode_every"] is not None:
        _int_at_least(o["decode_every"], 0, "--decode-every")
    if o["labels"] is not None:
        _int_at_least(o["labels"], 2, "--labels", MAX_LABELS)
    for name, lo, lo_ok, hi in _NUMBER_BOUNDS:
        if o[name] is not None:
            _number_in(o[name], name, lo, lo_ok, hi)
    if o["cost"] not in ("census", "ad_census", "tad"):
        _fail(f"expected --cost census, ad_census or tad, got {o['cost']!r}")
    factor = _factor_of(o["scale"], "--scale")
    cost_factor = None
    if o["cost_scale"] is not None:
        cost_factor = _factor_of(o["cost_scale"], "--cost-scale")
        if factor % cost_factor != 0:
            _fail(
                f"expected --cost-scale >= --scale with (1/scale) divisible by (1/cost-scale), got "
                f"{o['cost_scale']} and {o['scale']}"
            )
    return {"factor": factor, "cost_factor": cost_factor, "gamma": _gamma_of(o["gamma"])}


def _load_inputs(left, right, max_disparity, gt, gt_scale, scale):
    """The pair, its max disparity and ground truth (checked): ``(StereoPair, D, name, inputs)``."""
    from ..data.stereo import StereoPair, load_motorcycle
    from ..stereo import check_pair, load_ground_truth, load_image

    if (left is None) != (right is None):
        _fail("expected both LEFT and RIGHT images, or neither (the bundled pair), got only one")
    if left is None:
        if gt is not None:
            _fail("expected --gt only with LEFT and RIGHT images (the bundled pair has its own)")
        pair = load_motorcycle()
        D = BUNDLED_MAX_DISPARITY if max_disparity is None else max_disparity
        lft, rgt, D, _ = check_pair(pair.left, pair.right, D, scale)
        return StereoPair(lft, rgt, pair.disparity, pair.name), D, {"left": None, "right": None, "gt": None}
    if max_disparity is None:
        _fail("expected --max-disparity PX for your own pair (the largest disparity, in pixels), got none")
    lft, rgt, D, _ = check_pair(load_image(left), load_image(right), max_disparity, scale)
    truth = None
    if gt is not None:
        truth = load_ground_truth(gt, gt_scale)
        if truth.shape != lft.shape[:2]:
            _fail(
                f"expected --gt of the images' size {lft.shape[1]} x {lft.shape[0]}, got "
                f"{truth.shape[1]} x {truth.shape[0]}"
            )
    name = os.path.basename(os.fspath(left))
    inputs = {"left": os.path.abspath(left), "right": os.path.abspath(right), "gt": gt and os.path.abspath(gt)}
    return StereoPair(lft, rgt, truth, name), D, inputs


def _write_outputs(folder: Path, pair, res, metrics: dict, D: float) -> None:
    from ..io.atomic import atomic_write_bytes
    from ..io.pfm import write_pfm

    gt = pair.disparity
    write_pfm(folder / "disparity.pfm", res.disparity)
    vmax = float(D)
    atomic_write_bytes(folder / "disparity.png", _png_bytes(_with_colour_bar(_colourise(res.disparity, vmax), vmax)))
    panels = [("left image", _as_rgb(pair.left))]
    wta_title, crf_title = "winner-take-all", "CRF (solve_map)"
    if gt is not None:
        panels.append(("ground truth (black: unknown)", _colourise(gt, vmax)))
        wta_title += f": {100 * metrics['wta']['bad_2px']:.1f}% bad > 2px"
        crf_title += f": {100 * metrics['crf']['bad_2px']:.1f}% bad > 2px"
    panels += [(wta_title, _colourise(res.wta_disparity, vmax)), (crf_title, _colourise(res.disparity, vmax))]
    atomic_write_bytes(folder / "side_by_side.png", _png_bytes(_side_by_side(panels)))


def _metrics(pair, res) -> dict:
    from ..stereo import evaluate

    crf = {
        "score": res.score,
        "dual_bound": res.bound,
        "gap": res.gap,
        "relative_gap": res.relative_gap,
    }
    wta = {"score": res.wta_score}
    out = {"wta": wta, "crf": crf, "ground_truth": pair.disparity is not None}
    if pair.disparity is not None:
        wta.update(evaluate(res.wta_disparity, pair.disparity))
        crf.update(evaluate(res.disparity, pair.disparity))
        out["ratio_bad_2px_crf_to_wta"] = crf["bad_2px"] / max(wta["bad_2px"], 1e-12)
    return out


def _report(pair, res, metrics, inputs, D, opts, solver, run_id, times) -> dict:
    import torch

    p = res.params
    H, W = res.disparity.shape
    return {
        "run_id": run_id,
        "data": pair.name,
        "inputs": inputs,
        "full_resolution": [H, W],
        "grid": list(res.labels.shape),
        "labels": p.labels(),
        "max_disparity_px": D,
        "disparity_step_px": res.step,
        **metrics,
        "iterations": res.iterations,
        "time_seconds": times,
        "settings": {
            "scale": 1.0 / res.factor,
            "cost_scale": 1.0 / p.resolved_cost_factor(),
            **{k: v for k, v in vars(p).items() if k not in ("offsets", "factor", "cost_factor")},
            "edge_weight_per_label": p.edge_weight(),
            "truncation_labels": p.truncation_labels(),
            "offsets": [list(o) for o in p.offsets],
            "solver": {
                "method": "crfkit.solve_map",
                "iters": int(opts["iters"]),
                "gamma": "continuation" if solver["gamma"] is None else solver["gamma"],
                "stages": int(opts["stages"]) if solver["gamma"] is None else None,
                "step": "adaptive",
                "decode": "icm",
                "decode_every": opts["decode_every"] or None,
                "icm_sweeps": int(opts["icm_sweeps"]),
            },
            "threads": torch.get_num_threads(),
        },
        "bad_pixel_definition": (
            "fraction of pixels with finite ground truth where |d - d_gt| > t, at full resolution (the grid's "
            "disparity nearest-neighbour upsampled)"
        ),
        "tuning_note": (
            "the energy's default weights were chosen on generated pairs (crfkit.data.stereo.synthetic_pair, "
            "textured layers and slanted planes with occlusions and exposure changes), not on this pair"
        ),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
    }


def run_stereo(
    out: str | os.PathLike,
    left: str | os.PathLike | None = None,
    right: str | os.PathLike | None = None,
    *,
    max_disparity: float | None = None,
    gt: str | os.PathLike | None = None,
    gt_scale: float = 1.0,
    scale: float = 0.25,
    cost_scale: float | None = None,
    labels: int | None = None,
    iters: int = 100,
    gamma: str | float = 0.0,
    stages: int = 4,
    decode_every: int | None = 20,
    icm_sweeps: int = 1,
    cost: str = "census",
    smooth_weight: float | None = None,
    truncation: float | None = None,
    threads: int | None = 1,
    progress: bool = True,
) -> dict:
    """Run the stereo job and write its files to ``out``; returns the report (a dict).

    Every argument is checked, the images read and ``out`` probed before any work; a bad one
    raises ``ValueError``/``TypeError`` and writes nothing.  See ``crfkit stereo --help``.
    """
    import torch

    from ..data.stereo import StereoParams

    t_start = time.perf_counter()
    opts = dict(locals())
    solver = _check_options(opts)
    pair, D, inputs = _load_inputs(left, right, max_disparity, gt, gt_scale, scale)
    overrides = {"cost": cost, "cost_factor": solver["cost_factor"], "num_labels": labels}
    if smooth_weight is not None:
        overrides["smooth_weight"] = float(smooth_weight)
    if truncation is not None:
        overrides["truncation"] = float(truncation)
    params = StereoParams(factor=solver["factor"], max_disparity=D, **overrides)
    from ..stereo import MAX_LABELS

    if params.labels() > MAX_LABELS:
        _fail(f"expected at most {MAX_LABELS} labels, got {params.labels()} (lower --max-disparity or --scale)")
    if params.labels() < 2:
        _fail(
            f"expected --max-disparity >= the label step {params.label_step()} px at --scale {1 / params.factor:g} "
            f"(at least 2 labels), got {D:g}"
        )
    folder = _prepare_out(out)
    t_load = time.perf_counter() - t_start
    try:
        if threads:
            torch.set_num_threads(int(threads))
            os.environ["CRFKIT_NUM_THREADS"] = str(int(threads))  # the solvers and compiled kernels too
        report = _solve_and_write(pair, D, params, folder, opts, solver, inputs, progress, t_start, t_load)
    except BaseException:
        folder.abandon()
        raise
    return report


def _solve_and_write(pair, D, params, folder, opts, solver, inputs, progress, t_start, t_load) -> dict:
    from ..stereo import match

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("the progress bar needs tqdm: pip install 'crfkit[cli]'") from None

    def say(msg: str):
        if progress:
            tqdm.write(msg, file=sys.stderr)

    H, W = pair.left.shape[:2]
    f = params.factor
    say(
        f"{pair.name}: {W}x{H}, disparities 0..{D:g} px; grid 1/{f} ({W // f}x{H // f}), {params.labels()} labels "
        f"of {params.label_step()} px"
    )
    bar = tqdm(total=int(opts["iters"]), desc="solve_map", unit="it", disable=not progress, file=sys.stderr)

    def callback(state: dict):
        bar.update(1)
        if state["iteration"] % 5 == 0:
            post = {"bound": f"{float(state['certificate'][0]):.1f}"}
            if math.isfinite(float(state["primal"][0])):
                post["score"] = f"{float(state['primal'][0]):.1f}"
            bar.set_postfix(post, refresh=False)

    decode_every = opts["decode_every"] or None
    res = match(
        pair.left,
        pair.right,
        D,
        scale=1.0 / f,
        params=params,
        iters=int(opts["iters"]),
        gamma=solver["gamma"],
        stages=int(opts["stages"]),
        decode_every=decode_every,
        icm_sweeps=int(opts["icm_sweeps"]),
        callback=callback,
    )
    bar.close()
    say("evaluating and writing files ...")
    metrics = _metrics(pair, res)
    _write_outputs(folder.staging, pair, res, metrics, D)
    run_id = uuid.uuid4().hex[:12]
    times = {"load": t_load, "build": res.timing["build"], "solve": res.timing["solve"]}
    report = _report(pair, res, metrics, inputs, D, opts, solver, run_id, times)
    report["time_seconds"]["total"] = time.perf_counter() - t_start
    from ..io.atomic import atomic_write_bytes

    atomic_write_bytes(folder.staging / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    folder.commit(run_id)
    bad = (
        f"bad pixels > 2 px: winner-take-all {100 * metrics['wta']['bad_2px']:.1f}%, CRF "
        f"{100 * metrics['crf']['bad_2px']:.1f}%; "
        if metrics["ground_truth"]
        else ""
    )
    say(
        f"{bad}score {res.score:.2f} <= optimum <= {res.bound:.2f} (gap {100 * res.relative_gap:.2f}%); "
        f"{report['time_seconds']['total']:.1f} s; files in {folder.final}"
    )
    return report


def _run_from_command_line(args: dict) -> None:
    """Run the command's arguments ``args`` (its ``locals()``); a bad one: one line on stderr, exit 2."""
    import typer

    quiet = args.pop("quiet")
    out, left, right = args.pop("out"), args.pop("left"), args.pop("right")
    try:
        run_stereo(out, left, right, **args, progress=not quiet)
    except (ValueError, TypeError, OSError) as exc:
        msg = " ".join(str(exc).split())
        typer.echo(f"crfkit stereo: error: {msg}", err=True)
        raise typer.Exit(2) from None


def register(app) -> None:
    """Add the ``stereo`` command to the ``crfkit`` typer app."""
    import typer

    @app.command("stereo", help=HELP)
    def stereo(
        left: str | None = typer.Argument(None, help="Left image (PNG/JPEG/PPM/PGM). Omit both for the bundled pair."),
        right: str | None = typer.Argument(None, help="Right image, the same size as LEFT."),
        out: str = typer.Option(
            ..., "--out", help="Folder for disparity.pfm, disparity.png, side_by_side.png, report.json."
        ),
        max_disparity: float | None = typer.Option(
            None,
            "--max-disparity",
            help="Largest disparity, full-resolution pixels (required with LEFT RIGHT; bundled pair: 64).",
        ),
        gt: str | None = typer.Option(
            None, "--gt", help="Ground-truth disparity: PFM (inf = unknown) or PNG/PGM (0 = unknown)."
        ),
        gt_scale: float = typer.Option(
            1.0, "--gt-scale", help="Divide the ground truth's values by this (e.g. 4 or 8)."
        ),
        scale: float = typer.Option(
            0.25, "--scale", help="Grid resolution as a fraction of the images': 1, 0.5, 0.25 (default), ..."
        ),
        cost_scale: float | None = typer.Option(
            None, "--cost-scale", help="Resolution of the matching costs (>= --scale). Default: 2 x scale, at most 1."
        ),
        labels: int | None = typer.Option(
            None, "--labels", help="Number of disparity labels (2..512). Default: from --max-disparity."
        ),
        iters: int = typer.Option(100, "--iters", help="Iterations of solve_map (each: one pass over every chain)."),
        gamma: str = typer.Option(
            "0",
            "--gamma",
            help="Smoothing of solve_map: 0 (default: the max iteration), 'auto' (continuation) or a number.",
        ),
        stages: int = typer.Option(4, "--stages", help="Stages of the continuation (with --gamma auto), >= 1."),
        decode_every: int = typer.Option(
            20,
            "--decode-every",
            help="Decode a labelling every so many iterations (0: only at stage ends and the end).",
        ),
        icm_sweeps: int = typer.Option(1, "--icm-sweeps", help="Sweeps of chain-wise ICM at each decoding, >= 0."),
        cost: str = typer.Option("census", "--cost", help="Matching cost: census (default), ad_census or tad."),
        smooth_weight: float | None = typer.Option(
            None,
            "--smooth-weight",
            help="Smoothness per full-resolution pixel pair and pixel of disparity jump (default 0.4).",
        ),
        truncation: float | None = typer.Option(
            None, "--truncation", help="Truncation of the linear smoothness, in full-resolution pixels (default 8)."
        ),
        threads: int = typer.Option(
            1, "--threads", help="torch intra-op threads, 0..1024 (default 1; 0: torch's default)."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or messages."),
    ):
        _run_from_command_line(dict(locals()))
