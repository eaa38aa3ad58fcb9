"""Training configuration: the paper's recipe as defaults, TOML files, ``key=value`` overrides.

A configuration has four sections (``model``, ``data``, ``optim``, ``train``); a TOML file
sets any subset of their fields and ``--set section.field=value`` overrides on the command
line (values are parsed as TOML, falling back to a string: ``optim.lr=0.01``,
``model.offsets=[[0,1],[1,0]]``, ``data.root=/data/voc``).  An unknown key is an error.

Defaults (the paper, Sec. 6): SGD with momentum 0.9, learning rate 0.007 with the poly
schedule (power 0.9) over 30,000 steps, weight decay 1e-4, batch 16 with synchronised
batch norm, colour jitter, scaling 0.5–1.5, flips, rotation ±10°, 513×513 crops, cross-
entropy ignoring 255, ResNet-50 at output stride 16 with the block4 head.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields

from .._validation import CRFTypeError, CRFValueError

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "validate_config",
]


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet50 | xception65 | small
    head: str = "block4"  # block4 | aspp | none
    num_classes: int = 21
    crf_iters: int = 0  # x of +xFPI; 0 = the baseline
    crf_gamma: float = 1.0
    offsets: list = field(default_factory=lambda: [[0, 1], [1, 0], [0, 2], [2, 0]])
    pairwise_form: str = "full"  # full | weighted | lowrank
    pairwise_rank: int = 4
    pairwise_init_std: float = 1e-3
    pretrained_backbone: bool = False  # ImageNet weights (torchvision / timm cache); never required
    backbone_weights: str = ""  # a local state-dict file for the ResNet-50 backbone
    output_stride: int = 16
    sync_bn: bool = True  # synchronised batch norm when training on several processes
    small_width: int = 32
    small_channels: int = 64


@dataclass
class DataConfig:
    name: str = "voc"  # voc | voc_train_aug | sbd | stanford_background | shapes
    root: str = ""
    sbd_root: str = ""
    train_split: str = "train_aug"
    val_split: str = "val"
    crop_size: int = 513
    scale_min: float = 0.5
    scale_max: float = 1.5
    rotation: float = 10.0
    hflip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    num_workers: int = 4
    eval_pad_to: int = 0  # pad eval images to this size (0: batch size 1 at full size)
    # the procedurally generated benchmark (name = "shapes")
    shapes_train_images: int = 1024
    shapes_val_images: int = 256
    shapes_size: int = 80
    shapes_seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    nesterov: bool = False


@dataclass
class TrainConfig:
    steps: int = 30000
    batch_size: int = 16  # the global batch, split over processes
    eval_batch_size: int = 1
    seed: int = 0
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0: evaluate at the end only
    log_every: int = 10
    amp: bool = True  # mixed precision on GPUs (the CRF stays float32); ignored on the CPU
    amp_dtype: str = "bfloat16"  # bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        cfg = cls()
        _merge(cfg, d, "")
        return validate_config(cfg)


#: Accepted values of the fields that name a choice.
CHOICES = {
    "model.backbone": ("resnet50", "xception65", "small"),
    "model.head": ("block4", "aspp", "none"),
    "model.pairwise_form": ("full", "weighted", "lowrank"),
    "model.output_stride": (8, 16, 32),
    "data.name": ("voc", "voc_train_aug", "sbd", "stanford_background", "shapes"),
    "train.amp_dtype": ("bfloat16", "float16"),
    "train.device": ("auto", "cpu", "cuda"),
}

#: Lowest accepted value of the numeric fields (``(low, True)``: strictly above ``low``); every
#: float must be finite too. Fields not listed (seeds) take any integer.
LOWEST = {
    "model.num_classes": (2, False), "model.crf_iters": (0, False), "model.crf_gamma": (0, False),
    "model.pairwise_rank": (1, False), "model.pairwise_init_std": (0, False),
    "model.small_width": (1, False), "model.small_channels": (1, False),
    "data.crop_size": (1, False), "data.scale_min": (0, True), "data.scale_max": (0, True),
    "data.rotation": (0, False), "data.brightness": (0, False), "data.contrast": (0, False),
    "data.saturation": (0, False), "data.num_workers": (0, False), "data.eval_pad_to": (0, False),
    "data.shapes_train_images": (1, False), "data.shapes_val_images": (1, False), "data.shapes_size": (8, False),
    "optim.lr": (0, True), "optim.momentum": (0, False), "optim.weight_decay": (0, False),
    "optim.poly_power": (0, False),
    "train.steps": (1, False), "train.batch_size": (1, False), "train.eval_batch_size": (1, False),
    "train.checkpoint_every": (0, False), "train.eval_every": (0, False), "train.log_every": (0, False),
}


#: Highest accepted value of the fields that size an allocation (a generated image's side).
HIGHEST = {"data.shapes_size": 4096, "data.crop_size": 8192}


def validate_config(cfg: Config) -> Config:
    """Refuse values out of range (a negative learning rate, an unknown backbone, NaN, ...) with a
    one-line error naming the key; returns ``cfg``."""
    from ..models.grid import check_offsets

    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise CRFValueError(f"expected {key} in {allowed}, got {value!r}")
    for key, (low, strict) in LOWEST.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        bad = value != value or value in (float("inf"), float("-inf")) or value < low or (strict and value == low)
        if bad:
            rng = (f"> {low}" if strict else f">= {low}") + (" and finite" if isinstance(value, float) else "")
            raise CRFValueError(f"expected {key} {rng}, got {value!r}")
    for key, high in HIGHEST.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value > high:
            raise CRFValueError(f"expected {key} <= {high}, got {value!r}")
    if cfg.data.scale_max < cfg.data.scale_min:
        raise CRFValueError(
            f"expected data.scale_min <= data.scale_max, got {cfg.data.scale_min} > {cfg.data.scale_max}"
        )
    if not cfg.optim.momentum < 1:
        raise CRFValueError(f"expected optim.momentum in [0, 1), got {cfg.optim.momentum!r}")
    try:
        check_offsets(cfg.model.offsets)
    except ValueError as exc:  # CRFTypeError / CRFValueError, named here
        raise type(exc)(f"model.offsets: {exc}") from None
    return cfg


def _coerce(value, current, key: str):
    kind = type(current)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise CRFTypeError(f"expected a boolean for {key}, got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, list) and isinstance(value, (list, tuple)):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CRFTypeError(
            f"expected {kind.__name__} for {key}, got {type(value).__name__} {value!r}"
        )
    return value


def _merge(cfg: Config, d: dict, source: str) -> None:
    for section, values in d.items():
        if section not in {f.name for f in fields(Config)}:
            raise CRFValueError(
                f"unknown config section {section!r}{source}; expected one of model, data, optim, train"
            )
        if not isinstance(values, dict):
            raise CRFTypeError(
                f"expected a table for config section {section!r}{source}, got {type(values).__name__}"
            )
        sub = getattr(cfg, section)
        names = {f.name for f in fields(sub)}
        for k, v in values.items():
            if k not in names:
                raise CRFValueError(
                    f"unknown config key {section}.{k}{source}; expected one of {sorted(names)}"
                )
            setattr(sub, k, _coerce(v, getattr(sub, k), f"{section}.{k}"))


def _toml():
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError(
                "reading TOML configs on Python 3.10 needs tomli: pip install tomli"
            ) from exc
    return tomllib


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``section.key=value`` overrides."""
    cfg = Config()
    if path:
        if not isinstance(path, (str, os.PathLike)):
            raise CRFTypeError(f"expected the config path as a string, got {type(path).__name__} {path!r}")
        if not os.path.isfile(path):
            what = "a folder, not a file" if os.path.isdir(path) else "not found"
            raise FileNotFoundError(f"config file {what}: {path}")
        tomllib = _toml()
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            table = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise CRFValueError(f"expected a UTF-8 TOML config file, got undecodable bytes in {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise CRFValueError(f"expected a TOML config file, got invalid TOML in {path}: {exc}") from None
        _merge(cfg, table, f" in {path}")
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as TOML, else taken as strings)."""
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model),
        data=dataclasses.replace(cfg.data),
        optim=dataclasses.replace(cfg.optim),
        train=dataclasses.replace(cfg.train),
    )
    if isinstance(overrides, (str, bytes)) or not all(isinstance(o, str) for o in overrides):
        raise CRFTypeError(f"expected overrides as a list of 'section.key=value' strings, got {overrides!r}")
    tomllib = _toml()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise CRFValueError(f"expected an override 'section.key=value', got {item!r}")
        key, raw = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except Exception:
            value = raw
        sub = getattr(cfg, section, None)
        if (
            sub is not None
            and isinstance(getattr(sub, name, None), str)
            and not isinstance(value, str)
        ):
            value = raw.strip()
        _merge(cfg, {section: {name: value}}, f" (override {item!r})")
    return validate_config(cfg)
