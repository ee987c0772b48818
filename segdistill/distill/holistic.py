"""Holistic distillation of SKD (Liu et al., "Structured Knowledge Distillation for Semantic
Segmentation", CVPR 2019 / TPAMI 2020): a conditional WGAN-GP on segmentation maps.

Conventions follow :mod:`segdistill.distill.losses`: teacher logits are detached and resized
(bilinear, ``align_corners=False``) to the student's size; maps are ``softmax`` over classes.
The discriminator is training-only: never export it with the student.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from .losses import match_size

__all__ = ["SelfAttention", "Discriminator", "gradient_penalty", "HolisticKD"]


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): 1x1 query/key (C//8 channels, at least 1) and
    value (C channels); ``out = gamma * (V softmax(Q^T K)^T) + x`` with ``gamma`` initialised to 0,
    so the block starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        ck = max(channels // 8, 1)
        self.q = nn.Conv2d(channels, ck, 1)
        self.k = nn.Conv2d(channels, ck, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.q(x).flatten(2)  # (B, ck, N)
        k = self.k(x).flatten(2)  # (B, ck, N)
        v = self.v(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): row i attends to all j
        out = (v @ attn.transpose(1, 2)).view(B, C, H, W)
        return self.gamma * out + x


class Discriminator(nn.Module):
    """SKD's holistic discriminator: one Wasserstein score per image.

    Input: ``softmax`` map (B, K, H, W), concatenated (when ``condition_on_image``) with the image
    resized (bilinear) to the map's size -> BatchNorm -> three spectral-norm 4x4 stride-2 convs
    (``widths[:3]``, default 64-128-256) each with LeakyReLU(0.2) -> self-attention -> spectral-norm
    4x4 stride-2 conv (``widths[3]``, default 512) + LeakyReLU(0.2) -> self-attention -> spectral-norm
    3x3 conv to one channel -> global mean over space -> (B,).

    Design choices: the final 3x3 conv (padding 1) plus a global mean (instead of a fixed-size 4x4
    conv) accepts any input of at least 16x16 pixels, odd sizes included (each stride-2 conv maps
    n -> floor(n / 2)); ``widths`` is configurable so tests can use tiny networks.
    """

    def __init__(
        self,
        num_classes: int,
        image_channels: int = 3,
        condition_on_image: bool = True,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries, got {widths}")
        self.condition_on_image = condition_on_image
        in_ch = num_classes + (image_channels if condition_on_image else 0)
        self.in_norm = nn.BatchNorm2d(in_ch)

        def block(ci, co):
            return nn.Sequential(spectral_norm(nn.Conv2d(ci, co, 4, stride=2, padding=1)), nn.LeakyReLU(0.2))

        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            block(in_ch, w0),
            block(w0, w1),
            block(w1, w2),
            SelfAttention(w2),
            block(w2, w3),
            SelfAttention(w3),
        )
        self.last = spectral_norm(nn.Conv2d(w3, 1, 3, padding=1))

    def forward(self, seg: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if self.condition_on_image:
            if image is None:
                raise ValueError("this discriminator is conditioned on the image: pass image=")
            image = match_size(image.to(seg.dtype), seg)
            seg = torch.cat([seg, image], dim=1)
        x = self.features(self.in_norm(seg))
        return self.last(x).mean(dim=(1, 2, 3))


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``mean_b (||grad_x D(x_b)||_2 - 1)^2`` on random interpolates
    ``x = a * real + (1 - a) * fake``, ``a ~ U(0, 1)`` per sample; ``create_graph=True`` so the
    penalty trains D. ``real``/``fake`` are detached. Note that a BatchNorm in D (train mode) couples
    the samples of the interpolated batch; the penalty is then on the batch's gradient per sample.
    """
    real, fake = real.detach(), fake.detach()
    a = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    out = D(x) if image is None else D(x, image)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


class HolisticKD(nn.Module):
    """SKD holistic term: conditional WGAN-GP with the teacher's maps as "real" and the student's
    as "fake" (``S = softmax(z_s)``, ``T = softmax(z_t)``, teacher resized to the student, detached).

    * ``d_loss = mean D(S) - mean D(T) + gp_weight * GP(D, T, S)``, student map detached: step only
      the discriminator's optimizer on it;
    * ``g_loss = -l_ho * mean D(S)``: step only the student's optimizer on it (the discriminator's
      parameters also receive gradients; zero them before the next D step).

    One student step then one D step per iteration (methods.md); ``gp_weight = 10``, ``l_ho = 0.1``.
    """

    def __init__(self, discriminator: nn.Module, gp_weight: float = 10.0, l_ho: float = 0.1):
        super().__init__()
        self.discriminator = discriminator
        self.gp_weight = float(gp_weight)
        self.l_ho = float(l_ho)

    def _D(self, x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return self.discriminator(x) if image is None else self.discriminator(x, image)

    def d_loss(self, z_s: torch.Tensor, z_t: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.softmax(z_s.detach(), dim=1)
        t = torch.softmax(match_size(z_t.detach(), z_s), dim=1)
        wd = self._D(s, image).mean() - self._D(t, image).mean()
        return wd + self.gp_weight * gradient_penalty(self.discriminator, t, s, image)

    def g_loss(self, z_s: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return -self.l_ho * self._D(torch.softmax(z_s, dim=1), image).mean()

    def forward(self, z_s: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """The student's term (``g_loss``)."""
        return self.g_loss(z_s, image)
