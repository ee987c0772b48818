"""Distillation loss terms for semantic segmentation.

Conventions shared by every term:

* student tensors ``z_s`` / ``f_s`` and teacher tensors ``z_t`` / ``f_t`` are (B, C, H, W);
* the teacher is detached inside each ``forward`` (no gradient ever reaches it);
* when the teacher's spatial size differs from the student's, the teacher is resized to the
  student's size with bilinear interpolation (``align_corners=False``), as in methods.md;
* labels use ``ignore_index`` (255 by default) for pixels that must not contribute.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def match_size(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``t`` (B, C, h, w) to ``ref``'s spatial size; no-op when equal."""
    if tuple(t.shape[-2:]) == tuple(ref.shape[-2:]):
        return t
    return F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def match_target(target: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest resize of labels (B, h, w) to ``ref``'s spatial size; no-op when equal."""
    if tuple(target.shape[-2:]) == tuple(ref.shape[-2:]):
        return target
    return F.interpolate(target[:, None].float(), size=ref.shape[-2:], mode="nearest")[:, 0].long()


PIXEL_REDUCTIONS = ("pixel", "element", "image_sum")


class PixelKD(nn.Module):
    """Pixel-wise knowledge distillation (Hinton et al. 2015, applied per pixel as in
    Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019).

    With ``kl_p = T^2 * KL(softmax(z_t[p] / T) || softmax(z_s[p] / T))`` (summed over the K classes):

    * ``reduction="pixel"`` (default): ``loss = mean_{valid p} kl_p``;
    * ``reduction="element"``: ``loss = mean_{valid p} kl_p / K``, the mean over B*K*H*W elements that
      ``torch.nn.KLDivLoss()`` (default ``reduction="mean"``) computes: AICSD's released ``distiller.py``;
    * ``reduction="image_sum"``: ``loss = sum_b mean_{valid p in image b} kl_p``, the sum over the batch
      of per-image means: SKD's released ``CriterionPixelWise`` (``sum / (H * W)``), i.e. B times
      ``"pixel"`` when no pixel is ignored. (SKD's code uses the soft cross-entropy, which is this KL
      plus the teacher's entropy: the same gradient.)

    Design choices:

    * direction KL(teacher || student), the KL summed over classes;
    * ``target`` (B, H, W) is resized to the logits' size with nearest interpolation; pixels whose
      label is ``ignore_index`` are excluded (the released AICSD and SKD code masks nothing). Without
      a target every pixel is valid;
    * when no pixel is valid the loss is an exact zero that still carries the graph (``0 * sum``);
      with ``"image_sum"`` an image without a valid pixel adds nothing.
    """

    def __init__(self, T: float = 1.0, ignore_index: int = 255, reduction: str = "pixel"):
        super().__init__()
        if T <= 0:
            raise ValueError(f"T must be positive, got {T}")
        if reduction not in PIXEL_REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(PIXEL_REDUCTIONS)}, got {reduction!r}")
        self.T = float(T)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        z_t = match_size(z_t.detach(), z_s)
        T = self.T
        log_p_s = F.log_softmax(z_s / T, dim=1)
        log_p_t = F.log_softmax(z_t / T, dim=1)
        kl = T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B, H, W)
        if target is None:
            valid = torch.ones_like(kl, dtype=torch.bool)
        else:
            valid = match_target(target, z_s) != self.ignore_index
        if not valid.any():
            return kl.sum() * 0.0
        if self.reduction == "image_sum":
            kl = torch.where(valid, kl, torch.zeros_like(kl))
            n_b = valid.flatten(1).sum(1)  # valid pixels per image
            return (kl.flatten(1).sum(1) / n_b.clamp(min=1)).sum()
        loss = kl[valid].mean()
        return loss / z_s.shape[1] if self.reduction == "element" else loss


class ChannelWiseKD(nn.Module):
    """Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021).

    For each sample and channel, ``phi(z) = softmax(z.flatten(H*W) / T)`` (a distribution over space);
    ``loss = T^2 / (B * K) * sum_{b,k} KL(phi(z_t[b,k]) || phi(z_s[b,k]))``.

    Design choices:

    * with ``student_channels`` and ``teacher_channels`` given (and different or not), a 1x1 conv
      ``adapter`` maps student features to the teacher's channel count before the loss; it is a
      training-only submodule (drop it from exported students);
    * the teacher is resized (bilinear) to the student's spatial size when they differ.
    """

    def __init__(self, T: float = 4.0, student_channels: int | None = None, teacher_channels: int | None = None):
        super().__init__()
        if T <= 0:
            raise ValueError(f"T must be positive, got {T}")
        self.T = float(T)
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError("give both student_channels and teacher_channels, or neither")
        self.adapter = (
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1) if student_channels is not None else None
        )

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            z_s = self.adapter(z_s)
        z_t = match_size(z_t.detach(), z_s)
        if z_s.shape != z_t.shape:
            raise ValueError(f"student {tuple(z_s.shape)} and teacher {tuple(z_t.shape)} differ; use an adapter")
        B, K = z_s.shape[:2]
        T = self.T
        log_p_s = F.log_softmax(z_s.flatten(2) / T, dim=-1)
        log_p_t = F.log_softmax(z_t.flatten(2) / T, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
        return T * T * kl / (B * K)


class PairwiseKD(nn.Module):
    """Pair-wise structured distillation (SKD; Liu et al., "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019 / TPAMI 2020).

    Nodes: features max-pooled with kernel = stride = ``patch`` pixels (``patch=1``: every pixel is a
    node), or, with ``scale`` set, with kernel = stride = ``(int(scale * H), int(scale * W))`` (at least
    1): the pooling of SKD's and AICSD's released code (``--pool-scale 0.5``, a fixed ~2 x 2 grid of
    nodes whatever the map's size). Each node is L2-normalised over channels. With S (N x C_s) and
    T (N x C_t) the node matrices, ``a_ij = s_i . s_j`` and ``loss = mean_b sum_ij (a^s_ij - a^t_ij)^2 / N^2``
    (the normalisation of the authors' ``sim_dis_compute``).

    Design choices:

    * computed with the exact Gram identity
      ``sum_ij (s_i.s_j - t_i.t_j)^2 = ||S^T S||_F^2 - 2 ||S^T T||_F^2 + ||T^T T||_F^2``
      in float64 (the terms nearly cancel), O(N C^2) work and O(C^2) memory, never an N x N matrix;
      channel counts may differ between student and teacher;
    * pooling uses ``ceil_mode=True`` (as the authors' code) so a border that is not a multiple of
      the kernel still forms nodes;
    * the node norm is differentiated through (``F.normalize``); the authors' code divides by a
      *detached* norm (+1e-8): the same value, a different gradient;
    * the teacher is resized (bilinear) to the student's spatial size before pooling when they differ;
    * the result is returned in the student's dtype.
    """

    def __init__(self, patch: int = 2, eps: float = 1e-12, scale: float | None = None):
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        if scale is not None and not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.patch = int(patch)
        self.scale = None if scale is None else float(scale)
        self.eps = eps

    def kernel(self, h: int, w: int) -> tuple[int, int]:
        """The max-pool kernel (= stride) for an ``h`` x ``w`` feature map."""
        if self.scale is None:
            return self.patch, self.patch
        return max(1, int(h * self.scale)), max(1, int(w * self.scale))

    def _nodes(self, f: torch.Tensor) -> torch.Tensor:
        k = self.kernel(*f.shape[-2:])
        if k != (1, 1):
            f = F.max_pool2d(f, kernel_size=k, stride=k, ceil_mode=True)
        f = F.normalize(f.flatten(2).double(), p=2, dim=1, eps=self.eps)  # (B, C, N)
        return f

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_t = match_size(f_t.detach(), f_s)
        s = self._nodes(f_s)  # (B, C_s, N)
        t = self._nodes(f_t)  # (B, C_t, N)
        n = s.shape[-1]
        ss = s @ s.transpose(1, 2)  # (B, C_s, C_s) = S^T S
        st = s @ t.transpose(1, 2)  # (B, C_s, C_t) = S^T T
        tt = t @ t.transpose(1, 2)  # (B, C_t, C_t) = T^T T
        per_image = ss.square().sum((1, 2)) - 2 * st.square().sum((1, 2)) + tt.square().sum((1, 2))
        return (per_image / (n * n)).mean().to(f_s.dtype)


def inter_class_similarity(z: torch.Tensor, tau: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """ICS matrices (B, K, K): ``ICS[i, j] = KL(P^i || P^j)``, ``P^c = softmax(z[:, c].flatten() / tau)``.

    Uses ``KL(P^i||P^j) = sum P^i log P^i - sum P^i log P^j``: one (K x HW)(HW x K) product per image.
    With ``normalize`` each row is L2-normalised.
    """
    log_p = F.log_softmax(z.flatten(2) / tau, dim=-1)  # (B, K, HW)
    p = log_p.exp()
    neg_entropy = (p * log_p).sum(-1, keepdim=True)  # (B, K, 1)
    ics = neg_entropy - p @ log_p.transpose(1, 2)  # (B, K, K)
    if normalize:
        ics = F.normalize(ics, p=2, dim=-1)
    return ics


class InterClassSimilarityKD(nn.Module):
    """Inter-class similarity distillation, ICSD (seed 004: "inter-class similarity distillation
    with adaptive loss weighting"; Mansourian et al., AICSD).

    Per image and class c, ``P^c = softmax(Z^c / tau)`` over all H*W positions;
    ``ICS[i, j] = KL(P^i || P^j)`` for every ordered pair (full K x K, not symmetric);
    each row L2-normalised; ``loss = mean_{b,i,j} (ICS_s - ICS_t)^2``.

    Design choices (deliberately the paper's formula, unlike the authors' released ``distiller.py``,
    whose ``lo_loss`` takes the softmax over H only (per column), feeds probabilities where
    ``KLDivLoss`` expects log-probabilities, builds one batch-averaged K x K matrix from its upper
    triangle mirrored, and divides the K^2 mean by the batch size once more): the softmax runs over
    all H*W positions, the KL uses log-probabilities, every entry is computed per image. So the
    authors' ``--lo_lambda`` does not carry over to this term's weight, and their README's 9500 is
    ``--pa_lambda`` (a pair-wise feature loss), not this term's: calibrate the weight (a sweep over
    decades, benchmarks/camvid_kd.py). The teacher is resized (bilinear) to the student's size when
    they differ.
    """

    def __init__(self, tau: float = 1.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        z_t = match_size(z_t.detach(), z_s)
        ics_s = inter_class_similarity(z_s, self.tau)
        ics_t = inter_class_similarity(z_t, self.tau)
        return (ics_s - ics_t).square().mean()
