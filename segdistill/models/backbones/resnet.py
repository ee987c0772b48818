"""ResNet-18/34/50/101 backbones with torchvision-compatible state-dict keys.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. Dilated (atrous) variants follow
Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabV3), 2017, with torchvision's
``replace_stride_with_dilation`` semantics: a dilated stage keeps stride 1, its first block uses the previous
dilation and the remaining blocks the new one.

The module layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``downsample.0/.1``) is torchvision's, minus ``fc``,
so a torchvision ImageNet state dict loads with :func:`segdistill.models.backbones.load_backbone_weights`.

Named outputs: ``stem`` (after the max-pool, 1/4), ``stage1`` = layer1 (1/4), ``stage2`` = layer2 (1/8),
``stage3`` = layer3 (1/16, or 1/8 when dilated), ``stage4`` = layer4 (1/32, 1/16 or 1/8 = the output stride).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError
from ..layers import init_weights, make_divisible


def conv3x3(in_ch, out_ch, stride=1, dilation=1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_ch, out_ch, stride=1):
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Unlike torchvision, dilation > 1 is allowed (both convs are dilated)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, first_dilation=None):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided / dilated) -> 1x1 x4 (ResNet-50/101, torchvision "ResNet V1.5": stride on the 3x3)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, first_dilation=None):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_DILATE = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}


class ResNet(nn.Module):
    """ResNet feature extractor returning ``{"stem", "stage1", ..., "stage4"}``.

    Args:
        block, layers: block type and blocks per stage (e.g. ``BasicBlock, [2, 2, 2, 2]`` for ResNet-18).
        width_mult: scales every channel width (base 64 -> 32 at 0.5), rounded to a multiple of 8.
        output_stride: 8, 16 or 32; the stride of ``stage4`` w.r.t. the input.
    """

    def __init__(self, block, layers, width_mult: float = 1.0, output_stride: int = 32, in_chans: int = 3, arch: str = "resnet"):
        super().__init__()
        if output_stride not in _DILATE:
            raise ConfigError(f"{arch}: output_stride must be 8, 16 or 32, got {output_stride}")
        self.arch = arch
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        widths = [make_divisible(c * width_mult) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.dilation = 1

        self.conv1 = nn.Conv2d(in_chans, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dilate = _DILATE[output_stride]
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2, dilate=dilate[2])

        e = block.expansion
        self.feature_channels = {
            "stem": widths[0], "stage1": widths[0] * e, "stage2": widths[1] * e,
            "stage3": widths[2] * e, "stage4": widths[3] * e,
        }
        s3 = min(16, output_stride)
        self.feature_strides = {"stem": 4, "stage1": 4, "stage2": 8, "stage3": s3, "stage4": output_stride}
        self.apply(init_weights)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.dilation, first_dilation=previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def units(self) -> list[tuple[str, nn.Module, str | None]]:
        """The backbone as units run one after another: (name, module, feature taken after it or None).
        The latency library times models unit by unit (``segdistill.latency.zoo``)."""
        units = [("stem", nn.Sequential(self.conv1, self.bn1, self.relu), None), ("maxpool", self.maxpool, "stem")]
        for li in range(1, 5):
            layer = getattr(self, f"layer{li}")
            units += [(f"layer{li}.{j}", blk, f"stage{li}" if j == len(layer) - 1 else None) for j, blk in enumerate(layer)]
        return units

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {"stem": x}
        x = out["stage1"] = self.layer1(x)
        x = out["stage2"] = self.layer2(x)
        x = out["stage3"] = self.layer3(x)
        out["stage4"] = self.layer4(x)
        return out


_SPECS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def resnet(arch: str, width_mult: float = 1.0, output_stride: int = 32, **kw) -> ResNet:
    """Build ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``."""
    if arch not in _SPECS:
        raise ConfigError(f"unknown ResNet {arch!r}; choose one of {sorted(_SPECS)}")
    block, layers = _SPECS[arch]
    return ResNet(block, layers, width_mult=width_mult, output_stride=output_stride, arch=arch, **kw)


def resnet18(**kw):
    return resnet("resnet18", **kw)


def resnet34(**kw):
    return resnet("resnet34", **kw)


def resnet50(**kw):
    return resnet("resnet50", **kw)


def resnet101(**kw):
    return resnet("resnet101", **kw)
