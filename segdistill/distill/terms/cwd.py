"""Channel-wise distillation on logits, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction",
ICCV 2021).

Per sample and channel, ``phi(Z) = softmax(Z.flatten(H*W) / T)``;
``kd_cwd = T^2 / (B * K) * sum_{b,k} KL(phi(Z_t[b,k]) || phi(Z_s[b,k]))``. Paper's logit setting: weight 3, T 4.
Loss module: :class:`segdistill.distill.losses.ChannelWiseKD`.

Checked against code (issue 13): CIRKD's ``CriterionCWD`` (norm ``channel``, divergence ``kl``, T 4; ``train_cwd.sh``
``--lambda-cwd-logit 3``) computes exactly this, so its 3 is this term's weight. mmrazor's CWD config for
PSPNet-R101 -> R18 uses the same formula at tau 1, loss_weight 5. No preset uses this term.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import KDTerm, above, checked
from ..losses import ChannelWiseKD
from .base import BuildContext, KDInputs, Term, register_term


@dataclass
class CWDConfig(KDTerm):
    T: float = checked(4.0, above(0), "temperature of the spatial softmax (CWD on logits: weight 3, T 4 in the paper)")


@register_term("cwd")
class CWDTerm(Term):
    Config = CWDConfig
    needs = frozenset({"logits"})

    def build(self, ctx: BuildContext):
        self.fn = ChannelWiseKD(T=self.cfg.T)

    def forward(self, x: KDInputs):
        return {"kd_cwd": self.fn(x.z_s, x.z_t)}
