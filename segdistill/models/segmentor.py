"""Segmentor = backbone + head (+ optional auxiliary FCN head on ``stage3``), returning a :class:`SegOutput`."""
from __future__ import annotations

import torch
import torch.nn as nn

from .heads import FCNHead
from .output import SegOutput


class Segmentor(nn.Module):
    """Wraps a backbone (named-feature dict out) and a head (``(logits, pre_logits)`` out).

    ``forward(x)`` returns ``SegOutput(logits, features, aux_logits)``:

    * ``logits`` at the head's resolution (``logits_stride`` w.r.t. the input),
    * ``features``: the backbone's ``stem``? / ``stage1`` .. ``stage4`` and the head's ``pre_logits``,
    * ``aux_logits``: the auxiliary head's logits (on ``stage3``) in training mode only; ``None`` otherwise.

    ``feature_channels`` / ``feature_strides`` describe every entry of ``features`` without a dry run;
    ``logits_stride`` is the stride of ``logits`` and ``output_stride`` that of ``stage4``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, aux: bool = False,
                 aux_key: str = "stage3"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.aux_key = aux_key
        self.aux_head = FCNHead(backbone.feature_channels[aux_key], num_classes, in_key=aux_key) if aux else None
        self.feature_channels = {**backbone.feature_channels, "pre_logits": head.channels}
        self.feature_strides = {**backbone.feature_strides, "pre_logits": backbone.feature_strides[head.out_key]}
        self.logits_stride = self.feature_strides["pre_logits"]
        self.output_stride = backbone.feature_strides["stage4"]

    def forward(self, x: torch.Tensor) -> SegOutput:
        feats = self.backbone(x)
        logits, pre_logits = self.head(feats)
        features = dict(feats)
        features["pre_logits"] = pre_logits
        aux_logits = None
        if self.aux_head is not None and self.training:
            aux_logits = self.aux_head(feats)[0]
        return SegOutput(logits=logits, features=features, aux_logits=aux_logits)
