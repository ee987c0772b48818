"""Knowledge-distillation loss terms and weight schedules for segdistill.

See ``/work/shared/docs/methods.md`` for the formulas. Every term is a small ``nn.Module`` taking
``(student, teacher, ...)`` and detaching the teacher internally, so no gradient ever reaches it.
"""
from .losses import ChannelWiseKD, InterClassSimilarityKD, PairwiseKD, PixelKD, inter_class_similarity
from .schedules import ALW, WeightSchedule, alw_weights

__all__ = [
    "PixelKD",
    "ChannelWiseKD",
    "PairwiseKD",
    "InterClassSimilarityKD",
    "inter_class_similarity",
    "WeightSchedule",
    "ALW",
    "alw_weights",
]
