"""``crfkit segment train|eval|predict``: CNN+CRF semantic segmentation (the paper's Sec. 6).

    crfkit segment train configs/voc_resnet50_block4_15fpi.toml --set data.root=/data/voc \\
        --set data.sbd_root=/data/sbd --out runs/r50-15fpi
    crfkit segment train configs/voc_resnet50_block4_15fpi.toml --out runs/r50-15fpi --resume
    torchrun --nproc_per_node=8 -m crfkit.cli.main segment train CONFIG --out DIR   # DDP
    crfkit segment eval runs/r50-15fpi/checkpoint.pt
    crfkit segment predict runs/r50-15fpi/checkpoint.pt img1.jpg img2.jpg --out preds/

    crfkit segment train configs/shapes_cpu_crf.toml --out runs/shapes-crf   # the CPU benchmark
"""

from __future__ import annotations

import json
import os

import typer

HELP = "CNN+CRF semantic segmentation: train, evaluate, predict (the paper's DeepLabV3 + dual decomposition)."


def _normalisation(cfg):
    if cfg.data.name == "shapes":
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    from ..data.segmentation import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def _check_out_file(out: str) -> None:
    """Refuse an ``--out`` file path that cannot be written (empty, a folder, under a missing folder)."""
    from .._validation import CRFValueError

    if not out.strip() or os.path.isdir(out):
        raise CRFValueError(f"expected --out a file path, got {out!r}" + (", a folder" if out.strip() else ""))
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise CRFValueError(f"expected --out in a writable folder, got {out!r} ({parent!r} is not one)")


def _clean_errors(fn):
    """Show a user error (missing data, bad config) as one line and exit with status 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, ValueError, TypeError, ImportError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _load_state(checkpoint: str) -> dict:
    """The checkpoint's saved state, or a one-line error naming the file when it is not a crfkit
    checkpoint (not a torch file, truncated, or without ``model`` and ``config``)."""
    import pickle

    from .._validation import CRFValueError
    from ..training.checkpoint import load_checkpoint

    if os.path.isdir(checkpoint):
        raise CRFValueError(f"expected a checkpoint file (checkpoint.pt of a run), got a folder: {checkpoint}")
    try:
        state = load_checkpoint(checkpoint)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        kind = "an empty or truncated file" if isinstance(exc, EOFError) else "a file torch cannot read"
        raise CRFValueError(
            f"expected a crfkit checkpoint (checkpoint.pt of a run), got {kind}: {checkpoint}"
        ) from None
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        raise CRFValueError(
            f"expected a crfkit checkpoint (a dict with 'model' and 'config'), got another torch file: {checkpoint}"
        )
    return state


def _load_model(checkpoint: str, cfg, device: str):
    """``load_model`` with one-line errors for a file that is not a crfkit checkpoint of this model."""
    from .._validation import CRFValueError
    from ..training import load_model

    _load_state(checkpoint)
    try:
        return load_model(checkpoint, cfg, device)
    except (RuntimeError, KeyError) as exc:  # load_state_dict: the weights do not fit the config
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CRFValueError(
            f"expected a checkpoint whose weights fit its config, got {checkpoint} ({first})"
        ) from None


def register(app: typer.Typer) -> None:
    seg = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
    seg.command("train")(_train_cmd)
    seg.command("eval")(_eval_cmd)
    seg.command("predict")(_predict_cmd)
    app.add_typer(seg, name="segment")


@_clean_errors
def _train_cmd(
    config: str | None = typer.Argument(
        None, help="TOML config file (the paper's recipe where unset)"
    ),
    out: str = typer.Option(
        "runs/segment", "--out", help="output folder: checkpoint.pt, log.csv, metrics.json"
    ),
    set_: list[str] = typer.Option(  # noqa: B008 (typer reads defaults)
        [], "--set", help="override: section.key=value (repeatable)"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out from its checkpoint"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the evaluation at the end"),
):
    """Train a segmentation model (DDP when started by torchrun)."""
    from ..training import load_config, train
    from .main import check_out_folder

    cfg = load_config(config, list(set_))
    check_out_folder(out)
    cfg.train.progress = cfg.train.progress and progress
    summary = train(cfg, out, resume=resume, evaluate_at_end=not no_eval)
    m = summary.get("metrics")
    if m is not None and int(os.environ.get("RANK", "0")) == 0:
        typer.echo(
            f"step {summary['step']}: mIoU {100 * m['miou']:.2f}  pixel acc {100 * m['pixel_acc']:.2f}"
        )


@_clean_errors
def _eval_cmd(
    checkpoint: str = typer.Argument(..., help="checkpoint.pt of a run"),
    config: str | None = typer.Option(
        None, "--config", help="config file (default: the checkpoint's)"
    ),
    set_: list[str] = typer.Option(  # noqa: B008
        [], "--set", help="override: section.key=value (e.g. data.val_split=val)"
    ),
    out: str | None = typer.Option(None, "--out", help="write the metrics as JSON here"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """mIoU and per-class IoU on the validation split."""
    import torch

    from ..training import (
        Config,
        apply_overrides,
        build_datasets,
        evaluate,
        load_config,
    )
    from ..training.checkpoint import atomic_write_text

    if out is not None:
        _check_out_file(out)
    state = _load_state(checkpoint)
    cfg = (
        load_config(config, list(set_))
        if config
        else apply_overrides(Config.from_dict(state["config"]), list(set_))
    )
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    model, cfg = _load_model(checkpoint, cfg, device)
    _, val = build_datasets(cfg, train=False)
    if val is None:
        raise typer.BadParameter("no validation split configured (data.val_split)")
    m = evaluate(model, val, cfg.model.num_classes, device, cfg=cfg, progress=progress)
    names = m["class_names"] or [str(i) for i in range(len(m["iou"]))]
    for name, v in zip(names, m["iou"]):
        typer.echo(f"  {name:14s} {'-' if v is None else f'{100 * v:.2f}'}")
    typer.echo(f"mIoU {100 * m['miou']:.2f}  pixel acc {100 * m['pixel_acc']:.2f}")
    if out:
        atomic_write_text(out, json.dumps(m, indent=2))


@_clean_errors
def _predict_cmd(
    checkpoint: str = typer.Argument(..., help="checkpoint.pt of a run"),
    images: list[str] = typer.Argument(..., help="image files"),  # noqa: B008
    out: str = typer.Option(
        "predictions", "--out", help="folder for <name>.png palette images"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Segment images; write palette PNGs (PASCAL VOC colours)."""
    import torch

    from .._validation import CRFValueError
    from ..training import predict_images
    from .main import check_out_folder

    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise CRFValueError(f"expected image files, got {len(missing)} that are not files: {missing[0]!r}")
    check_out_folder(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = _load_model(checkpoint, None, device)
    mean, std = _normalisation(cfg)
    written = predict_images(model, images, out, device, mean=mean, std=std, progress=progress)
    typer.echo(f"wrote {len(written)} predictions to {out}")
