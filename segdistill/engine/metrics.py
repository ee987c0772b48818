"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Following the benchmark protocol, IoU is computed once from the split's summed confusion matrix, never as a mean of
per-image IoUs. Rows of the matrix are ground-truth classes, columns predicted classes.

Definitions (K classes, ``M`` the K x K matrix):

* ``iou[c] = M[c,c] / (sum_j M[c,j] + sum_i M[i,c] - M[c,c])``. A class whose union is 0 (absent from both ground
  truth and predictions) has IoU ``NaN`` and is excluded from ``miou``; a class only predicted (never in the ground
  truth) has IoU 0 and counts. This matches mmsegmentation's ``nanmean``.
* ``acc[c] = M[c,c] / sum_j M[c,j]`` (per-class recall), ``NaN`` for classes absent from the ground truth;
  ``mean_acc`` is the mean over classes present in the ground truth.
* ``pixel_acc = trace(M) / sum(M)`` over the non-ignored pixels; ``num_pixels = sum(M)``.
"""
from __future__ import annotations

import math

import torch

from .distributed import all_reduce_sum


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` int64 confusion matrix with ``torch.bincount``.

    Pixels whose target is ``ignore_index`` are skipped. A target (or prediction) outside ``[0, num_classes)`` that is
    not ``ignore_index`` is a bug in the data or the model, and raises ``ValueError`` naming the values.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    def _check_range(self, values: torch.Tensor, what: str) -> None:
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.numel():
            shown = bad.unique()[:10].tolist()
            raise ValueError(
                f"{what} values {shown} are outside [0, {self.num_classes}) and are not ignore_index "
                f"{self.ignore_index}; check the dataset's label mapping and num_classes"
            )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` are integer tensors of the same shape (any shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        self._check_range(target, "target")
        self._check_range(pred, "prediction")
        k = self.num_classes
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        if self.mat.device != counts.device:
            self.mat = self.mat.to(counts.device)
        self.mat += counts

    def reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over all ranks (in place) when ``torch.distributed`` is initialised; returns self."""
        all_reduce_sum(self.mat)
        return self

    def compute(self) -> dict:
        """Metrics of the accumulated matrix (see the module docstring): ``miou``, ``iou``, ``acc``,
        ``pixel_acc``, ``mean_acc``, ``num_pixels``. Fractions in [0, 1]; ``NaN`` where undefined."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        gt = mat.sum(1)
        union = gt + mat.sum(0) - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = mat.sum()
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "pixel_acc": (tp.sum() / total).item() if total > 0 else math.nan,
            "mean_acc": _nanmean(acc),
            "num_pixels": int(total.item()),
        }


def _nanmean(values: torch.Tensor) -> float:
    """Mean over the non-NaN entries; NaN when all are NaN."""
    return values.nanmean().item()


def _pct(value: float) -> str:
    return "    -" if value is None or math.isnan(value) else f"{100 * value:5.2f}"


def format_table(metrics: dict, class_names: list[str] | None = None) -> str:
    """A plain-text table: one row per class (IoU %, acc %; ``-`` for classes absent from the split), then mIoU,
    pixel accuracy, mean accuracy and the pixel count."""
    iou, acc = metrics["iou"], metrics.get("acc", [math.nan] * len(metrics["iou"]))
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(len(iou))]
    width = max([len("class")] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  IoU %  Acc %", "-" * (width + 15)]
    lines += [f"{n:<{width}}  {_pct(i)}  {_pct(a)}" for n, i, a in zip(names, iou, acc)]
    lines += [
        "-" * (width + 15),
        f"mIoU       {_pct(metrics['miou'])} %  (mean over classes present in ground truth or predictions)",
        f"pixel acc  {_pct(metrics['pixel_acc'])} %",
        f"mean acc   {_pct(metrics['mean_acc'])} %",
        f"pixels     {metrics['num_pixels']}",
    ]
    return "\n".join(lines)
