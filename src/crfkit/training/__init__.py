"""End-to-end training of CNN+CRF segmentation networks: config, loops, checkpoints, DDP, metrics."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from .distributed import CPUSyncBatchNorm, convert_sync_batchnorm, init_distributed
from .loop import (
    build_datasets,
    build_model,
    evaluate,
    load_model,
    poly_lr,
    predict_images,
    save_label_png,
    train,
)
from .metrics import confusion_matrix, iou_from_confusion, segmentation_metrics

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "train",
    "evaluate",
    "predict_images",
    "save_label_png",
    "load_model",
    "build_model",
    "build_datasets",
    "poly_lr",
    "save_checkpoint",
    "load_checkpoint",
    "CPUSyncBatchNorm",
    "convert_sync_batchnorm",
    "init_distributed",
    "confusion_matrix",
    "iou_from_confusion",
    "segmentation_metrics",
]
