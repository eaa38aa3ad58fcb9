"""Semantic segmentation data sets in their real on-disk layouts, and the paper's augmentations.

Layouts read (nothing is downloaded; point ``root`` at an existing copy):

- **PASCAL VOC 2012**: ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
  ImageSets/Segmentation/{train,val,trainval}.txt}``; labels are palette PNGs whose indices
  are the classes (0 background, 1..20 objects, 255 boundary / void).  ``root`` may be the
  folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC2012``.
- **SBD** (Hariharan et al.): ``benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat,
  train.txt, val.txt}``; ``cls/<id>.mat`` holds a MATLAB struct ``GTcls`` whose
  ``Segmentation`` field is the ``[H, W]`` class map (reading needs scipy).
- **train_aug** (10,582 images with the full data sets): VOC ``train`` ∪ SBD ``train`` ∪
  SBD ``val`` minus VOC ``val``.  Labels: ``VOC2012/SegmentationClassAug/<id>.png`` when
  that folder exists (the common pre-converted form), else VOC's own PNG for images of
  VOC ``train``, else SBD's ``.mat``.
- **Stanford Background** (Gould et al. 2009): ``iccv09Data/{images/<id>.jpg,
  labels/<id>.regions.txt}``; ``regions.txt`` holds one integer per pixel, 0..7 (sky, tree,
  road, grass, water, building, mountain, foreground object) and -1 for unknown (read as
  255).  There is no official split: ``split="train" | "val"`` is a seeded 80/20 split of
  the sorted ids, ``"all"`` every image.

A missing data set raises :class:`DatasetNotFoundError`; a half-present one (split lists
ids whose files are missing, an empty folder) raises :class:`DatasetIncompleteError`,
naming what is missing.

Samples are ``(image, label)``: ``image [3, H, W]`` float (normalised), ``label [H, W]``
long with ``255`` = ignore.  Augmentations are drawn from a generator seeded by
``(seed, epoch, index)`` (:meth:`SegmentationDataset.set_epoch`), so a run resumed from a
checkpoint sees exactly the same crops.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .._validation import CRFValueError
from .seeding import sample_seed
from .shapes import ContextShapes

__all__ = [
    "DatasetNotFoundError",
    "DatasetIncompleteError",
    "SegmentationDataset",
    "TrainTransform",
    "EvalTransform",
    "VOC_CLASSES",
    "STANFORD_BACKGROUND_CLASSES",
    "IGNORE_INDEX",
    "voc_palette",
    "voc_dataset",
    "sbd_dataset",
    "voc_train_aug_dataset",
    "stanford_background_dataset",
    "read_image",
    "read_png_label",
    "read_sbd_label",
    "read_regions_label",
    "sample_seed",
    "build_dataset",
]

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
STANFORD_BACKGROUND_CLASSES = (
    "sky",
    "tree",
    "road",
    "grass",
    "water",
    "building",
    "mountain",
    "foreground",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """The data set is not where it was looked for (the message says where and what layout)."""


class DatasetIncompleteError(DatasetNotFoundError):
    """The data set is only partly present: listed files are missing or a folder is empty."""


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list (``3 * num_colors``)."""
    pal = []
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


# ---------------------------------------------------------------------------- readers
def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("reading images needs pillow: pip install 'crfkit[cli]'") from exc
    return Image


def read_image(path: str) -> np.ndarray:
    """An RGB image as ``uint8 [H, W, 3]``."""
    Image = _pil()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_png_label(path: str) -> np.ndarray:
    """A class-index PNG (palette or greyscale) as ``uint8 [H, W]`` (palette indices, not colours)."""
    Image = _pil()
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise CRFValueError(
                f"expected a palette ('P') or greyscale ('L') label PNG at {path}, got mode {im.mode!r}"
            )
        return np.asarray(im, dtype=np.uint8).copy()


def read_sbd_label(path: str) -> np.ndarray:
    """SBD's ``cls/<id>.mat`` (struct ``GTcls``, field ``Segmentation``) as ``uint8 [H, W]``."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("reading SBD's .mat labels needs scipy: pip install scipy") from exc
    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise DatasetIncompleteError(
            f"expected a struct 'GTcls' in SBD label {path}, got keys {sorted(k for k in mat if not k.startswith('__'))}"
        )
    seg = np.asarray(mat["GTcls"].Segmentation)
    if seg.ndim != 2:
        raise DatasetIncompleteError(
            f"expected GTcls.Segmentation of shape [H, W] in {path}, got {list(seg.shape)}"
        )
    return seg.astype(np.uint8)


def read_regions_label(path: str) -> np.ndarray:
    """Stanford Background ``<id>.regions.txt`` (ints, -1 unknown) as ``uint8 [H, W]`` (-1 -> 255).

    Parsed by :func:`crfkit.data.stanford_background.read_regions` (one reader for the format).
    """
    from .stanford_background import read_regions

    arr = read_regions(path)
    arr[arr < 0] = IGNORE_INDEX
    return arr.astype(np.uint8)


# ---------------------------------------------------------------------------- the data set
class SegmentationDataset(torch.utils.data.Dataset):
    """A list of ``(image path, label reader)`` items with a transform.

    Args:
        items: ``N`` pairs ``(image_path, (reader, label_path))``.
        transform: ``(image uint8 [3, H, W], label long [H, W], generator) -> (image, label)``.
        num_classes: ``L``.
        class_names: ``L`` names.
        seed: base seed of the augmentations.
    """

    def __init__(
        self,
        items,
        transform=None,
        *,
        num_classes: int,
        class_names: Sequence[str] = (),
        seed: int = 0,
        name: str = "",
    ):
        self.items = list(items)
        self.transform = transform
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names)
        self.seed = int(seed)
        self.epoch = 0
        self.name = name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def ids(self) -> list[str]:
        return [os.path.splitext(os.path.basename(p))[0] for p, _ in self.items]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw sample: ``image uint8 [3, H, W]``, ``label long [H, W]``."""
        img_path, (reader, lab_path) = self.items[index]
        img = read_image(img_path)
        lab = reader(lab_path)
        if img.shape[:2] != lab.shape:
            raise DatasetIncompleteError(
                f"expected image and label of the same size, got image {list(img.shape[:2])} ({img_path}) "
                f"and label {list(lab.shape)} ({lab_path})"
            )
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(
            lab.astype(np.int64)
        )

    def __getitem__(self, index: int):
        img, lab = self.load(index)
        if self.transform is None:
            return img, lab
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        return self.transform(img, lab, g)


def _first_dir(candidates: Sequence[str], must_contain: str, what: str, layout: str) -> str:
    for c in candidates:
        if os.path.isdir(os.path.join(c, must_contain)):
            return c
    tried = ", ".join(repr(c) for c in candidates)
    raise DatasetNotFoundError(
        f"{what} not found: expected the layout {layout}; looked for {must_contain!r} in {tried}. "
        "It cannot be downloaded by crfkit: download it yourself and pass its folder."
    )


def _read_split(path: str, what: str) -> list[str]:
    if not os.path.isfile(path):
        raise DatasetIncompleteError(f"{what}: expected the split file {path}, which is missing")
    with open(path) as fh:
        ids = [line.split()[0] for line in fh if line.strip()]
    if not ids:
        raise DatasetIncompleteError(
            f"{what}: expected ids in the split file {path}, got an empty file"
        )
    return ids


def _check_items(items, what: str) -> None:
    missing = [p for img, (_, lab) in items for p in (img, lab) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetIncompleteError(
            f"{what} is incomplete: {len(missing)} listed files are missing ({len(items)} samples); first: {shown}"
        )


def _voc_dir(root: str) -> str:
    return _first_dir(
        [os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root],
        "JPEGImages",
        "PASCAL VOC 2012",
        "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}",
    )


def _sbd_dir(root: str) -> str:
    return _first_dir(
        [os.path.join(root, "benchmark_RELEASE", "dataset"), os.path.join(root, "dataset"), root],
        "cls",
        "SBD",
        "benchmark_RELEASE/dataset/{img,cls,train.txt,val.txt}",
    )


def voc_dataset(
    root: str, split: str = "train", transform=None, *, seed: int = 0
) -> SegmentationDataset:
    """PASCAL VOC 2012 segmentation ``split`` (``train`` | ``val`` | ``trainval``): 21 classes."""
    base = _voc_dir(root)
    what = f"PASCAL VOC 2012 ({base})"
    for sub in ("SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        if not os.path.isdir(os.path.join(base, sub)):
            raise DatasetIncompleteError(
                f"{what}: expected the folder {os.path.join(base, sub)}, which is missing"
            )
    ids = _read_split(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"), what)
    items = [
        (
            os.path.join(base, "JPEGImages", f"{i}.jpg"),
            (read_png_label, os.path.join(base, "SegmentationClass", f"{i}.png")),
        )
        for i in ids
    ]
    _check_items(items, f"{what} split {split!r}")
    return SegmentationDataset(
        items, transform, num_classes=21, class_names=VOC_CLASSES, seed=seed, name=f"voc-{split}"
    )


def sbd_dataset(
    root: str, split: str = "train", transform=None, *, seed: int = 0
) -> SegmentationDataset:
    """SBD ``split`` (``train`` | ``val``) with its ``cls/*.mat`` labels: 21 classes."""
    base = _sbd_dir(root)
    what = f"SBD ({base})"
    if not os.path.isdir(os.path.join(base, "img")):
        raise DatasetIncompleteError(
            f"{what}: expected the folder {os.path.join(base, 'img')}, which is missing"
        )
    ids = _read_split(os.path.join(base, f"{split}.txt"), what)
    items = [
        (
            os.path.join(base, "img", f"{i}.jpg"),
            (read_sbd_label, os.path.join(base, "cls", f"{i}.mat")),
        )
        for i in ids
    ]
    _check_items(items, f"{what} split {split!r}")
    return SegmentationDataset(
        items, transform, num_classes=21, class_names=VOC_CLASSES, seed=seed, name=f"sbd-{split}"
    )


def voc_train_aug_dataset(
    voc_root: str, sbd_root: str, transform=None, *, seed: int = 0
) -> SegmentationDataset:
    """VOC 2012 ``train_aug``: VOC train ∪ SBD train ∪ SBD val, minus VOC val (10,582 images)."""
    voc = _voc_dir(voc_root)
    sbd = _sbd_dir(sbd_root)
    seg_dir = os.path.join(voc, "ImageSets", "Segmentation")
    voc_train = _read_split(os.path.join(seg_dir, "train.txt"), f"PASCAL VOC 2012 ({voc})")
    voc_val = set(_read_split(os.path.join(seg_dir, "val.txt"), f"PASCAL VOC 2012 ({voc})"))
    sbd_ids = _read_split(os.path.join(sbd, "train.txt"), f"SBD ({sbd})") + _read_split(
        os.path.join(sbd, "val.txt"), f"SBD ({sbd})"
    )
    voc_train_set = set(voc_train)
    ids = sorted((voc_train_set | set(sbd_ids)) - voc_val)
    aug_dir = os.path.join(voc, "SegmentationClassAug")
    has_aug = os.path.isdir(aug_dir)
    items = []
    for i in ids:
        img = os.path.join(voc, "JPEGImages", f"{i}.jpg")
        if not os.path.isfile(img):
            img = os.path.join(sbd, "img", f"{i}.jpg")
        if has_aug:
            lab = (read_png_label, os.path.join(aug_dir, f"{i}.png"))
        elif i in voc_train_set:
            lab = (read_png_label, os.path.join(voc, "SegmentationClass", f"{i}.png"))
        else:
            lab = (read_sbd_label, os.path.join(sbd, "cls", f"{i}.mat"))
        items.append((img, lab))
    _check_items(items, f"VOC train_aug (VOC {voc}, SBD {sbd})")
    return SegmentationDataset(
        items, transform, num_classes=21, class_names=VOC_CLASSES, seed=seed, name="voc-train_aug"
    )


def stanford_background_dataset(
    root: str,
    split: str = "train",
    transform=None,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> SegmentationDataset:
    """Stanford Background (``iccv09Data``): 8 classes, 715 images of about 320×240.

    ``split``: ``"train"`` | ``"val"`` (a seeded split of the sorted ids, ``val_fraction`` in val)
    | ``"all"``.
    """
    if split not in ("train", "val", "all"):
        raise CRFValueError(f"expected split in ('train', 'val', 'all'), got {split!r}")
    base = _first_dir(
        [os.path.join(root, "iccv09Data"), root],
        "images",
        "Stanford Background",
        "iccv09Data/{images/<id>.jpg, labels/<id>.regions.txt}",
    )
    what = f"Stanford Background ({base})"
    lab_dir = os.path.join(base, "labels")
    if not os.path.isdir(lab_dir):
        raise DatasetIncompleteError(f"{what}: expected the folder {lab_dir}, which is missing")
    ids = sorted(
        os.path.splitext(f)[0]
        for f in os.listdir(os.path.join(base, "images"))
        if f.lower().endswith(".jpg")
    )
    if not ids:
        raise DatasetIncompleteError(
            f"{what}: expected .jpg images in {os.path.join(base, 'images')}, got none"
        )
    if split != "all":
        order = list(ids)
        random.Random(split_seed).shuffle(order)
        n_val = max(1, int(round(len(order) * float(val_fraction)))) if len(order) > 1 else 0
        chosen = set(order[:n_val]) if split == "val" else set(order[n_val:])
        ids = [i for i in ids if i in chosen]
    items = [
        (
            os.path.join(base, "images", f"{i}.jpg"),
            (read_regions_label, os.path.join(lab_dir, f"{i}.regions.txt")),
        )
        for i in ids
    ]
    _check_items(items, f"{what} split {split!r}")
    return SegmentationDataset(
        items,
        transform,
        num_classes=8,
        class_names=STANFORD_BACKGROUND_CLASSES,
        seed=seed,
        name=f"stanford-{split}",
    )


# ---------------------------------------------------------------------------- transforms
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


@dataclass
class TrainTransform:
    """The paper's augmentations, in this order: colour jitter (brightness, contrast,
    saturation), normalisation, random scaling, random rotation, horizontal flip, padding
    (image 0 = the mean colour, label 255) and a random ``crop_size`` crop.

    ``(image uint8 [3, H, W], label long [H, W], generator) -> (image float [3, S, S], label long [S, S])``.
    """

    crop_size: int = 513
    scale_range: tuple[float, float] = (0.5, 1.5)
    rotation_degrees: float = 10.0
    hflip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator):
        img = image.float().div(255.0)
        img = colour_jitter(img, g, self.brightness, self.contrast, self.saturation)
        img = normalise(img, self.mean, self.std)
        lab = label.long()
        lo, hi = self.scale_range
        s = _uniform(g, lo, hi)
        if s != 1.0:
            H, W = lab.shape
            size = (max(1, round(H * s)), max(1, round(W * s)))
            img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
            lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.rotation_degrees > 0:
            angle = _uniform(g, -self.rotation_degrees, self.rotation_degrees)
            img, lab = rotate(img, lab, angle, self.ignore_index)
        if self.hflip and float(torch.rand((), generator=g)) < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return random_crop(img, lab, self.crop_size, g, self.ignore_index)


@dataclass
class EvalTransform:
    """Normalisation only (full image); with ``pad_to`` the image is padded (0) and the label
    padded (255) to at least ``pad_to × pad_to``, so that images batch together."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_to: int | None = None
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator | None = None):
        img = normalise(image.float().div(255.0), self.mean, self.std)
        lab = label.long()
        if self.pad_to:
            img, lab = pad_to(img, lab, self.pad_to, self.pad_to, self.ignore_index)
        return img, lab


def normalise(img: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=img.dtype)[:, None, None]
    s = torch.tensor(std, dtype=img.dtype)[:, None, None]
    return (img - m) / s


def colour_jitter(
    img: torch.Tensor, g: torch.Generator, brightness: float, contrast: float, saturation: float
) -> torch.Tensor:
    """``img [3, H, W]`` in ``[0, 1]``: random brightness, contrast and saturation factors in ``1 ± strength``."""
    grey_w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype)[:, None, None]
    if brightness > 0:
        img = img * _uniform(g, 1 - brightness, 1 + brightness)
    if contrast > 0:
        m = (img * grey_w).sum(0).mean()
        img = (img - m) * _uniform(g, 1 - contrast, 1 + contrast) + m
    if saturation > 0:
        grey = (img * grey_w).sum(0, keepdim=True)
        img = (img - grey) * _uniform(g, 1 - saturation, 1 + saturation) + grey
    return img.clamp(0.0, 1.0)


def rotate(img: torch.Tensor, lab: torch.Tensor, degrees: float, ignore_index: int = IGNORE_INDEX):
    """Rotate about the centre by ``degrees``: image bilinear (outside -> 0), label nearest (outside -> ignore)."""
    if degrees == 0:
        return img, lab
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32)[None]
    H, W = lab.shape
    grid = F.affine_grid(theta, [1, 1, H, W], align_corners=False)
    img = F.grid_sample(
        img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    shifted = (lab + 1).float()[None, None]  # 0 marks "outside"
    lab_r = (
        F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[
            0, 0
        ]
        .round()
        .long()
        - 1
    )
    lab_r[lab_r < 0] = ignore_index
    return img, lab_r


def pad_to(img: torch.Tensor, lab: torch.Tensor, h: int, w: int, ignore_index: int = IGNORE_INDEX):
    """Pad on the bottom and right to at least ``h × w`` (image with 0, label with ``ignore_index``)."""
    H, W = lab.shape
    ph, pw = max(0, h - H), max(0, w - W)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        lab = F.pad(lab, (0, pw, 0, ph), value=ignore_index)
    return img, lab


def random_crop(
    img: torch.Tensor,
    lab: torch.Tensor,
    size: int,
    g: torch.Generator,
    ignore_index: int = IGNORE_INDEX,
):
    img, lab = pad_to(img, lab, size, size, ignore_index)
    H, W = lab.shape
    y = int(torch.randint(0, H - size + 1, (), generator=g))
    x = int(torch.randint(0, W - size + 1, (), generator=g))
    return img[:, y : y + size, x : x + size].contiguous(), lab[
        y : y + size, x : x + size
    ].contiguous()


def build_dataset(
    name: str,
    split: str,
    transform: Callable | None,
    *,
    root: str | None = None,
    sbd_root: str | None = None,
    seed: int = 0,
    **kwargs,
) -> torch.utils.data.Dataset:
    """A data set by name: ``voc`` | ``voc_train_aug`` | ``sbd`` | ``stanford_background`` | ``shapes``."""
    if name == "shapes":
        return ContextShapes(split=split, transform=transform, seed=seed, **kwargs)
    if root is None:
        raise CRFValueError(f"expected a data root for data set {name!r}, got none (set data.root)")
    if name == "voc":
        if split == "train_aug":
            return voc_train_aug_dataset(root, sbd_root or root, transform, seed=seed)
        return voc_dataset(root, split, transform, seed=seed)
    if name == "voc_train_aug":
        return voc_train_aug_dataset(root, sbd_root or root, transform, seed=seed)
    if name == "sbd":
        return sbd_dataset(root, split, transform, seed=seed)
    if name == "stanford_background":
        return stanford_background_dataset(root, split, transform, seed=seed)
    raise CRFValueError(
        f"expected a data set name in ('voc', 'voc_train_aug', 'sbd', 'stanford_background', 'shapes'), got {name!r}"
    )
