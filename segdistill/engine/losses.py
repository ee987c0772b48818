"""Task losses: pixel-wise cross-entropy with optional OHEM, plus the auxiliary-head term."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.output import SegOutput, upsample_logits


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hardest pixels (OHEM, Shrivastava et al. CVPR 2016; the PSPNet/mmseg variant).

    Pixels whose predicted probability of the true class is below ``thresh`` are kept; if fewer than ``min_kept``
    are, the ``min_kept`` hardest ones are kept instead. Ignored pixels never count. With ``thresh=None`` this is plain CE.
    """

    def __init__(self, ignore_index: int = 255, thresh: float | None = None, min_kept: int = 10000, weight=None):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = min_kept
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = upsample_logits(logits, target.shape[-2:]).float()
        loss = F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0  # keeps the graph; no labelled pixel in this batch
        if self.thresh is None:
            if self.weight is None:
                return loss[valid].mean()
            w = self.weight[target.clamp(max=logits.shape[1] - 1)] * valid
            return loss.sum() / w.sum().clamp(min=1e-12)
        with torch.no_grad():
            prob = logits.softmax(1).gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
            prob = prob.masked_fill(~valid, 2.0)  # ignored pixels never selected
            n_valid = int(valid.sum())
            k = min(self.min_kept, n_valid)
            kth = prob.flatten().kthvalue(max(k, 1)).values
            keep = (prob <= torch.maximum(kth, torch.tensor(self.thresh))) & valid
        return loss[keep].mean()


class SegLoss(nn.Module):
    """Named task losses for a SegOutput: ``{"ce": ..., "aux": ...}`` (aux only when the model returns aux logits)."""

    def __init__(self, ignore_index=255, aux_weight=0.4, ohem=False, ohem_thresh=0.7, ohem_min_kept=10000, class_weights=None):
        super().__init__()
        self.ce = OhemCrossEntropy(ignore_index, ohem_thresh if ohem else None, ohem_min_kept, class_weights)
        self.aux_weight = aux_weight

    def forward(self, out: SegOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {"ce": self.ce(out.logits, target)}
        if out.aux_logits is not None and self.aux_weight > 0:
            losses["aux"] = self.aux_weight * self.ce(out.aux_logits, target)
        return losses
