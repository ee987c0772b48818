"""segdistill: turn a large semantic-segmentation model into a small, fast one for a named device."""

__version__ = "0.1.0"
