"""SKD holistic distillation (Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019 /
TPAMI 2020; seed 002): a conditional WGAN-GP on segmentation maps.

With ``S = softmax(Z_s)``, ``T = softmax(Z_t)`` (teacher resized to the student) and D the discriminator:

* student: ``kd_holistic = -mean D(S)`` (times the term's weight, SKD's ``l_ho = 0.1``);
* discriminator, in :meth:`HolisticTerm.after_step` after each student step, with its **own** Adam optimizer (SKD:
  lr 4e-4, betas 0.9, 0.99) owned by this term: ``d_loss = mean D(S) - mean D(T) + gp_weight * GP`` (WGAN-GP,
  gp_weight 10), logged as ``d_loss``.

D scores the logits' maps at their own resolution (SKD scores 1/8 maps), upsampled to the image when a side is under
16 pixels (its four stride-2 convs need 16). D and its optimizer state are this term's checkpoint state; D is
training-only, never exported. Modules: :mod:`segdistill.distill.holistic`.

Against SKD's released code (issue 13): the student's term is ``--lambda-d 0.1`` times ``-mean D(S)``, this term's
weight 0.1. Their discriminator differs beyond weights: it scores the raw 1/8 logits through a BatchNorm (not
softmax maps), with LeakyReLU 0.1, and is stepped by SGD (lr 4e-4, momentum 0.9, poly decay) on ``0.1 * d_loss``;
here the maps are softmax (methods.md) and D's optimizer is Adam, which a constant factor on its loss does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import KDTerm, above, at_least, checked, described, within
from ...engine import distributed as dist
from ..holistic import Discriminator, HolisticKD
from .base import BuildContext, KDInputs, Term, register_term


@dataclass
class HolisticConfig(KDTerm):
    gp_weight: float = checked(10.0, at_least(0), "WGAN-GP penalty weight")
    condition_on_image: bool = described(False, "concatenate the (resized) image to the maps the discriminator scores")
    lr: float = checked(4.0e-4, above(0), "discriminator Adam learning rate (SKD: 4e-4, betas 0.9, 0.99)")
    betas: list[float] = checked([0.9, 0.99], within(0, 1), "discriminator Adam betas")
    widths: list[int] = checked([64, 128, 256, 512], at_least(1), "the discriminator's 4 conv widths (SKD: 64, 128, 256, 512)")


@register_term("holistic")
class HolisticTerm(Term):
    Config = HolisticConfig
    needs = frozenset({"logits", "images"})
    build_order = 1  # owns an optimizer: built after the other terms' parts

    def build(self, ctx: BuildContext):
        c = self.cfg
        d = Discriminator(ctx.num_classes, condition_on_image=c.condition_on_image, widths=tuple(c.widths))
        self.gan = HolisticKD(d, gp_weight=c.gp_weight, l_ho=1.0)  # l_ho is the term's weight
        self.optimizer = torch.optim.Adam(d.parameters(), lr=c.lr, betas=tuple(c.betas))
        self._maps = None

    def forward(self, x: KDInputs):
        img = x.images if self.cfg.condition_on_image else None
        zs_d, zt_d = _d_input(x.z_s, x.images), _d_input(x.z_t, x.images)
        self._maps = (zs_d.detach(), zt_d, img)  # what the discriminator step after this student step scores
        return {"kd_holistic": self.gan.g_loss(zs_d, img)}

    def after_step(self) -> dict[str, float]:
        """One WGAN-GP step of the discriminator on the maps of the student step just taken."""
        if self._maps is None:
            return {}
        z_s, z_t, img = self._maps
        self._maps = None
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(z_s.device.type, enabled=False):
            d_loss = self.gan.d_loss(z_s.float(), z_t.float(), None if img is None else img.float())
        d_loss.backward()
        dist.average_gradients(self.gan.parameters())
        self.optimizer.step()
        return {"d_loss": float(d_loss.detach())}

    def term_state(self) -> dict:
        return {**super().term_state(), "discriminator": self.gan.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_term_state(self, state: dict):
        super().load_term_state(state)
        self.gan.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

    def state_from_v1(self, hook_state: dict) -> dict:
        return {**super().state_from_v1(hook_state), "discriminator": hook_state["discriminator"],
                "optimizer": hook_state["d_optimizer"]}


def _d_input(z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The map the discriminator scores: the logits at their own resolution, upsampled to the image size when a side
    is under 16 pixels."""
    if min(z.shape[-2:]) >= 16:
        return z
    return F.interpolate(z, size=images.shape[-2:], mode="bilinear", align_corners=False)
