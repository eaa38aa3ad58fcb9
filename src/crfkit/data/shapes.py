"""A procedurally generated segmentation benchmark where context matters ("membrane shapes").

Each image (``size × size``, default 80) holds two or three non-overlapping objects —
rectangles and ellipses, 25–45 pixels across — on a noisy background.  Every object has
the same noisy body texture whatever its class; only a thin **membrane** along its border
(``membrane`` pixels thick) is coloured by the class (1 red, 2 green, 3 blue).  The label
covers the whole object (membrane and body); background is class 0.

A pixel deep inside an object therefore looks the same for every class: a network whose
receptive field does not reach the membrane can tell "object" from "background" but not
which object class.  The class is clear from the neighbourhood: the membrane around it.
A CRF with learned pairwise terms can carry the membrane's evidence across the body (the
chains of dual decomposition span whole rows and columns), which is what the benchmark
measures (baseline CNN vs the same CNN + CRF, same budget).

Everything is generated from ``(seed, split, index)``: no files, no downloads.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import CRFValueError
from .seeding import sample_seed

__all__ = ["ContextShapes", "generate_shapes_sample", "SHAPES_CLASSES", "ShapesTransform"]

SHAPES_CLASSES = ("background", "red", "green", "blue")

_BACKGROUND = np.array([0.42, 0.45, 0.52])
_BODY = np.array([0.82, 0.74, 0.40])
_MEMBRANE = np.array([[0.92, 0.18, 0.18], [0.20, 0.82, 0.22], [0.20, 0.32, 0.92]])
_SPLIT_SALT = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """4-neighbour erosion ``r`` times (pixels off the image count as outside)."""
    m = mask.copy()
    for _ in range(r):
        p = np.pad(m, 1, constant_values=False)
        m = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def generate_shapes_sample(
    rng: np.random.Generator,
    size: int = 80,
    *,
    num_objects=(2, 3),
    half_size=None,
    membrane: int = 2,
    noise: float = 0.10,
) -> tuple[np.ndarray, np.ndarray]:
    """One sample: ``image uint8 [size, size, 3]``, ``label uint8 [size, size]`` (classes 0..3).

    ``half_size``: the range of the objects' half-sizes; default ``(0.15, 0.275) * size``
    (12 to 22 pixels at the default 80).
    """
    if half_size is None:
        half_size = (max(3, round(0.15 * size)), max(4, round(0.275 * size)))
    img = _BACKGROUND + noise * rng.standard_normal((size, size, 3))
    label = np.zeros((size, size), dtype=np.uint8)
    occupied = np.zeros((size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    n = int(rng.integers(num_objects[0], num_objects[1] + 1))
    for _ in range(n):
        for _attempt in range(30):
            a, b = (int(v) for v in rng.integers(half_size[0], half_size[1] + 1, size=2))
            cy = int(rng.integers(a, size - a))
            cx = int(rng.integers(b, size - b))
            if rng.random() < 0.5:
                mask = (np.abs(yy - cy) <= a) & (np.abs(xx - cx) <= b)
            else:
                mask = ((yy - cy) / (a + 0.5)) ** 2 + ((xx - cx) / (b + 0.5)) ** 2 <= 1.0
            if not (mask & occupied).any():
                break
        else:
            continue
        cls = int(rng.integers(1, 4))
        occupied |= ~_erode(~mask, 2)  # the object dilated by 2: keep a gap to later objects
        inner = _erode(mask, membrane)
        ring = mask & ~inner
        img[inner] = _BODY + noise * rng.standard_normal((int(inner.sum()), 3))
        img[ring] = _MEMBRANE[cls - 1] + noise * rng.standard_normal((int(ring.sum()), 3))
        label[mask] = cls
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


class ShapesTransform:
    """Light augmentation for the shapes benchmark: random flips (training) and scaling to ``[-1, 1]``-ish."""

    def __init__(self, train: bool = True):
        self.train = train

    def __call__(self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator):
        img = image.float().div(255.0).sub(0.5).div(0.25)
        lab = label.long()
        if self.train:
            if float(torch.rand((), generator=g)) < 0.5:
                img, lab = img.flip(-1), lab.flip(-1)
            if float(torch.rand((), generator=g)) < 0.5:
                img, lab = img.flip(-2), lab.flip(-2)
        return img.contiguous(), lab.contiguous()


class ContextShapes(torch.utils.data.Dataset):
    """The membrane-shapes data set (see the module doc): 4 classes.

    Args:
        num_images: ``N`` samples in the split.
        size: image side.
        split: ``"train"`` | ``"val"`` | ``"test"`` (disjoint seeds).
        seed: data seed (the same seed gives the same images).
        transform: ``(image uint8 [3, H, W], label long [H, W], generator) -> (image, label)``;
            default :class:`ShapesTransform` (flips for ``train``).
        aug_seed: seed of the augmentations (with the epoch, see ``set_epoch``).
    """

    num_classes = 4
    class_names = SHAPES_CLASSES

    def __init__(
        self,
        num_images: int = 512,
        size: int = 80,
        split: str = "train",
        seed: int = 0,
        transform=None,
        aug_seed: int | None = None,
        **generator_kwargs,
    ):
        if split not in _SPLIT_SALT:
            raise CRFValueError(f"expected split in {tuple(_SPLIT_SALT)}, got {split!r}")
        if int(num_images) < 1 or int(size) < 16:
            raise CRFValueError(
                f"expected num_images >= 1 and size >= 16, got {num_images} and {size}"
            )
        self.num_images = int(num_images)
        self.size = int(size)
        self.split = split
        self.seed = int(seed)
        self.transform = (
            transform if transform is not None else ShapesTransform(train=(split == "train"))
        )
        self.aug_seed = self.seed if aug_seed is None else int(aug_seed)
        self.epoch = 0
        self.generator_kwargs = generator_kwargs
        self.name = f"shapes-{split}"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_images

    def ids(self) -> list[str]:
        return [f"{self.split}_{i:05d}" for i in range(self.num_images)]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, _SPLIT_SALT[self.split] + int(index)])
        img, lab = generate_shapes_sample(rng, self.size, **self.generator_kwargs)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(
            lab.astype(np.int64)
        )

    def __getitem__(self, index: int):
        img, lab = self.load(index)
        g = torch.Generator().manual_seed(sample_seed(self.aug_seed, self.epoch, index))
        return self.transform(img, lab, g)
