"""Segmentation networks: the paper's variants with and without the CRF; a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from crfkit.nn import (
    DualDecompositionCRF,
    SegmentationNet,
    build_segmentation_model,
    count_parameters,
)
from crfkit.nn.segmentation import SmallBackbone


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _few_steps(model, x, y, steps=4, lr=0.01):
    """Loss on ``(x, y)`` before and after ``steps`` SGD steps on it; both measured in training
    mode under the same random seed (the same dropout masks)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()

    def measure():
        torch.manual_seed(1234)
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y, ignore_index=255))

    before = measure()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, measure()


def _tiny_batch(n=2, size=33, L=3, seed=0):
    """A learnable toy task: the image's left and right halves carry a class colour plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, size, size, dtype=torch.long)
    cls = torch.randint(0, L, (n, 2), generator=g)
    y[:, :, : size // 2] = cls[:, :1, None]
    y[:, :, size // 2 :] = cls[:, 1:, None]
    colours = torch.randn(L, 3, generator=g)
    x = colours[y].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=g)
    y[:, :2] = 255
    return x, y


def test_small_model_output_is_upsampled_crf_marginals():
    torch.manual_seed(0)
    model = build_segmentation_model(
        3,
        backbone="small",
        head="none",
        crf_iters=3,
        crf_gamma=1.0,
        small_width=8,
        small_channels=8,
        pairwise_init_std=0.1,
    ).eval()
    x, _ = _tiny_batch(size=15)
    grid = model.forward_grid(x)
    assert grid["unary"].shape == (2, 3, 8, 8) and grid["logits"].shape == (2, 3, 8, 8)
    # the CRF output is the layer applied to the unary and pairwise heads (Eq. 23 logits) ...
    ref = DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=model.offsets)(
        grid["unary"], grid["pairwise"]
    )
    torch.testing.assert_close(grid["logits"], ref)
    # ... upsampled bilinearly to the input size
    torch.testing.assert_close(
        model(x), F.interpolate(ref, size=(15, 15), mode="bilinear", align_corners=False)
    )


def test_crf_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = build_segmentation_model(
        3, backbone="small", head="none", crf_iters=2, small_width=8, small_channels=8
    )
    x, _ = _tiny_batch(size=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = model.forward_grid(x)
    assert grid["unary"].dtype == torch.bfloat16  # the network ran in reduced precision
    assert grid["pairwise"].dtype == torch.float32 and grid["logits"].dtype == torch.float32


@pytest.mark.parametrize("form", ["full", "weighted", "lowrank"])
def test_small_model_with_each_pairwise_form_learns(form):
    torch.manual_seed(1)
    model = SegmentationNet(
        SmallBackbone(width=8, out_channels=8),
        None,
        3,
        crf_iters=2,
        pairwise_form=form,
        pairwise_rank=2,
        pairwise_init_std=0.05,
    )
    x, y = _tiny_batch(size=16)
    before, after = _few_steps(model, x, y, steps=6, lr=0.05)
    assert after < 0.9 * before


def test_bad_arguments():
    from crfkit._validation import CRFShapeError, CRFValueError

    with pytest.raises(CRFValueError, match="backbone"):
        build_segmentation_model(3, backbone="vgg")
    with pytest.raises(CRFValueError, match="head"):
        build_segmentation_model(3, backbone="small", head="fpn")
    with pytest.raises(CRFValueError, match="crf_iters"):
        build_segmentation_model(3, backbone="small", head="none", crf_iters=-1)
    model = build_segmentation_model(3, backbone="small", head="none")
    with pytest.raises(CRFShapeError, match=r"image of shape \[B, 3, H, W\]"):
        model(torch.randn(1, 4, 8, 8))


# ------------------------------------------------------------------ torchvision DeepLabV3-ResNet-50
@pytest.mark.parametrize(
    "head,crf_iters",
    [("block4", 0), ("block4", 3), ("aspp", 0), ("aspp", 3)],
    ids=["block4", "block4+FPI", "aspp", "aspp+FPI"],
)
def test_resnet50_variants_train_on_tiny_data(head, crf_iters):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = build_segmentation_model(
        3, backbone="resnet50", head=head, crf_iters=crf_iters, pairwise_init_std=0.01
    )
    x, y = _tiny_batch(n=2, size=33, L=3)
    g = model.forward_grid(x)
    assert g["unary"].shape == (2, 3, 3, 3)  # output stride 16: ceil(33 / 16) = 3
    assert model(x).shape == (2, 3, 33, 33)
    before, after = _few_steps(model, x, y, steps=4, lr=0.01)
    assert after < 0.9 * before


def test_resnet50_head_parameter_counts():
    pytest.importorskip("torchvision")
    L, F_ = 21, 256
    block4 = build_segmentation_model(L, backbone="resnet50", head="block4", crf_iters=0)
    crf = build_segmentation_model(L, backbone="resnet50", head="block4", crf_iters=15)
    # closed form: 1x1 2048->256, two 3x3 256->256 (no bias, BN weight+bias), 1x1 classifier
    head = 2048 * F_ + 2 * F_ + 2 * (9 * F_ * F_ + 2 * F_)
    assert count_parameters(block4.head) == head
    assert count_parameters(block4.classifier) == F_ * L + L
    assert abs(head + F_ * L + L - 1.6e6) < 0.15e6  # the paper's Table 1: 1.6M
    # the CRF adds the pairwise head only: one FC layer 2F -> L^2 (+ the split layer's spare bias)
    extra = count_parameters(crf) - count_parameters(block4)
    assert extra == count_parameters(crf.pairwise) == 2 * F_ * L * L + 2 * L * L
    assert abs(extra - 0.2e6) < 0.05e6  # the paper: +0.2M
    # the backbone is torchvision's ResNet-50 (no weights unless asked for)
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet50(weights=None)
    assert count_parameters(block4.backbone) == count_parameters(ref) - count_parameters(ref.fc)


def test_xception65_when_timm_is_present():
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    model = build_segmentation_model(3, backbone="xception65", head="aspp", crf_iters=2).eval()
    g = model.forward_grid(torch.randn(1, 3, 33, 33))
    assert g["unary"].shape == (1, 3, 3, 3)  # output stride 16
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)
