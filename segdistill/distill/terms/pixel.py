"""Pixel-wise KD (Hinton et al. 2015, per pixel as in SKD, Liu et al. CVPR 2019).

``kd_pixel = mean_{valid p} T^2 * KL(softmax(Z_t[p] / T) || softmax(Z_s[p] / T))``: teacher resized (bilinear) to
the student, ignore-index pixels excluded. SKD: T 1 on the 1/8 score maps, weight 10 (CVPR) or 1 (common).
Loss module: :class:`segdistill.distill.losses.PixelKD`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import KDTerm
from ..losses import PixelKD
from .base import BuildContext, KDInputs, Term, register_term


@dataclass
class PixelConfig(KDTerm):
    T: float = 1.0  # temperature (SKD: 1)


@register_term("pixel")
class PixelTerm(Term):
    Config = PixelConfig
    needs = frozenset({"logits"})

    def build(self, ctx: BuildContext):
        self.fn = PixelKD(T=self.cfg.T, ignore_index=ctx.ignore_index)

    def forward(self, x: KDInputs):
        return {"kd_pixel": self.fn(x.z_s, x.z_t, x.masks)}
