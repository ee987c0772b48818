"""Input shapes as the command line writes them (shared by ``segdistill`` and ``segdistill lut|latency``)."""
from __future__ import annotations

from .errors import SegDistillError


def parse_shape(text: str) -> tuple[int, ...]:
    """``3x180x240`` -> (1, 3, 180, 240); ``2x3x180x240`` keeps its batch."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SegDistillError(f"--input {text!r} must look like 3x180x240 (C x H x W)") from None
    if len(dims) == 3:
        dims = (1, *dims)
    if len(dims) != 4:
        raise SegDistillError(f"--input {text!r} must look like 3x180x240 (C x H x W)")
    return dims
