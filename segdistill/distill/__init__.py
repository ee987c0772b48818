"""Knowledge-distillation loss terms and weight schedules for segdistill.

See ``../shared/docs/methods.md`` for the formulas. Every loss is a small ``nn.Module`` taking
``(student, teacher, ...)`` and detaching the teacher internally, so no gradient ever reaches it. The KD terms the
Distiller runs (``distill.<name>``) are registered classes, one file each, in :mod:`segdistill.distill.terms`.
"""
from .distiller import Distiller, load_teacher
from .hetero import HeteroAKD, LogitProjector
from .holistic import Discriminator, HolisticKD, gradient_penalty
from .losses import ChannelWiseKD, InterClassSimilarityKD, PairwiseKD, PixelKD, inter_class_similarity
from .schedules import ALW, WeightSchedule, alw_weights
from .terms import KDInputs, Term, register_term, term_types

__all__ = [
    "Distiller",
    "load_teacher",
    "Term",
    "KDInputs",
    "register_term",
    "term_types",
    "PixelKD",
    "ChannelWiseKD",
    "PairwiseKD",
    "InterClassSimilarityKD",
    "HeteroAKD",
    "LogitProjector",
    "HolisticKD",
    "Discriminator",
    "gradient_penalty",
    "inter_class_similarity",
    "WeightSchedule",
    "ALW",
    "alw_weights",
]
