"""Segmentation metrics: confusion matrix, per-class IoU, mean IoU, pixel accuracy."""

from __future__ import annotations

import torch

from .._validation import CRFShapeError

__all__ = ["confusion_matrix", "iou_from_confusion", "segmentation_metrics"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``[L, L]`` int64 counts, rows = true class, columns = predicted; ``ignore_index`` pixels skipped.

    Args:
        pred: ``[...]`` long predictions in ``[0, L)``.
        target: ``[...]`` long labels (same shape) in ``[0, L)`` or ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise CRFShapeError(
            f"expected pred and target of the same shape, got {list(pred.shape)} and {list(target.shape)}"
        )
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """``[L]`` float64 IoU per class: ``TP / (TP + FP + FN)``; NaN where the class never occurs
    nor is predicted."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def segmentation_metrics(conf: torch.Tensor, class_names=()) -> dict:
    """``{"miou", "iou" (list, NaN -> None), "pixel_acc", "class_names"}`` from a confusion matrix.
    The mean IoU averages the classes that occur (or are predicted)."""
    iou = iou_from_confusion(conf)
    valid = ~torch.isnan(iou)
    miou = float(iou[valid].mean()) if bool(valid.any()) else float("nan")
    total = float(conf.sum())
    return {
        "miou": miou,
        "iou": [None if v != v else float(v) for v in iou.tolist()],
        "pixel_acc": float(conf.diag().sum()) / total if total > 0 else float("nan"),
        "class_names": list(class_names),
    }
