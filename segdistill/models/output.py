"""The output contract every segdistill model follows.

A model returns a :class:`SegOutput`, never a positional list:

* ``logits``: (B, K, h, w) class scores at the head's own resolution (often 1/4 or 1/8 of the input).
  Use :func:`upsample_logits` to bring them to the label size.
* ``features``: named intermediate tensors, in network order. Backbones fill ``stem`` (where there is one)
  and ``stage1`` .. ``stage4``; heads add ``pre_logits`` (the map right before the classifier conv).
  Distillation asks for features by these names.
* ``aux_logits``: the auxiliary head's logits during training (``None`` when the model has no aux head or is in eval mode).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SegOutput:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_logits: torch.Tensor | None = None


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` = (H, W); a no-op when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DeployModel(nn.Module):
    """A segmentation model as it is deployed, exported and timed: ``forward(image)`` returns the logits bilinearly
    resized to the input size, as a plain tensor (no features, no aux head). Training-only parts never get here:
    only ``SegOutput.logits`` of the wrapped model in eval mode is used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        logits = out.logits if isinstance(out, SegOutput) else out
        return upsample_logits(logits, tuple(image.shape[-2:]))


def deploy_copy(model: nn.Module) -> DeployModel:
    """A CPU, eval-mode :class:`DeployModel` around a copy of ``model`` (the caller's model is left untouched)."""
    if isinstance(model, DeployModel):
        model = model.model
    return DeployModel(copy.deepcopy(model).cpu()).eval()
