"""Data set loaders on small data sets generated in the real on-disk layouts; broken ones fail clearly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from crfkit.data.segmentation import (
    DatasetIncompleteError,
    DatasetNotFoundError,
    EvalTransform,
    TrainTransform,
    read_png_label,
    rotate,
    sbd_dataset,
    stanford_background_dataset,
    voc_dataset,
    voc_palette,
    voc_train_aug_dataset,
)
from crfkit.data.shapes import ContextShapes

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _img(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _lab(rng, h, w, L=21):
    lab = rng.integers(0, L, (h, w)).astype(np.uint8)
    lab[0, :2] = 255
    return lab


def _save_jpg(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def _save_png_label(path, lab):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(lab)
    im.putpalette(voc_palette())
    im.save(path)


def _write_split(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("".join(f"{i}\n" for i in ids))


def make_voc(root, train_ids, val_ids, rng, size=(6, 7)):
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    labels = {}
    for i in list(train_ids) + list(val_ids):
        _save_jpg(os.path.join(base, "JPEGImages", f"{i}.jpg"), _img(rng, *size))
        labels[i] = _lab(rng, *size)
        _save_png_label(os.path.join(base, "SegmentationClass", f"{i}.png"), labels[i])
    seg = os.path.join(base, "ImageSets", "Segmentation")
    _write_split(os.path.join(seg, "train.txt"), train_ids)
    _write_split(os.path.join(seg, "val.txt"), val_ids)
    _write_split(os.path.join(seg, "trainval.txt"), list(train_ids) + list(val_ids))
    return base, labels


def make_sbd(root, train_ids, val_ids, rng, size=(6, 7)):
    savemat = pytest.importorskip("scipy.io").savemat
    base = os.path.join(root, "benchmark_RELEASE", "dataset")
    labels = {}
    for i in list(train_ids) + list(val_ids):
        _save_jpg(os.path.join(base, "img", f"{i}.jpg"), _img(rng, *size))
        labels[i] = rng.integers(0, 21, size).astype(np.uint8)
        os.makedirs(os.path.join(base, "cls"), exist_ok=True)
        savemat(
            os.path.join(base, "cls", f"{i}.mat"),
            {
                "GTcls": {
                    "Segmentation": labels[i],
                    "Boundaries": np.zeros(1),
                    "CategoriesPresent": np.unique(labels[i]),
                }
            },
        )
    _write_split(os.path.join(base, "train.txt"), train_ids)
    _write_split(os.path.join(base, "val.txt"), val_ids)
    return base, labels


def make_stanford(root, n, rng, size=(5, 8)):
    base = os.path.join(root, "iccv09Data")
    labels = {}
    for k in range(n):
        i = f"{k:07d}"
        _save_jpg(os.path.join(base, "images", f"{i}.jpg"), _img(rng, *size))
        lab = rng.integers(-1, 8, size)
        labels[i] = lab
        os.makedirs(os.path.join(base, "labels"), exist_ok=True)
        np.savetxt(os.path.join(base, "labels", f"{i}.regions.txt"), lab, fmt="%d")
    return base, labels


def test_voc_reads_palette_indices_and_split(tmp_path):
    rng = np.random.default_rng(0)
    _, labels = make_voc(tmp_path, ["2007_000001", "2007_000002"], ["2007_000003"], rng)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = voc_dataset(str(root), "train")
        assert ds.ids() == ["2007_000001", "2007_000002"] and ds.num_classes == 21
    img, lab = ds.load(1)
    assert img.shape == (3, 6, 7) and img.dtype == torch.uint8
    assert torch.equal(lab, torch.from_numpy(labels["2007_000002"].astype(np.int64)))
    val = voc_dataset(str(tmp_path), "val", EvalTransform())
    x, y = val[0]
    assert x.dtype == torch.float32 and torch.equal(
        y, torch.from_numpy(labels["2007_000003"].astype(np.int64))
    )


def test_sbd_reads_mat_labels(tmp_path):
    rng = np.random.default_rng(1)
    _, labels = make_sbd(tmp_path, ["2008_000001", "2008_000002"], ["2008_000003"], rng)
    ds = sbd_dataset(str(tmp_path), "val")
    _, lab = ds.load(0)
    assert torch.equal(lab, torch.from_numpy(labels["2008_000003"].astype(np.int64)))


def test_train_aug_merges_voc_and_sbd(tmp_path):
    rng = np.random.default_rng(2)
    voc_train, voc_val = ["a1", "a2"], ["v1", "v2"]
    sbd_train, sbd_val = ["a2", "s1", "v1"], ["s2"]
    _, voc_labels = make_voc(tmp_path / "voc", voc_train, voc_val, rng)
    _, sbd_labels = make_sbd(tmp_path / "sbd", sbd_train, sbd_val, rng)
    ds = voc_train_aug_dataset(str(tmp_path / "voc"), str(tmp_path / "sbd"))
    want = sorted({"a1", "a2", "s1", "s2"})  # union of VOC train, SBD train and val, minus VOC val
    assert ds.ids() == want
    for k, i in enumerate(ds.ids()):
        _, lab = ds.load(k)
        # VOC's own (finer) annotation where the image is in VOC train, SBD's elsewhere
        src = voc_labels[i] if i in voc_train else sbd_labels[i]
        assert torch.equal(lab, torch.from_numpy(src.astype(np.int64))), i


def test_stanford_background_reads_regions_and_splits(tmp_path):
    rng = np.random.default_rng(3)
    _, labels = make_stanford(tmp_path, 10, rng)
    all_ds = stanford_background_dataset(str(tmp_path), "all")
    tr = stanford_background_dataset(str(tmp_path), "train")
    va = stanford_background_dataset(str(tmp_path), "val")
    assert len(all_ds) == 10 and len(tr) == 8 and len(va) == 2
    assert set(tr.ids()).isdisjoint(va.ids()) and set(tr.ids()) | set(va.ids()) == set(all_ds.ids())
    _, lab = all_ds.load(4)
    raw = labels[all_ds.ids()[4]]
    assert torch.equal(lab, torch.from_numpy(np.where(raw < 0, 255, raw).astype(np.int64)))
    assert all_ds.num_classes == 8


def test_missing_and_half_present_datasets_fail_clearly(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit/VOC2012"):
        voc_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="benchmark_RELEASE"):
        sbd_dataset(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="iccv09Data"):
        stanford_background_dataset(str(tmp_path))
    rng = np.random.default_rng(4)
    base, _ = make_voc(tmp_path, ["x1", "x2", "x3"], ["x4"], rng)
    os.remove(os.path.join(base, "SegmentationClass", "x2.png"))
    os.remove(os.path.join(base, "JPEGImages", "x3.jpg"))
    with pytest.raises(DatasetIncompleteError, match=r"2 listed files are missing.*x2\.png"):
        voc_dataset(str(tmp_path), "train")
    with pytest.raises(DatasetIncompleteError, match="split file"):
        voc_dataset(str(tmp_path), "test")
    sbase, _ = make_sbd(tmp_path / "s", ["y1"], ["y2"], rng)
    os.remove(os.path.join(sbase, "cls", "y2.mat"))
    with pytest.raises(DatasetIncompleteError, match="y2.mat"):
        sbd_dataset(str(tmp_path / "s"), "val")
    stb, _ = make_stanford(tmp_path / "st", 3, rng)
    os.remove(os.path.join(stb, "labels", "0000001.regions.txt"))
    with pytest.raises(DatasetIncompleteError, match="regions.txt"):
        stanford_background_dataset(str(tmp_path / "st"), "all")
    # both are FileNotFoundError subclasses
    assert issubclass(DatasetIncompleteError, FileNotFoundError)


def test_train_transform_shapes_labels_and_determinism():
    rng = np.random.default_rng(5)
    img = torch.from_numpy(_img(rng, 20, 30)).permute(2, 0, 1)
    lab = torch.from_numpy(_lab(rng, 20, 30, L=5).astype(np.int64))
    t = TrainTransform(crop_size=24)
    x1, y1 = t(img, lab, torch.Generator().manual_seed(7))
    x2, y2 = t(img, lab, torch.Generator().manual_seed(7))
    assert x1.shape == (3, 24, 24) and y1.shape == (24, 24)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert set(y1.unique().tolist()) <= set(range(5)) | {255}
    x3, _ = t(img, lab, torch.Generator().manual_seed(8))
    assert not torch.equal(x1, x3)


def test_identity_transform_is_a_padded_crop():
    rng = np.random.default_rng(6)
    img = torch.from_numpy(_img(rng, 8, 9)).permute(2, 0, 1)
    lab = torch.from_numpy(_lab(rng, 8, 9, L=4).astype(np.int64))
    t = TrainTransform(
        crop_size=10,
        scale_range=(1.0, 1.0),
        rotation_degrees=0,
        hflip=False,
        brightness=0,
        contrast=0,
        saturation=0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    x, y = t(img, lab, torch.Generator().manual_seed(0))
    # the crop of a 10x10 window from a padded 8x9 image is the image padded bottom/right
    torch.testing.assert_close(x[:, :8, :9], img.float() / 255)
    assert (
        torch.equal(y[:8, :9], lab) and bool((y[8:] == 255).all()) and bool((y[:, 9:] == 255).all())
    )


def test_rotation_by_quarter_turn_matches_rot90():
    lab = torch.arange(16).reshape(4, 4)
    img = lab[None].float().repeat(3, 1, 1)
    xi, yl = rotate(img, lab, 90.0)
    # grid_sample rotates sampling coordinates; either direction of a quarter turn is a rot90
    assert torch.equal(yl, torch.rot90(lab, 1)) or torch.equal(yl, torch.rot90(lab, -1))
    torch.testing.assert_close(xi[0], yl.float(), atol=1e-4, rtol=0)


def test_palette_png_roundtrip(tmp_path):
    from crfkit.training import save_label_png

    lab = torch.randint(0, 21, (5, 6))
    path = str(tmp_path / "p.png")
    save_label_png(lab, path)
    with Image.open(path) as im:
        assert im.mode == "P" and im.getpalette()[:6] == voc_palette()[:6]
    assert np.array_equal(read_png_label(path), lab.numpy().astype(np.uint8))


def test_context_shapes_are_seeded_and_locally_ambiguous():
    a, b = ContextShapes(4, split="val", seed=3), ContextShapes(4, split="val", seed=3)
    c = ContextShapes(4, split="train", seed=3)
    ia, la = a.load(2)
    ib, lb = b.load(2)
    assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(ia, c.load(2)[0])
    # every object class appears across a few images; bodies look alike whatever the class:
    # the mean colour of pixels deep inside objects does not depend on the class
    ds = ContextShapes(40, split="train", seed=0)
    deep = {1: [], 2: [], 3: []}
    from crfkit.data.shapes import _erode

    for i in range(len(ds)):
        img, lab = ds.load(i)
        for k in (1, 2, 3):
            m = _erode((lab == k).numpy(), 4)
            if m.any():
                deep[k].append(img[:, torch.from_numpy(m)].float().mean(1))
    means = [torch.stack(v).mean(0) for v in deep.values()]
    for m in means[1:]:
        torch.testing.assert_close(m, means[0], atol=3.0, rtol=0)


def test_stanford_loader_agrees_with_the_learning_experiments_reader(tmp_path):
    sb = pytest.importorskip("crfkit.data.stanford_background")
    names = sb.write_synthetic_dataset(str(tmp_path), num_images=3, height=12, width=16, seed=0)
    ds = stanford_background_dataset(str(tmp_path), "all")
    theirs = {s.name: s for s in sb.load_stanford_background(str(tmp_path))}
    assert sorted(ds.ids()) == sorted(names) == sorted(theirs)
    for k, i in enumerate(ds.ids()):
        img, lab = ds.load(k)
        ref = theirs[i].labels
        assert torch.equal(lab, torch.where(ref < 0, torch.full_like(ref, 255), ref))
        assert torch.equal(img.permute(1, 2, 0), theirs[i].image)
