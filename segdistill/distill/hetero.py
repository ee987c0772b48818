"""Heterogeneous-architecture KD, HeteroAKD (Huang et al., AAAI 2025; seed 003).

No code was released; this is a reconstruction from ``/work/shared/docs/methods.md`` ("HeteroAKD").
Conventions follow :mod:`segdistill.distill.losses`: the teacher is detached inside ``forward``,
resized (bilinear, ``align_corners=False``) to the student's size, and labels equal to
``ignore_index`` (255 by default) do not contribute.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import PixelKD, match_size, match_target

__all__ = ["LogitProjector", "reliability", "HeteroAKD"]


class LogitProjector(nn.Module):
    """Projects intermediate features into the aligned logits space (HeteroAKD).

    Exactly as methods.md states: ``1x1 conv -> K channels, BN, ReLU``; i.e.
    ``ReLU(BN(Conv1x1(f)))`` with K = ``num_classes`` outputs, optionally resized (bilinear) to a
    common grid ``size``.

    Design choices:

    * the order is methods.md's, not "conv-BN-ReLU-conv": no second conv. A consequence worth
      knowing is that the projected "logits" are non-negative (ReLU last);
    * the conv has no bias (BN follows it);
    * training-only: drop projectors from exported students.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
        )

    def forward(self, f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        z = self.proj(f)
        if size is not None and tuple(z.shape[-2:]) != tuple(size):
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        return z


def reliability(
    z: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-element reliability ``H = BCE(sigmoid(z), onehot(y))`` (lower = more reliable).

    ``z`` (B, K, H, W) logits, ``target`` (B, H, W) labels at the same size.
    ``reduction="mean"`` (default) averages the per-class BCE over the K classes -> (B, H, W);
    ``reduction="none"`` keeps it per class -> (B, K, H, W).

    Design choices: computed with ``binary_cross_entropy_with_logits`` (stable); pixels labelled
    ``ignore_index`` get an all-zero one-hot (their value is meaningless) and are given zero weight
    downstream by :class:`HeteroAKD`.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).long()
    onehot = F.one_hot(y, num_classes).permute(0, 3, 1, 2).to(z.dtype)
    onehot = onehot * valid[:, None].to(z.dtype)
    h = F.binary_cross_entropy_with_logits(z, onehot, reduction="none")
    return h.mean(dim=1) if reduction == "mean" else h


class HeteroAKD(nn.Module):
    """HeteroAKD logit-space terms: knowledge mixing (KMM) + knowledge evaluation (KEM) + logit KD.

    On aligned logits ``z_s``, ``z_t`` (teacher resized to the student, detached), with
    ``H = reliability(.)``::

        S_t   = H_s / (H_t + H_s + eps)
        Z_mix = (S_t * Z_t + (1 - S_t) * Z_s).detach()
        dH    = relu(H_s - H(Z_mix))
        W     = softmax(H_s + dH)                  (over space or over classes)
        kmm   = T^2 * sum W * CE(softmax(Z_mix / T), log_softmax(Z_s / T))   (normalised, below)
        logit_kd = logit_kd_weight * PixelKD(T)(z_s, z_t, target)

    ``forward`` returns ``{"kmm": ..., "logit_kd": ...}``; the total is their sum (``sum(d.values())``).

    Design choices (the paper's are unknown; methods.md leaves "space or classes" open):

    * ``weight_over="space"``: H is the class mean of the BCE, one value per pixel; S_t is per pixel
      (shared by all classes); W is a softmax over the valid H*W positions of each image (ignored
      pixels get weight 0). The per-pixel soft CE is weighted by ``N_b * W`` (N_b = valid pixels of
      image b, so the weights have mean 1 over an image's valid pixels) and averaged over all valid
      pixels of the batch. With uniform W this is exactly the plain mean soft CE, so the magnitude is
      comparable to a mean over pixels;
    * ``weight_over="classes"``: H is the per-class BCE (no class mean), so S_t, dH and W are per
      element; W is a softmax over the K classes at each pixel. The per-class soft-CE summands
      ``-p_mix_k log p_s_k`` are weighted by ``K * W_k`` (weights of mean 1 over classes), summed over
      classes and averaged over valid pixels; uniform W again gives the plain soft CE. Caveat:
      with non-uniform per-class weights the minimiser over Z_s is ``softmax(Z_s/T) ~ W * p_mix``,
      not ``p_mix`` itself, so even a student equal to the teacher still receives a gradient (in
      ``"space"`` mode the weight is per pixel and the minimum is at ``Z_s = Z_mix``);
    * ``S_t``, ``Z_mix``, ``dH`` and ``W`` are computed from detached logits: the gradient reaches the
      student only through ``log_softmax(Z_s / T)`` (weights act as constants, like the target);
    * ``T^2`` scales the KMM term (Hinton's convention, as in :class:`PixelKD`);
    * ``target`` is required (reliability needs labels); it is resized (nearest) to the logits' size;
      with no valid pixel the loss is an exact zero that still carries the graph.
    """

    def __init__(
        self,
        num_classes: int,
        T: float = 1.0,
        weight_over: str = "space",
        logit_kd_weight: float = 1.0,
        ignore_index: int = 255,
        eps: float = 1e-8,
    ):
        super().__init__()
        if T <= 0:
            raise ValueError(f"T must be positive, got {T}")
        if weight_over not in ("space", "classes"):
            raise ValueError(f"weight_over must be 'space' or 'classes', got {weight_over!r}")
        self.num_classes = int(num_classes)
        self.T = float(T)
        self.weight_over = weight_over
        self.logit_kd_weight = float(logit_kd_weight)
        self.ignore_index = ignore_index
        self.eps = eps
        self.pixel_kd = PixelKD(T=T, ignore_index=ignore_index)

    def mix(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor):
        """KMM + KEM on detached, aligned logits: returns ``(z_mix, w, valid)``.

        ``w`` is (B, H, W) for ``weight_over="space"`` and (B, K, H, W) for ``"classes"``; it is
        zero on ignored pixels.
        """
        z_s = z_s.detach()
        z_t = match_size(z_t.detach(), z_s)
        target = match_target(target, z_s)
        valid = target != self.ignore_index  # (B, H, W)
        red = "mean" if self.weight_over == "space" else "none"
        rel = lambda z: reliability(z, target, self.num_classes, self.ignore_index, red)  # noqa: E731
        h_s, h_t = rel(z_s), rel(z_t)
        s_t = h_s / (h_t + h_s + self.eps)
        if self.weight_over == "space":
            s_t = s_t[:, None]
        z_mix = (s_t * z_t + (1 - s_t) * z_s).detach()
        d_h = F.relu(h_s - rel(z_mix))
        score = h_s + d_h
        if self.weight_over == "space":
            score = score.masked_fill(~valid, float("-inf")).flatten(1)
            w = torch.softmax(score, dim=1).view_as(valid)
            w = torch.nan_to_num(w, nan=0.0)  # images with no valid pixel
        else:
            w = torch.softmax(score, dim=1) * valid[:, None].to(score.dtype)
        return z_mix, w, valid

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        z_t = match_size(z_t.detach(), z_s)
        target = match_target(target, z_s)
        z_mix, w, valid = self.mix(z_s, z_t, target)
        T = self.T
        p_mix = torch.softmax(z_mix / T, dim=1)
        log_p_s = F.log_softmax(z_s / T, dim=1)
        ce_k = -(p_mix * log_p_s)  # (B, K, H, W)
        n = valid.sum()
        if n == 0:
            kmm = ce_k.sum() * 0.0
        elif self.weight_over == "space":
            n_b = valid.flatten(1).sum(1).to(w.dtype)  # (B,)
            kmm = (n_b[:, None, None] * w * ce_k.sum(1)).sum() / n
        else:
            kmm = (self.num_classes * w * ce_k).sum() / n
        kmm = T * T * kmm
        logit_kd = self.logit_kd_weight * self.pixel_kd(z_s, z_t, target)
        return {"kmm": kmm, "logit_kd": logit_kd}
