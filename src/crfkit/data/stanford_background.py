"""The Stanford Background data set (Gould et al. 2009) on-disk layout, and the BBPL paper's
segmentation features.

Layout (as distributed)::

    ROOT/images/<name>.jpg             RGB image, about 320 × 240
    ROOT/labels/<name>.regions.txt     one row of space-separated integers per image row:
                                       the semantic class 0..7 of each pixel, -1 = unknown

The data cannot be fetched here; :func:`write_synthetic_dataset` writes a small data set in the
same layout (for the tests and the demo).

Features (the paper's scheme, with a per-pixel classifier in place of the FCN it used): unary
features are a per-pixel classifier's class log-probabilities plus a bias; pairwise features are
a one-hot of the discretised L2 distance between the two pixels' unary features (``bins`` bins).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFValueError
from ..learning.models import LearningInstance
from .synthetic import grid_edges

__all__ = [
    "CLASSES",
    "SegmentationImage",
    "load_stanford_background",
    "write_synthetic_dataset",
    "PixelClassifier",
    "segmentation_instance",
]

CLASSES = ("sky", "tree", "road", "grass", "water", "building", "mountain", "foreground")


@dataclass
class SegmentationImage:
    """``image [H, W, 3]`` uint8, ``labels [H, W]`` long (-1 unknown), ``name``."""

    image: torch.Tensor
    labels: torch.Tensor
    name: str


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        raise ImportError("reading images needs pillow: pip install 'crfkit[cli]'") from None
    return Image


def read_regions(path: str) -> np.ndarray:
    """``[H, W]`` int64 labels from a ``*.regions.txt`` file (clear error with the line number)."""
    rows = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append([int(v) for v in line.split()])
            except ValueError:
                raise CRFValueError(
                    f"{path}:{ln}: expected integers (class labels), got {line[:40]!r}"
                ) from None
            if len(rows[-1]) != len(rows[0]):
                raise CRFValueError(
                    f"{path}:{ln}: expected {len(rows[0])} labels per row, got {len(rows[-1])}"
                )
    if not rows:
        raise CRFValueError(f"{path}: expected a label map, got an empty file")
    return np.asarray(rows, dtype=np.int64)


def load_stanford_background(
    root: str, *, names=None, max_images: int | None = None, downsample: int = 1
):
    """Load images and label maps from the Stanford Background layout under ``root``.

    Args:
        root: folder with ``images/`` and ``labels/``.
        names: image names to load (default: every ``images/*.jpg`` with a label file, sorted).
        max_images: keep the first this many.
        downsample: keep every ``downsample``-th pixel in each direction.

    Returns:
        list of :class:`SegmentationImage`.
    """
    Image = _pil()
    img_dir, lab_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    if not (os.path.isdir(img_dir) and os.path.isdir(lab_dir)):
        raise CRFValueError(
            f"expected folders images/ and labels/ under {root!r}, got {sorted(os.listdir(root)) if os.path.isdir(root) else 'no such folder'}"
        )
    if names is None:
        names = sorted(
            f[: -len(".jpg")]
            for f in os.listdir(img_dir)
            if f.endswith(".jpg")
            and os.path.exists(os.path.join(lab_dir, f[: -len(".jpg")] + ".regions.txt"))
        )
    if max_images is not None:
        names = names[:max_images]
    if not names:
        raise CRFValueError(
            f"expected at least one image with a label file under {root!r}, got none"
        )
    out = []
    for name in names:
        with Image.open(os.path.join(img_dir, name + ".jpg")) as im:
            img = np.asarray(im.convert("RGB"))
        lab = read_regions(os.path.join(lab_dir, name + ".regions.txt"))
        if lab.shape != img.shape[:2]:
            raise CRFValueError(
                f"{name}: expected labels of shape {img.shape[:2]} (the image's), got {lab.shape}"
            )
        if lab.min() < -1 or lab.max() >= len(CLASSES):
            raise CRFValueError(
                f"{name}: expected labels in [-1, {len(CLASSES) - 1}], got [{lab.min()}, {lab.max()}]"
            )
        s = max(1, int(downsample))
        out.append(
            SegmentationImage(
                torch.from_numpy(img[::s, ::s].copy()), torch.from_numpy(lab[::s, ::s].copy()), name
            )
        )
    return out


from ..io.atomic import atomic_write_bytes as _atomic_bytes  # noqa: E402


def write_synthetic_dataset(
    root: str, num_images: int = 6, height: int = 48, width: int = 64, seed: int = 0
) -> list[str]:
    """Write ``num_images`` generated scenes in the Stanford Background layout under ``root``.

    Each scene is horizontal bands (sky / mountain or building / grass or road / water) with a
    random foreground blob, each class with its own noisy colour; a few pixels are -1. Returns
    the names.
    """
    import io

    Image = _pil()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    palette = np.array(
        [
            [120, 170, 235],
            [40, 110, 40],
            [90, 90, 90],
            [90, 180, 70],
            [40, 80, 160],
            [160, 100, 80],
            [120, 110, 130],
            [200, 60, 60],
        ],
        dtype=np.float64,
    )
    names = []
    for k in range(num_images):
        lab = np.zeros((height, width), dtype=np.int64)
        h1 = int(height * rng.uniform(0.25, 0.4))
        h2 = int(height * rng.uniform(0.5, 0.65))
        h3 = int(height * rng.uniform(0.8, 0.9))
        lab[:h1] = 0
        lab[h1:h2] = rng.choice([5, 6, 1])
        lab[h2:h3] = rng.choice([3, 2])
        lab[h3:] = 4
        cy, cx, r = rng.integers(h1, height), rng.integers(0, width), rng.integers(4, 10)
        yy, xx = np.mgrid[:height, :width]
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 7
        img = palette[lab] + rng.normal(0, 25, (height, width, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        unknown = rng.random((height, width)) < 0.01
        lab[unknown] = -1
        name = f"{k:07d}"
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        _atomic_bytes(os.path.join(root, "images", name + ".jpg"), buf.getvalue())
        text = "\n".join(" ".join(str(v) for v in row) for row in lab) + "\n"
        _atomic_bytes(os.path.join(root, "labels", name + ".regions.txt"), text.encode())
        names.append(name)
    return names


def _pixel_inputs(img: torch.Tensor) -> torch.Tensor:
    """``[H W, 8]`` per-pixel inputs: RGB, 3×3-mean RGB, normalised row and column."""
    x = img.double().permute(2, 0, 1)[None] / 255.0  # [1, 3, H, W]
    mean = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1
    )
    H, W = img.shape[:2]
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, H, dtype=torch.float64),
        torch.linspace(0, 1, W, dtype=torch.float64),
        indexing="ij",
    )
    feats = torch.cat([x[0], mean[0], yy[None], xx[None]])  # [8, H, W]
    return feats.reshape(8, -1).T


class PixelClassifier:
    """Multinomial logistic regression on per-pixel colour and position (a stand-in for the FCN)."""

    def __init__(self, num_classes: int = len(CLASSES)):
        self.C = num_classes
        self.weight = None

    def _design(self, img):
        x = _pixel_inputs(img)
        return torch.cat([x, x**2, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # [HW, 17]

    def fit(self, images, l2: float = 1e-3, iters: int = 200) -> PixelClassifier:
        X = torch.cat([self._design(s.image) for s in images])
        y = torch.cat([s.labels.flatten() for s in images])
        keep = y >= 0
        X, y = X[keep], y[keep]
        w = torch.zeros(X.shape[1], self.C, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(X @ w, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight = w.detach()
        return self

    def log_probs(self, img) -> torch.Tensor:
        """``[H W, C]`` class log-probabilities."""
        return torch.log_softmax(self._design(img) @ self.weight, -1)


def segmentation_instance(
    sample: SegmentationImage,
    classifier: PixelClassifier,
    bins: int = 10,
    max_distance: float = 4.0,
):
    """A :class:`crfkit.LearningInstance` for one image: 4-connected grid, unary features = the
    classifier's log-probabilities and a bias (``F_u = C + 1``), pairwise features = one-hot of the
    L2 distance between the endpoints' unary features in ``bins`` bins over ``[0, max_distance]``
    plus a bias (``F_p = bins + 1``).  Unknown pixels (-1) take the classifier's label so that
    the example is fully observed."""
    H, W = sample.labels.shape
    lp = classifier.log_probs(sample.image).clamp(min=-20.0)  # [HW, C]
    fu = torch.cat([lp, torch.ones(H * W, 1, dtype=lp.dtype)], 1)
    edges = grid_edges(H, W)
    d = (lp[edges[:, 0]] - lp[edges[:, 1]]).norm(dim=1)
    b = (d / max_distance * bins).long().clamp(max=bins - 1)
    fp = torch.cat(
        [
            torch.nn.functional.one_hot(b, bins).to(lp.dtype),
            torch.ones(edges.shape[0], 1, dtype=lp.dtype),
        ],
        1,
    )
    lab = sample.labels.flatten().clone()
    unknown = lab < 0
    lab[unknown] = lp.argmax(-1)[unknown]
    return LearningInstance(edges, fu, fp, lab[None], grid_shape=(H, W), name=sample.name)
