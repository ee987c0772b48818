"""Pixel-wise KD (Hinton et al. 2015, per pixel as in SKD, Liu et al. CVPR 2019).

``kd_pixel = mean_{valid p} T^2 * KL(softmax(Z_t[p] / T) || softmax(Z_s[p] / T))``: teacher resized (bilinear) to
the student, ignore-index pixels excluded. Loss module: :class:`segdistill.distill.losses.PixelKD`.

``reduction`` states how the authors' code averaged it, so that a preset can carry their flag's value unchanged:

* ``pixel`` (default): the mean over valid pixels above, the convention of every other weight in segdistill;
* ``element``: that mean / K, i.e. ``torch.nn.KLDivLoss()``'s default mean over B*K*H*W elements. AICSD's
  ``distiller.py`` computes its pixel KD this way, so its ``--pi_lambda 10`` is weight 10 here with ``element``, or
  10 / K with ``pixel`` (0.91 on CamVid's 11 classes, 0.48 on VOC's 21);
* ``image_sum``: the sum over the batch of each image's mean. SKD's ``CriterionPixelWise`` sums the soft
  cross-entropy over every pixel of the batch and divides by H*W only, so its ``--lambda-pi 10`` is weight 10 here
  with ``image_sum``, or 10 * B with ``pixel`` (80 at their 8 images per GPU). Their soft cross-entropy is this KL
  plus the teacher's entropy: the same gradient.

SKD and AICSD both use T 1 (no T^2 factor then matters) and mask no pixel; segdistill excludes ignored pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import KDTerm, above, checked, one_of
from ..losses import PIXEL_REDUCTIONS, PixelKD
from .base import BuildContext, KDInputs, Term, register_term


@dataclass
class PixelConfig(KDTerm):
    T: float = checked(1.0, above(0), "temperature (SKD: 1)")
    reduction: str = checked("pixel", one_of(*PIXEL_REDUCTIONS),
                             "pixel: mean over valid pixels | element: that / K, torch KLDivLoss's mean (AICSD's code) | "
                             "image_sum: sum over images of each image's mean (SKD's code)")


@register_term("pixel")
class PixelTerm(Term):
    Config = PixelConfig
    needs = frozenset({"logits"})

    def build(self, ctx: BuildContext):
        self.fn = PixelKD(T=self.cfg.T, ignore_index=ctx.ignore_index, reduction=self.cfg.reduction)

    def forward(self, x: KDInputs):
        return {"kd_pixel": self.fn(x.z_s, x.z_t, x.masks)}
