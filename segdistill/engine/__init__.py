"""Evaluation, inference and distributed helpers."""
from .evaluate import evaluate
from .inference import predict_logits, slide_inference, whole_inference
from .metrics import ConfusionMatrix, format_table

__all__ = ["ConfusionMatrix", "evaluate", "format_table", "predict_logits", "slide_inference", "whole_inference"]
