"""Train, evaluate and predict: the loops behind ``crfkit segment train|eval|predict``.

One training step reads one *global* batch (``train.batch_size`` images) split evenly over
the processes; the loss is the cross-entropy over every labelled pixel of the global batch
(label 255 ignored), so ``N`` processes take exactly the step that one process holding the
global batch takes.  The data order is a permutation per epoch drawn from
``(train.seed, epoch)`` and every augmentation from ``(seed, epoch, index)``: a run resumed
from step ``k`` sees the same batches it would have seen.

Files in the output folder:

- ``checkpoint.pt`` — the latest checkpoint (every ``train.checkpoint_every`` steps and at the
  end), written atomically; ``--resume`` continues from it (weights, optimiser state, step,
  random state; the schedule and the data order follow from the step);
- ``config.toml`` — the configuration of the run;
- ``log.csv`` — one row per ``train.log_every`` steps (step, epoch, lr, loss, seconds);
- ``metrics.json`` / ``eval.csv`` — mIoU and per-class IoU of each evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import CRFValueError
from .checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, save_checkpoint
from .config import Config
from .distributed import DistInfo, all_reduce_sum, convert_sync_batchnorm, init_distributed
from .metrics import confusion_matrix, segmentation_metrics

__all__ = [
    "build_model",
    "build_datasets",
    "poly_lr",
    "train",
    "evaluate",
    "predict_images",
    "save_label_png",
    "load_model",
]

IGNORE_INDEX = 255


# ---------------------------------------------------------------------------- builders
def build_model(cfg: Config) -> nn.Module:
    from ..nn.segmentation import build_segmentation_model

    m = cfg.model
    return build_segmentation_model(
        m.num_classes,
        backbone=m.backbone,
        head=m.head,
        crf_iters=m.crf_iters,
        crf_gamma=m.crf_gamma,
        offsets=[tuple(o) for o in m.offsets],
        pairwise_form=m.pairwise_form,
        pairwise_rank=m.pairwise_rank,
        pairwise_init_std=m.pairwise_init_std,
        pretrained_backbone=m.pretrained_backbone,
        backbone_weights=m.backbone_weights or None,
        output_stride=m.output_stride,
        small_width=m.small_width,
        small_channels=m.small_channels,
    )


def build_datasets(cfg: Config, *, train: bool = True, val: bool = True):
    """``(train_ds, val_ds)`` from ``cfg.data`` (either may be ``None`` when not asked for / not set)."""
    from ..data.segmentation import EvalTransform, TrainTransform, build_dataset

    d = cfg.data
    if d.name == "shapes":
        from ..data.shapes import ContextShapes

        tr = (
            ContextShapes(
                d.shapes_train_images,
                d.shapes_size,
                "train",
                seed=d.shapes_seed,
                aug_seed=cfg.train.seed,
            )
            if train
            else None
        )
        va = (
            ContextShapes(d.shapes_val_images, d.shapes_size, "val", seed=d.shapes_seed)
            if val and d.val_split
            else None
        )
        return tr, va
    def from_disk(split: str, transform):
        return build_dataset(
            d.name, split, transform, root=d.root or None, sbd_root=d.sbd_root or None, seed=cfg.train.seed
        )

    tr = va = None
    if train:
        tt = TrainTransform(
            crop_size=d.crop_size,
            scale_range=(d.scale_min, d.scale_max),
            rotation_degrees=d.rotation,
            hflip=d.hflip,
            brightness=d.brightness,
            contrast=d.contrast,
            saturation=d.saturation,
        )
        tr = from_disk(d.train_split, tt)
    if val and d.val_split:
        va = from_disk(d.val_split, EvalTransform(pad_to=d.eval_pad_to or None))
    return tr, va


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """The "poly" schedule: ``base_lr * (1 - step / total) ** power``."""
    return base_lr * max(0.0, 1.0 - step / max(1, total)) ** power


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _autocast(device: torch.device, cfg: Config):
    if device.type == "cuda" and cfg.train.amp:
        dtype = torch.float16 if cfg.train.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


class _GlobalBatches:
    """The rank's share of each global batch of an epoch, from position ``start`` on."""

    def __init__(
        self, n: int, global_batch: int, info: DistInfo, seed: int, epoch: int, start: int
    ):
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        self.perm = torch.randperm(n, generator=g).tolist()
        self.global_batch = global_batch
        self.per_rank = global_batch // info.world_size
        self.rank = info.rank
        self.start = start
        self.steps = n // global_batch

    def __iter__(self):
        for b in range(self.start, self.steps):
            chunk = self.perm[b * self.global_batch : (b + 1) * self.global_batch]
            yield chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def __len__(self):
        return self.steps - self.start


_RESUME_KEYS = ("model", "optim")


def _check_resume(saved: dict, cfg: Config) -> None:
    now = cfg.to_dict()
    for section in _RESUME_KEYS:
        if saved.get(section) != now[section]:
            raise CRFValueError(
                f"--resume: the checkpoint's {section} config differs from this run's "
                f"(checkpoint {saved.get(section)}, now {now[section]}); resume with the same configuration"
            )
    for key in ("batch_size", "seed", "steps"):
        if saved["train"].get(key) != now["train"][key]:
            raise CRFValueError(
                f"--resume: train.{key} was {saved['train'].get(key)}, now {now['train'][key]}"
            )


def _config_toml(cfg: Config) -> str:
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- training
def train(
    cfg: Config,
    out_dir: str,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    evaluate_at_end: bool = True,
) -> dict:
    """Train ``cfg`` into ``out_dir``; returns a summary (final step, loss, metrics if evaluated).

    ``resume=True`` continues from ``out_dir/checkpoint.pt``.  ``stop_after`` stops (without a
    final checkpoint, as a run that dies) after that many steps in total — for tests.
    Started by ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel.
    """
    info = init_distributed(cfg.train.device)
    device = info.device
    if cfg.train.batch_size % info.world_size != 0:
        raise CRFValueError(
            f"expected train.batch_size divisible by the number of processes {info.world_size}, "
            f"got {cfg.train.batch_size}"
        )
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    log_path = os.path.join(out_dir, "log.csv")

    # the data first: a missing data set fails before a large model is built
    train_ds, val_ds = build_datasets(
        cfg, train=True, val=evaluate_at_end or cfg.train.eval_every > 0
    )
    model, opt, scaler = _build_training(cfg, info, device)
    step = _restore(ckpt_path, cfg, model, opt, scaler, device) if resume else 0
    if info.is_main:
        atomic_write_text(os.path.join(out_dir, "config.toml"), _config_toml(cfg))
        _prepare_log(log_path, step)
    ddp = model
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    G = cfg.train.batch_size
    steps_per_epoch = len(train_ds) // G
    if steps_per_epoch < 1:
        raise CRFValueError(
            f"expected at least one global batch of {G} images, got a data set of {len(train_ds)}"
        )
    total = cfg.train.steps
    bar = _progress(total, step, info.is_main and cfg.train.progress, "train")
    t0 = time.perf_counter()
    last_loss = float("nan")
    summary: dict = {"out_dir": out_dir}
    while step < total and (stop_after is None or step < stop_after):
        epoch, pos = divmod(step, steps_per_epoch)
        for images, labels in _epoch_loader(train_ds, cfg, info, device, epoch, pos):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            lr = poly_lr(cfg.optim.lr, step, total, cfg.optim.poly_power)
            last_loss = _train_step(ddp, opt, scaler, images, labels, lr, cfg, info, device)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            if info.is_main and (step % max(1, cfg.train.log_every) == 0 or step == total):
                _append_log(log_path, [step, epoch, lr, last_loss, time.perf_counter() - t0])
            _periodic(out_dir, ckpt_path, model, opt, scaler, step, cfg, info, device, val_ds)
    if bar is not None:
        bar.close()
    summary.update(step=step, loss=last_loss)
    if stop_after is not None and step < total:
        return summary
    _save(ckpt_path, model, opt, scaler, step, cfg, info, device)
    if evaluate_at_end and val_ds is not None:
        m = evaluate(model, val_ds, cfg.model.num_classes, device, cfg=cfg, info=info)
        if info.is_main:
            _record_eval(out_dir, step, m)
        summary["metrics"] = m
    return summary


def _build_training(cfg: Config, info: DistInfo, device: torch.device):
    """The model (same initial weights on every process; synchronised batch norm under DDP when
    configured), its SGD optimiser and the gradient scaler (float16 autocast on CUDA only)."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every process
    model = build_model(cfg)
    if info.distributed and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        nesterov=cfg.optim.nesterov,
    )
    use_scaler = device.type == "cuda" and cfg.train.amp and cfg.train.amp_dtype == "float16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    return model, opt, scaler


def _restore(ckpt_path: str, cfg: Config, model, opt, scaler, device: torch.device) -> int:
    """Load the checkpoint of a run to resume (weights, optimiser, scaler, random state) after
    checking that the settings that shape the run did not change; returns its step."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    state = load_checkpoint(ckpt_path, map_location=device)
    _check_resume(state["config"], cfg)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
    return int(state["step"])


def _epoch_loader(train_ds, cfg: Config, info: DistInfo, device: torch.device, epoch: int, pos: int):
    """This process's share of the global batches of ``epoch``, from batch ``pos`` on."""
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(epoch)
    sampler = _GlobalBatches(len(train_ds), cfg.train.batch_size, info, cfg.train.seed, epoch, pos)
    return torch.utils.data.DataLoader(
        train_ds,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )


def _train_step(ddp, opt, scaler, images, labels, lr: float, cfg: Config, info: DistInfo, device) -> float:
    """One optimiser step at learning rate ``lr`` on the cross-entropy over every labelled pixel of
    the global batch; returns that loss (per labelled pixel, summed over processes)."""
    for group in opt.param_groups:
        group["lr"] = lr
    ddp.train()
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with _autocast(device, cfg):
        logits = ddp(images)
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    counts = all_reduce_sum(
        torch.stack(
            [(labels != IGNORE_INDEX).sum().to(torch.float64), ce.detach().double()]
        )
    )
    n_valid = counts[0].clamp_min(1.0)
    loss = (
        ce / n_valid.to(ce.dtype) * info.world_size
    )  # DDP averages gradients over processes
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(counts[1] / n_valid)


def _periodic(out_dir, ckpt_path, model, opt, scaler, step: int, cfg: Config, info: DistInfo, device, val_ds) -> None:
    """The checkpoint every ``train.checkpoint_every`` and the evaluation every ``train.eval_every``
    steps (not at the last step: the end of :func:`train` does both)."""
    total = cfg.train.steps
    if cfg.train.checkpoint_every > 0 and step % cfg.train.checkpoint_every == 0 and step < total:
        _save(ckpt_path, model, opt, scaler, step, cfg, info, device)
    if cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0 and step < total and val_ds is not None:
        m = evaluate(model, val_ds, cfg.model.num_classes, device, cfg=cfg, info=info)
        if info.is_main:
            _record_eval(out_dir, step, m)


def _save(path, model, opt, scaler, step, cfg, info, device) -> None:
    if not info.is_main:
        return
    state = {
        "format": 1,
        "step": int(step),
        "model": _unwrap(model).state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "config": cfg.to_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    save_checkpoint(path, state)


_LOG_HEADER = ["step", "epoch", "lr", "loss", "seconds"]


def _prepare_log(path: str, step: int) -> None:
    """A fresh log, or on resume the old one cut back to the checkpoint's step (atomically)."""
    rows = []
    if step > 0 and os.path.isfile(path):
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh)][1:]
        rows = [r for r in rows if r and int(r[0]) <= step]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_LOG_HEADER)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _append_log(path: str, row) -> None:
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow([f"{v:.8g}" if isinstance(v, float) else v for v in row])


def _record_eval(out_dir: str, step: int, m: dict) -> None:
    atomic_write_text(
        os.path.join(out_dir, "metrics.json"), json.dumps({"step": step, **m}, indent=2)
    )
    path = os.path.join(out_dir, "eval.csv")
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["step", "miou", "pixel_acc"] + [f"iou_{i}" for i in range(len(m["iou"]))])
        w.writerow([step, m["miou"], m["pixel_acc"]] + ["" if v is None else v for v in m["iou"]])


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    cfg: Config | None = None,
    info: DistInfo | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``dataset`` (label 255 ignored).

    With several processes each evaluates every ``world_size``-th image and the confusion
    matrices are summed.
    """
    device = torch.device(device)
    info = info or DistInfo(device=device)
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    bs = batch_size or (cfg.train.eval_batch_size if cfg is not None else 1)
    idx = list(range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, idx), batch_size=bs, shuffle=False
    )
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    bar = _progress(len(loader), 0, progress and info.is_main, "eval")
    for images, labels in loader:
        with _autocast(device, cfg) if cfg is not None else contextlib.nullcontext():
            logits = model(images.to(device))
        pred = logits.argmax(1).cpu()
        conf += confusion_matrix(pred, labels, num_classes, IGNORE_INDEX)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    conf = all_reduce_sum(conf.to(device)).cpu()
    model.train(was_training)
    return segmentation_metrics(conf, getattr(dataset, "class_names", ()))


# ---------------------------------------------------------------------------- prediction
def save_label_png(label, path: str, palette: list[int] | None = None) -> None:
    """Write ``label [H, W]`` (class indices) as a palette PNG, atomically."""
    import numpy as np

    from ..data.segmentation import voc_palette

    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "writing PNG predictions needs pillow: pip install 'crfkit[cli]'"
        ) from exc
    arr = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(np.uint8)
    im = Image.fromarray(arr)
    im.putpalette(palette or voc_palette())  # an "L" image with a palette becomes "P"
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: list[str],
    out_dir: str,
    device: torch.device | str = "cpu",
    *,
    mean=None,
    std=None,
    progress: bool = False,
) -> list[str]:
    """Segment image files; write ``<out_dir>/<name>.png`` palette PNGs; return the written paths."""
    from ..data.segmentation import IMAGENET_MEAN, IMAGENET_STD, normalise, read_image

    device = torch.device(device)
    model = _unwrap(model).eval().to(device)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    bar = _progress(len(paths), 0, progress, "predict")
    for p in paths:
        img = torch.from_numpy(read_image(p)).permute(2, 0, 1).float().div(255.0)
        img = normalise(img, mean or IMAGENET_MEAN, std or IMAGENET_STD)
        pred = model(img[None].to(device)).argmax(1)[0]
        out = os.path.join(out_dir, os.path.splitext(os.path.basename(p))[0] + ".png")
        save_label_png(pred, out)
        written.append(out)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return written


def load_model(
    checkpoint: str, cfg: Config | None = None, device="cpu"
) -> tuple[nn.Module, Config]:
    """The model of a checkpoint (its own config unless ``cfg`` is given), in eval mode."""
    state = load_checkpoint(checkpoint, map_location=device)
    cfg = cfg or Config.from_dict(state["config"])
    model = build_model(cfg)
    sd = state["model"]
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg
