"""Segmentation networks with an optional dual-decomposition CRF on top (the paper's Sec. 6).

A :class:`SegmentationNet` is ``backbone -> head -> (classifier, pairwise head) -> CRF``:

- the backbone maps an image ``[B, 3, H_in, W_in]`` to features on the output-stride grid;
- the head (``block4``: ``1×1`` to 256, two ``3×3`` 256 conv-BN-ReLU; or ``aspp``: atrous
  spatial pyramid pooling and a ``3×3`` conv-BN-ReLU) gives the features ``[B, F, H, W]``
  "just before the final layer";
- the classifier (``1×1``) gives the unaries ``[B, L, H, W]``; the pairwise head
  (:class:`~crfkit.nn.PairwiseHead`) gives per-edge tables from the same features;
- the CRF (``num_iters`` fixed-point iterations of dual decomposition, smoothed max) turns
  both into summed max-marginals ``[B, L, H, W]`` on the output-stride grid;
- the result is upsampled bilinearly to the input size and read as logits of a softmax
  (Eq. 23): cross-entropy on them trains everything end to end.

Without the CRF (``crf_iters=0``) the unaries are upsampled directly: the baseline.
Under autocast (mixed precision on GPUs) the CRF always runs in float32.

Backbones: ``"small"`` (a few conv layers, stride 2, for the CPU benchmark),
``"resnet50"`` (torchvision, output stride 16 with a dilated last block; needs the
``vision`` extra), ``"xception65"`` (timm's aligned Xception-65, output stride 16;
needs ``timm``).  No weights are downloaded unless asked for: ``pretrained_backbone=True``
loads torchvision's ImageNet weights (from the local torch hub cache when offline), or
``backbone_weights=path`` loads a local state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import CRFValueError, check_tensor
from ..models.grid import DEFAULT_OFFSETS, check_offsets
from .pairwise_head import PairwiseHead

__all__ = [
    "SegmentationNet",
    "SmallBackbone",
    "Block4Head",
    "ASPPHead",
    "build_segmentation_model",
    "count_parameters",
]


def _conv_bn_relu(
    cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _vision_import(what: str):
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            f"{what} needs torchvision: pip install 'crfkit[vision]' "
            "(torch and torchvision versions must match)"
        ) from exc
    import torchvision

    return torchvision


class SmallBackbone(nn.Module):
    """A small CNN for the CPU benchmark: ``[B, 3, H, W] -> [B, F, ceil(H/2), ceil(W/2)]``.

    Three ``3×3`` conv-BN-ReLU layers (the second with stride 2) and a ``1×1`` one; receptive
    field 9×9 input pixels, so a pixel sees only its neighbourhood.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, out_channels: int = 64):
        super().__init__()
        self.out_channels = out_channels
        self.layers = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, width, stride=2),
            _conv_bn_relu(width, out_channels),
            _conv_bn_relu(out_channels, out_channels, k=1),
        )

    def forward(self, x):
        return self.layers(x)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50 up to ``layer4`` at output stride 16 (``layer4`` dilated): 2048 channels."""

    def __init__(
        self, pretrained: bool = False, weights_path: str | None = None, output_stride: int = 16
    ):
        super().__init__()
        tv = _vision_import("the ResNet-50 backbone")
        if output_stride not in (8, 16, 32):
            raise CRFValueError(f"expected output_stride in (8, 16, 32), got {output_stride}")
        dil = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[
            output_stride
        ]
        weights = tv.models.ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
        net = tv.models.resnet50(weights=weights, replace_stride_with_dilation=dil)
        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.out_channels = 2048

    def forward(self, x):
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TimmBackbone(nn.Module):  # pragma: no cover - needs timm
    """A timm feature extractor (e.g. ``xception65``) at output stride 16, last stage."""

    def __init__(self, name: str, pretrained: bool = False, output_stride: int = 16):
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise ImportError(f"the {name} backbone needs timm: pip install timm") from exc
        self.net = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            output_stride=output_stride,
            out_indices=(-1,),
        )
        self.out_channels = self.net.feature_info.channels()[-1]

    def forward(self, x):
        return self.net(x)[-1]


class Block4Head(nn.Module):
    """The paper's "block4" head: ``1×1`` to 256, then two ``3×3`` 256 conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: int = 256):
        super().__init__()
        self.out_channels = channels
        self.layers = nn.Sequential(
            _conv_bn_relu(in_channels, channels, k=1),
            _conv_bn_relu(channels, channels),
            _conv_bn_relu(channels, channels),
        )

    def forward(self, x):
        return self.layers(x)


class ASPPHead(nn.Module):
    """DeepLabV3's ASPP (torchvision's module; rates 6, 12, 18 at output stride 16) and a
    ``3×3`` 256 conv-BN-ReLU, as in torchvision's ``DeepLabHead`` without the classifier."""

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        _vision_import("the ASPP head")
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.out_channels = channels
        self.aspp = ASPP(in_channels, list(rates), channels)
        self.post = _conv_bn_relu(channels, channels)

    def forward(self, x):
        return self.post(self.aspp(x))


class SegmentationNet(nn.Module):
    """Backbone + head + classifier (+ pairwise head + CRF); see the module doc.

    Args:
        backbone: module ``[B, 3, H_in, W_in] -> [B, C, H, W]`` with ``out_channels``.
        head: module ``[B, C, H, W] -> [B, F, H, W]`` with ``out_channels`` (or ``None``: identity).
        num_classes: ``L``.
        crf_iters: fixed-point iterations of the CRF; ``0`` = no CRF (the baseline).
        crf_gamma: smoothing of the max (``> 0`` for training; the paper uses 1 or 2).
        offsets: the CRF's ``K`` grid offsets.
        pairwise_form, pairwise_rank, pairwise_init_std: see :class:`~crfkit.nn.PairwiseHead`.

    Forward:
        ``image [B, 3, H_in, W_in]`` -> ``logits [B, L, H_in, W_in]``.
        ``forward_grid(image)`` returns a dict with ``unary``, ``pairwise`` and ``logits``
        on the output-stride grid ``[B, L, H, W]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        num_classes: int,
        *,
        crf_iters: int = 0,
        crf_gamma: float = 1.0,
        offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
        pairwise_form: str = "full",
        pairwise_rank: int = 4,
        pairwise_init_std: float = 1e-3,
    ):
        super().__init__()
        if int(num_classes) < 2:
            raise CRFValueError(f"expected num_classes >= 2, got {num_classes}")
        if int(crf_iters) < 0:
            raise CRFValueError(f"expected crf_iters >= 0, got {crf_iters}")
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        feat = head.out_channels if head is not None else backbone.out_channels
        self.num_classes = int(num_classes)
        self.classifier = nn.Conv2d(feat, self.num_classes, kernel_size=1)
        self.crf_iters = int(crf_iters)
        self.offsets = check_offsets(offsets)
        if self.crf_iters > 0:
            from .crf_layer import DualDecompositionCRF

            self.pairwise = PairwiseHead(
                feat,
                self.num_classes,
                self.offsets,
                form=pairwise_form,
                rank=pairwise_rank,
                init_std=pairwise_init_std,
            )
            self.crf = DualDecompositionCRF(
                num_iters=self.crf_iters, gamma=float(crf_gamma), offsets=self.offsets
            )
        else:
            self.pairwise = None
            self.crf = None

    def forward_grid(self, image: torch.Tensor) -> dict:
        check_tensor(image, "image", "B 3 H W", floating=True)
        feats = self.head(self.backbone(image))
        unary = self.classifier(feats)
        out = {"unary": unary, "features": feats}
        if self.crf is None:
            out["logits"] = unary
            return out
        pairwise = self.pairwise(feats)
        dev = unary.device.type
        with torch.autocast(device_type=dev, enabled=False):  # the CRF in float32
            pw = _to_float32(pairwise)
            out["pairwise"] = pw
            out["logits"] = self.crf(unary.float(), pw)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.forward_grid(image)["logits"]
        return F.interpolate(
            logits.float(), size=image.shape[-2:], mode="bilinear", align_corners=False
        )


def _to_float32(pairwise):
    """Cast a pairwise head's output (a tensor, or a list of tensors / ``(weight, table)`` pairs)."""
    if isinstance(pairwise, torch.Tensor):
        return pairwise.float()
    out = []
    for entry in pairwise:
        if isinstance(entry, tuple):
            out.append(tuple(t.float() for t in entry))
        else:
            out.append(entry.float())
    return out


def build_segmentation_model(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    head: str = "block4",
    crf_iters: int = 0,
    crf_gamma: float = 1.0,
    offsets: Sequence[tuple[int, int]] = DEFAULT_OFFSETS,
    pairwise_form: str = "full",
    pairwise_rank: int = 4,
    pairwise_init_std: float = 1e-3,
    pretrained_backbone: bool = False,
    backbone_weights: str | None = None,
    output_stride: int = 16,
    small_width: int = 32,
    small_channels: int = 64,
) -> SegmentationNet:
    """The paper's models by name.

    Args:
        num_classes: ``L`` (21 for VOC).
        backbone: ``"resnet50"`` | ``"xception65"`` | ``"small"``.
        head: ``"block4"`` | ``"aspp"`` | ``"none"``.
        crf_iters: ``x`` of ``+xFPI`` (0: the baseline without CRF).
        pretrained_backbone: torchvision / timm ImageNet weights (off by default; never required).
        backbone_weights: a local state-dict file for the ResNet-50 backbone.

    Table 1: ``(resnet50, block4, 0)``, ``(resnet50, block4, 15)``, ``(resnet50, aspp, 0)``,
    ``(resnet50, aspp, 5)``, ``(xception65, aspp, 0)``, ``(xception65, aspp, 15)``.
    """
    if backbone == "resnet50":
        bb = ResNetBackbone(
            pretrained=pretrained_backbone,
            weights_path=backbone_weights,
            output_stride=output_stride,
        )
    elif backbone == "xception65":
        bb = TimmBackbone("xception65", pretrained=pretrained_backbone, output_stride=output_stride)
    elif backbone == "small":
        bb = SmallBackbone(width=small_width, out_channels=small_channels)
    else:
        raise CRFValueError(
            f"expected backbone in ('resnet50', 'xception65', 'small'), got {backbone!r}"
        )
    if head == "block4":
        hd = Block4Head(bb.out_channels)
    elif head == "aspp":
        hd = ASPPHead(bb.out_channels, rates=(6, 12, 18) if output_stride == 16 else (12, 24, 36))
    elif head == "none":
        hd = None
    else:
        raise CRFValueError(f"expected head in ('block4', 'aspp', 'none'), got {head!r}")
    return SegmentationNet(
        bb,
        hd,
        num_classes,
        crf_iters=crf_iters,
        crf_gamma=crf_gamma,
        offsets=offsets,
        pairwise_form=pairwise_form,
        pairwise_rank=pairwise_rank,
        pairwise_init_std=pairwise_init_std,
    )


def count_parameters(module: nn.Module | None) -> int:
    """Number of trainable parameters (0 for ``None``)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
