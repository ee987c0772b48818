"""Channel-wise distillation on features, CWD (Shu et al., ICCV 2021), with a 1x1 adapter.

``kd_cwd_feat = T^2 / (B * C_t) * sum_{b,c} KL(phi(F_t[b,c]) || phi(A(F_s)[b,c]))``, ``phi`` the spatial softmax at
T and ``A`` a 1x1 conv from the student's channels to the teacher's (training-only, stepped by the student's
optimizer). Loss module: :class:`segdistill.distill.losses.ChannelWiseKD`.

CIRKD (``train_cwd.sh``) runs this same loss (T 4, a bias-free 1x1 conv when channels differ) on the last features
with ``--lambda-cwd-fea 50`` beside the logit term's 3 (Cityscapes, CNN students; 5 and 0.3 for SegFormer).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import above, checked
from ..losses import ChannelWiseKD
from .base import BuildContext, FeatureConfig, FeatureTerm, KDInputs, register_term


@dataclass
class CWDFeatureConfig(FeatureConfig):
    T: float = checked(4.0, above(0), "temperature of the spatial softmax (a 1x1 adapter maps student channels to "
                                      "the teacher's, training-only)")


@register_term("cwd_feat")
class CWDFeatureTerm(FeatureTerm):
    Config = CWDFeatureConfig

    def build(self, ctx: BuildContext):
        cs, ct = self.feature_channels(ctx)
        self.parts["cwd_feat"] = ChannelWiseKD(T=self.cfg.T, student_channels=cs, teacher_channels=ct)

    def forward(self, x: KDInputs):
        return {"kd_cwd_feat": self.parts["cwd_feat"](*self.features(x))}
