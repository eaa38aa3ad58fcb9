"""Stanford Background layout: loader on a generated data set, features, a short learning run."""

import os

import numpy as np
import pytest
import torch

from crfkit.data.stanford_background import (
    PixelClassifier,
    load_stanford_background,
    read_regions,
    segmentation_instance,
    write_synthetic_dataset,
)
from crfkit.learning import FeatureCRF, fit


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loader_round_trip_and_errors(tmp_path):
    names = write_synthetic_dataset(str(tmp_path), num_images=3, height=12, width=16, seed=1)
    data = load_stanford_background(str(tmp_path))
    assert [d.name for d in data] == sorted(names)
    for d in data:
        assert d.image.shape == (12, 16, 3) and d.image.dtype == torch.uint8
        ref = np.loadtxt(os.path.join(tmp_path, "labels", d.name + ".regions.txt"), dtype=np.int64)
        assert np.array_equal(d.labels.numpy(), ref)
    half = load_stanford_background(str(tmp_path), downsample=2, max_images=1)
    assert half[0].labels.shape == (6, 8)
    bad = tmp_path / "bad.regions.txt"
    bad.write_text("0 1 2\n0 x 2\n")
    with pytest.raises(ValueError, match=":2:"):
        read_regions(str(bad))
    bad.write_text("0 1 2\n0 1\n")
    with pytest.raises(ValueError, match=":2:"):
        read_regions(str(bad))
    with pytest.raises(ValueError, match="images/ and labels/"):
        load_stanford_background(str(tmp_path / "nowhere"))


def test_segmentation_features_and_learning(tmp_path):
    write_synthetic_dataset(str(tmp_path), num_images=3, height=10, width=12, seed=2)
    data = load_stanford_background(str(tmp_path))
    clf = PixelClassifier().fit(data[:2], iters=50)
    inst = segmentation_instance(data[2], clf, bins=5)
    H, W = 10, 12
    assert inst.unary_features.shape == (H * W, 9)
    assert inst.pairwise_features.shape == (H * (W - 1) + (H - 1) * W, 6)
    # pairwise features: one bin on plus the bias
    assert torch.equal(
        inst.pairwise_features.sum(1), torch.full((inst.edges.shape[0],), 2.0, dtype=torch.float64)
    )
    assert int(inst.labels.min()) >= 0
    insts = [segmentation_instance(d, clf, bins=5) for d in data[:2]]
    model = FeatureCRF(8, 9, 6)
    res = fit(model, insts, method="bbpl", blocks=4, l2=1e-2, max_steps=40, gtol=0.0, eval_every=20)
    assert res.history[-1]["objective"] < res.history[0]["objective"]
