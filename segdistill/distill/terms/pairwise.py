"""SKD pair-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019 /
TPAMI 2020; seed 002).

Features max-pooled into nodes, each L2-normalised over channels;
``kd_pairwise = mean_b sum_ij (s_i.s_j - t_i.t_j)^2 / N^2``, computed in the exact Gram form (O(C^2) memory), so
student and teacher channel counts may differ. Loss module: :class:`segdistill.distill.losses.PairwiseKD`.

Node pooling: ``patch`` x ``patch`` pixels per node, or, with ``scale`` set, a kernel of ``int(scale * H)`` x
``int(scale * W)`` (ceil mode). SKD's released code (``CriterionPairWiseforWholeFeatAfterPool``, ``--pool-scale 0.5``)
and AICSD's (``pa_loss``, ``self.scale = 0.5``) pool with ``scale`` 0.5: about 2 x 2 nodes per map (3 x 3 on an odd
side), and both normalise as here (``sim_dis_compute``: / N^2, / B), so their ``--lambda-pa`` / ``--pa_lambda`` is this
term's weight unchanged with ``scale: 0.5``. SKD distils the PSP module's output (``pre_logits`` here) with
``--lambda-pa 0.5`` in its run script (1.0 its argparse default); AICSD's README puts 9500 on it (on the ASPP output),
which its adaptive (ALW) loss then leaves out. Their node norm is detached (same value, another gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import Rule, at_least, checked
from ..losses import PairwiseKD
from .base import BuildContext, FeatureConfig, FeatureTerm, KDInputs, register_term


@dataclass
class PairwiseConfig(FeatureConfig):
    patch: int = checked(2, at_least(1), "node pooling: max-pool patch in pixels (1 = every pixel is a node)")
    scale: float | None = checked(None, Rule("in (0, 1]", lambda v: 0 < v <= 1, 0),
                                  "node pooling as a fraction of the map, kernel int(scale*H) x int(scale*W) (0.5: ~2x2 "
                                  "nodes, SKD's and AICSD's code); null: patch")


@register_term("pairwise")
class PairwiseTerm(FeatureTerm):
    Config = PairwiseConfig

    def build(self, ctx: BuildContext):
        self.feature_channels(ctx)  # both models must have the features
        self.fn = PairwiseKD(patch=self.cfg.patch, scale=self.cfg.scale)

    def forward(self, x: KDInputs):
        return {"kd_pairwise": self.fn(*self.features(x))}
