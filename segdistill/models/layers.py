"""Small building blocks shared by the backbones and heads: ConvBNAct, DropPath, width rounding, initialisation."""
from __future__ import annotations

import torch
import torch.nn as nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never going more than 10% below ``v``.

    The rule from the MobileNet papers (and torchvision's ``_make_divisible``); used for every ``width_mult``.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, as an ``nn.Sequential`` so its keys are ``0.weight``, ``1.running_mean``...

    This is the layout of torchvision's ``Conv2dNormActivation``, which keeps MobileNetV2 keys torchvision-compatible.
    ``act=None`` leaves the activation out.
    """

    def __init__(self, in_ch, out_ch, kernel_size=1, stride=1, dilation=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
        padding = (kernel_size - 1) // 2 * dilation
        layers = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6) else act())
        super().__init__(*layers)
        self.out_channels = out_ch


def sep_conv_bn_act(in_ch, out_ch, dilation=1) -> nn.Sequential:
    """Depthwise-separable 3x3 conv (depthwise conv-BN-ReLU, then pointwise conv-BN-ReLU), as DeepLabV3+ uses."""
    return nn.Sequential(ConvBNAct(in_ch, in_ch, 3, dilation=dilation, groups=in_ch), ConvBNAct(in_ch, out_ch, 1))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016).

    Zeroes the whole residual branch for a random subset of the batch during training and rescales the rest by
    ``1 / keep_prob``; the identity in eval mode (so it never appears in an exported graph).
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN/GN/LN weight 1 bias 0, truncated-normal (std 0.02) linears.

    Apply with ``module.apply(init_weights)``.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_classifier(conv: nn.Conv2d) -> None:
    """Final 1x1 classifier conv: small normal weights (std 0.01), zero bias, so initial logits are near zero."""
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
