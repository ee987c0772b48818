"""Loss-weight schedules over training progress ``a`` in [0, 1] (epoch or iteration / total).

``WeightSchedule(kind, ...)(progress) -> float`` works for any KD term:

* ``constant``: always ``value``;
* ``linear``: ``start + (end - start) * a``;
* ``alw``: the adaptive loss weighting of ICSD (seed 004), ``L = a * (CE + ICSD) + (1 - a) * KD_pixel``.
  ``side="late"`` returns ``a`` (the CE + ICSD side, growing), ``side="early"`` returns ``1 - a``
  (the pixel-KD side, fading); each is multiplied by ``value`` (the term's base weight).

Progress outside [0, 1] is clamped.
"""
from __future__ import annotations

from dataclasses import dataclass


def _clamp(progress: float) -> float:
    return min(1.0, max(0.0, float(progress)))


def alw_weights(progress: float) -> tuple[float, float]:
    """ALW weights ``(a, 1 - a)``: for the (CE + ICSD) side and for the pixel-KD side."""
    a = _clamp(progress)
    return a, 1.0 - a


@dataclass
class WeightSchedule:
    kind: str = "constant"
    value: float = 1.0
    start: float = 1.0
    end: float = 1.0
    side: str = "late"

    def __post_init__(self):
        if self.kind not in ("constant", "linear", "alw"):
            raise ValueError(f"unknown schedule kind {self.kind!r}; use constant, linear or alw")
        if self.side not in ("late", "early"):
            raise ValueError(f"alw side must be 'late' or 'early', got {self.side!r}")

    def __call__(self, progress: float) -> float:
        a = _clamp(progress)
        if self.kind == "constant":
            return float(self.value)
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * a)
        late, early = alw_weights(a)
        return float(self.value) * (late if self.side == "late" else early)


def ALW(side: str = "late", value: float = 1.0) -> WeightSchedule:
    """Shortcut for ``WeightSchedule("alw", value=value, side=side)``."""
    return WeightSchedule(kind="alw", value=value, side=side)
