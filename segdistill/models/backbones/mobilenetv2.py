"""MobileNetV2 backbone with torchvision-compatible state-dict keys.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.

Layout is torchvision's ``mobilenet_v2().features`` (``features.0`` stem conv, ``features.1`` .. ``features.17``
inverted residual blocks with keys ``features.N.conv.0.0`` ..., ``features.18`` the 1x1 conv to 1280 channels);
the classifier is dropped. For output stride 8/16 the last strided blocks keep stride 1 and dilate their depthwise
convs instead, as torchvision's dilated MobileNetV3 does for ``deeplabv3_mobilenet_v3_large``: the block whose
stride is removed and every later block use the new dilation.

Named outputs: ``stem`` = features[0:2] (1/2), ``stage1`` = after features[3] (1/4), ``stage2`` = after features[6]
(1/8), ``stage3`` = after features[13] (1/16, or 1/8 at output stride 8), ``stage4`` = after features[18]
(the output stride).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError
from ..layers import ConvBNAct, init_weights, make_divisible


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when t = 1) -> depthwise 3x3 (strided or dilated) -> linear 1x1 projection."""

    def __init__(self, inp, oup, stride, expand_ratio, dilation=1):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        # As torchvision: a residual only where the block neither strides nor changes width. (The blocks whose
        # stride becomes dilation, features[7] and features[14], change width, so they stay non-residual.)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (channels), n (repeats), s (stride of the first block)
_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
# index into ``features`` after which each named output is taken
_TAPS = {"stem": 1, "stage1": 3, "stage2": 6, "stage3": 13, "stage4": 18}


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor returning ``{"stem", "stage1", ..., "stage4"}``.

    Args:
        width_mult: torchvision's width multiplier (channels rounded to multiples of 8; the last conv keeps
            1280 channels for width_mult <= 1, as in torchvision).
        output_stride: 8, 16 or 32.
    """

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32, in_chans: int = 3, round_nearest: int = 8):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"mobilenetv2: output_stride must be 8, 16 or 32, got {output_stride}")
        self.arch = "mobilenetv2"
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        input_channel = make_divisible(32 * width_mult, round_nearest)
        last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)

        features: list[nn.Module] = [ConvBNAct(in_chans, input_channel, 3, stride=2, act=nn.ReLU6)]
        strides, channels = [2], [input_channel]
        cur_stride, dilation = 2, 1
        for t, c, n, s in _SETTING:
            out_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                if stride > 1 and cur_stride >= output_stride:
                    dilation *= stride
                    stride = 1
                cur_stride *= stride
                features.append(InvertedResidual(input_channel, out_channel, stride, t, dilation))
                input_channel = out_channel
                strides.append(cur_stride)
                channels.append(out_channel)
        features.append(ConvBNAct(input_channel, last_channel, 1, act=nn.ReLU6))
        strides.append(cur_stride)
        channels.append(last_channel)
        self.features = nn.Sequential(*features)

        self.feature_channels = {k: channels[i] for k, i in _TAPS.items()}
        self.feature_strides = {k: strides[i] for k, i in _TAPS.items()}
        self.apply(init_weights)

    def units(self) -> list[tuple[str, nn.Module, str | None]]:
        """The backbone as units run one after another: (name, module, feature taken after it or None).
        The latency library times models unit by unit (``segdistill.latency.zoo``)."""
        taps = {i: name for name, i in _TAPS.items()}
        return [(f"features.{i}", f, taps.get(i)) for i, f in enumerate(self.features)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        start = 0
        for name, end in _TAPS.items():
            for i in range(start, end + 1):
                x = self.features[i](x)
            out[name] = x
            start = end + 1
        return out


def mobilenetv2(width_mult: float = 1.0, output_stride: int = 32, **kw) -> MobileNetV2:
    return MobileNetV2(width_mult=width_mult, output_stride=output_stride, **kw)
