"""SKD pair-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019 /
TPAMI 2020; seed 002).

Features max-pooled into nodes (``patch`` x ``patch``, SKD's best 2), each L2-normalised over channels;
``kd_pairwise = mean_b sum_ij (s_i.s_j - t_i.t_j)^2 / N^2``, computed in the exact Gram form (O(C^2) memory), so
student and teacher channel counts may differ. Loss module: :class:`segdistill.distill.losses.PairwiseKD`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import PairwiseKD
from .base import BuildContext, FeatureConfig, FeatureTerm, KDInputs, register_term


@dataclass
class PairwiseConfig(FeatureConfig):
    patch: int = 2  # node pooling: max-pool patch (1 = every pixel is a node); SKD's best: 2


@register_term("pairwise")
class PairwiseTerm(FeatureTerm):
    Config = PairwiseConfig

    def build(self, ctx: BuildContext):
        self.feature_channels(ctx)  # both models must have the features
        self.fn = PairwiseKD(patch=self.cfg.patch)

    def forward(self, x: KDInputs):
        return {"kd_pairwise": self.fn(*self.features(x))}
