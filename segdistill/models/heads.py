"""Segmentation heads. Each takes the backbone's named feature dict and returns ``(logits, pre_logits)``.

``pre_logits`` is the map fed to the final classifier conv (taken before the classifier dropout, so it is the
same tensor in train and eval mode); the segmentor stores it as ``features["pre_logits"]``. Each head names the
feature whose resolution its logits share in ``out_key`` and its width before the classifier in ``channels``.

Pooling branches (ASPP image pooling, PPM bins, LR-ASPP gate) use ``F.adaptive_avg_pool2d`` to fixed bins and
resize back with the input's static size, so the heads export to ONNX at a fixed input size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvBNAct, init_classifier, init_weights, make_divisible, sep_conv_bn_act


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _Head(nn.Module):
    out_key: str = "stage4"
    channels: int = 0

    def _init(self):
        self.apply(init_weights)
        init_classifier(self.classifier)


class FCNHead(_Head):
    """FCN head as in torchvision's ``FCNHead``: 3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 classifier.

    Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
    Also the auxiliary head (on ``stage3``).
    """

    def __init__(self, in_channels: int, num_classes: int, in_key: str = "stage4", dropout: float = 0.1):
        super().__init__()
        self.in_key = self.out_key = in_key
        self.channels = max(8, in_channels // 4)
        self.conv = ConvBNAct(in_channels, self.channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(self.channels, num_classes, 1)
        self._init()

    def forward(self, feats: dict[str, torch.Tensor]):
        x = self.conv(feats[self.in_key])
        return self.classifier(self.dropout(x)), x


class ASPPPooling(nn.Module):
    """Image-level pooling branch: global average -> 1x1 conv -> ReLU -> broadcast back to the map size.

    The 1x1 conv has a bias and no BatchNorm (deviation from torchvision, whose BN on a 1x1 map fails in training
    with batch size 1).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3): 1x1 conv, three 3x3 atrous convs, image pooling; concat; 1x1.

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017.
    """

    def __init__(self, in_channels, rates, out_channels=256, dropout=0.5, separable=False):
        super().__init__()
        atrous = (lambda r: sep_conv_bn_act(in_channels, out_channels, r)) if separable else (
            lambda r: ConvBNAct(in_channels, out_channels, 3, dilation=r))
        self.convs = nn.ModuleList([ConvBNAct(in_channels, out_channels, 1)] + [atrous(r) for r in rates])
        self.pool = ASPPPooling(in_channels, out_channels)
        self.project = nn.Sequential(
            ConvBNAct(out_channels * (len(rates) + 2), out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.project(torch.cat([c(x) for c in self.convs] + [self.pool(x)], dim=1))


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabV3 atrous rates: (12, 24, 36) at output stride 8, (6, 12, 18) at 16, (3, 6, 9) at 32."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


class DeepLabV3Head(_Head):
    """DeepLabV3: ASPP on ``stage4`` (256 * width channels), 3x3 conv, 1x1 classifier (torchvision ``DeepLabHead``)."""

    def __init__(self, in_channels: int, num_classes: int, output_stride: int = 8, width_mult: float = 1.0,
                 in_key: str = "stage4"):
        super().__init__()
        self.in_key = self.out_key = in_key
        c = self.channels = make_divisible(256 * width_mult)
        self.aspp = ASPP(in_channels, aspp_rates(output_stride), c)
        self.conv = ConvBNAct(c, c, 3)
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self._init()

    def forward(self, feats):
        x = self.conv(self.aspp(feats[self.in_key]))
        return self.classifier(x), x


class DeepLabV3PlusHead(_Head):
    """DeepLabV3+: ASPP on ``stage4``, upsampled to ``stage1`` (1/4) and fused with its 48-channel projection.

    Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018.
    Decoder: two 3x3 conv-BN-ReLU (256 * width channels), then the classifier; logits at 1/4. As in the paper, the
    atrous ASPP branches and the decoder convs are depthwise-separable (``separable=True``, the default): the dense
    3x3 decoder at 1/4 resolution would otherwise cost more than a MobileNetV2 backbone.
    """

    out_key = "stage1"

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, output_stride: int = 8,
                 width_mult: float = 1.0, in_key: str = "stage4", low_key: str = "stage1", separable: bool = True):
        super().__init__()
        self.in_key, self.low_key, self.out_key = in_key, low_key, low_key
        c = self.channels = make_divisible(256 * width_mult)
        low = make_divisible(48 * width_mult)
        self.aspp = ASPP(in_channels, aspp_rates(output_stride), c, separable=separable)
        self.low_proj = ConvBNAct(low_channels, low, 1)
        conv3 = sep_conv_bn_act if separable else (lambda i, o: ConvBNAct(i, o, 3))
        self.decoder = nn.Sequential(conv3(c + low, c), conv3(c, c))
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self._init()

    def forward(self, feats):
        low = self.low_proj(feats[self.low_key])
        x = _resize(self.aspp(feats[self.in_key]), low.shape[-2:])
        x = self.decoder(torch.cat([x, low], dim=1))
        return self.classifier(x), x


class PPM(nn.Module):
    """Pyramid Pooling Module: average-pool to b x b bins, 1x1 conv-BN-ReLU, upsample, concat with the input.

    The single-bin branch uses a biased 1x1 conv without BN (BN over a 1x1 map fails in training at batch size 1).
    """

    def __init__(self, in_channels, branch_channels, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, branch_channels, 1, bias=True), nn.ReLU(inplace=True))
            if b == 1 else ConvBNAct(in_channels, branch_channels, 1)
            for b in self.bins
        )
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def forward(self, x):
        size = x.shape[-2:]
        outs = [x]
        for b, stage in zip(self.bins, self.stages):
            outs.append(_resize(stage(F.adaptive_avg_pool2d(x, b)), size))
        return torch.cat(outs, dim=1)


class PSPHead(_Head):
    """PSPNet head: PPM (bins 1, 2, 3, 6; in/4 channels each) -> 3x3 conv to 512 * width -> dropout 0.1 -> classifier.

    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017.
    """

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0, bins=(1, 2, 3, 6),
                 in_key: str = "stage4", dropout: float = 0.1):
        super().__init__()
        self.in_key = self.out_key = in_key
        self.ppm = PPM(in_channels, max(8, in_channels // len(bins)), bins)
        c = self.channels = make_divisible(512 * width_mult)
        self.bottleneck = ConvBNAct(self.ppm.out_channels, c, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self._init()

    def forward(self, feats):
        x = self.bottleneck(self.ppm(feats[self.in_key]))
        return self.classifier(self.dropout(x)), x


class MLP(nn.Module):
    """Per-pixel linear projection of a (B, C, H, W) map (SegFormer's ``linear_c*.proj``)."""

    def __init__(self, in_dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x):
        B, _, H, W = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(B, -1, H, W)


class SegFormerHead(_Head):
    """SegFormer all-MLP decoder: per-stage linear to ``embed_dim``, upsample to 1/4, concat, 1x1 fuse, classifier.

    Xie et al., "SegFormer", NeurIPS 2021. Module names follow the original (``linear_c1..4``, ``linear_fuse``,
    ``linear_pred``); ``classifier`` is an alias of ``linear_pred``.
    """

    out_key = "stage1"

    def __init__(self, in_channels: dict[str, int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.keys = ["stage1", "stage2", "stage3", "stage4"]
        self.channels = embed_dim
        for i, k in enumerate(self.keys):
            self.add_module(f"linear_c{i + 1}", MLP(in_channels[k], embed_dim))
        self.linear_fuse = ConvBNAct(4 * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)
        self._init()

    @property
    def classifier(self):
        return self.linear_pred

    def forward(self, feats):
        size = feats["stage1"].shape[-2:]
        outs = []
        for i in (4, 3, 2, 1):  # original concat order: c4, c3, c2, c1
            x = getattr(self, f"linear_c{i}")(feats[f"stage{i}"])
            outs.append(x if i == 1 else _resize(x, size))
        x = self.linear_fuse(torch.cat(outs, dim=1))
        return self.linear_pred(self.dropout(x)), x


class LRASPPHead(_Head):
    """Lite R-ASPP (Howard et al., "Searching for MobileNetV3", ICCV 2019; torchvision ``LRASPPHead``).

    High-level branch on ``stage4``: 1x1 conv-BN-ReLU to 128 * width channels, gated by a sigmoid of its global
    average (1x1 conv), upsampled to the low-level map (``stage2``, 1/8) and classified; plus a 1x1 classifier on the
    low-level map; the two are summed. Logits at 1/8. ``pre_logits`` is the gated, upsampled high-level map (the input
    of the high-level classifier).
    """

    out_key = "stage2"

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, width_mult: float = 1.0,
                 low_key: str = "stage2", high_key: str = "stage4"):
        super().__init__()
        self.low_key, self.high_key, self.out_key = low_key, high_key, low_key
        c = self.channels = make_divisible(128 * width_mult)
        self.cbr = ConvBNAct(high_channels, c, 1)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, c, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(c, num_classes, 1)
        self.apply(init_weights)
        init_classifier(self.low_classifier)
        init_classifier(self.high_classifier)

    @property
    def classifier(self):
        return self.high_classifier

    def forward(self, feats):
        low, high = feats[self.low_key], feats[self.high_key]
        x = self.cbr(high) * self.scale(high)
        x = _resize(x, low.shape[-2:])
        return self.low_classifier(low) + self.high_classifier(x), x
