"""Inter-class similarity distillation, ICSD (seed 004; its ALW weighting is the ``alw`` schedule).

Per image and class c, ``P^c = softmax(Z^c / tau)`` over the H*W positions; ``ICS[i, j] = KL(P^i || P^j)`` (full
K x K), rows L2-normalised; ``kd_icsd = mean_{b,i,j} (ICS_s - ICS_t)^2``, tau 1. Loss module:
:class:`segdistill.distill.losses.InterClassSimilarityKD`.

Weight: no value from the authors carries over. In AICSD's released code this term is ``lo_loss`` (``--lo_lambda``,
which their README never sets), a different function (softmax over H only, probabilities where log-probabilities are
due, one batch-averaged matrix, a further / B); the README's 9500 is ``--pa_lambda``, the pair-wise feature loss
(:mod:`.pairwise`, ``scale: 0.5``). The ``aicsd`` preset's ICSD weight, 10, is the middle of the decades that
did no harm in a CamVid sweep (1, 10, 100 within the baseline's seed spread; 1000 and 9500 cost 6 and 11 mIoU;
benchmarks/RESULTS.md, issue 13); calibrate it on other data.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import KDTerm, above, checked
from ..losses import InterClassSimilarityKD
from .base import BuildContext, KDInputs, Term, register_term


@dataclass
class ICSDConfig(KDTerm):
    tau: float = checked(1.0, above(0), "temperature of each class's softmax over the H*W positions")


@register_term("icsd")
class ICSDTerm(Term):
    Config = ICSDConfig
    needs = frozenset({"logits"})

    def build(self, ctx: BuildContext):
        self.fn = InterClassSimilarityKD(tau=self.cfg.tau)

    def forward(self, x: KDInputs):
        return {"kd_icsd": self.fn(x.z_s, x.z_t)}
