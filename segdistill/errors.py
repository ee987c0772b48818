"""Errors that segdistill raises for bad input. Each message names the file and what to do."""


class SegDistillError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(SegDistillError):
    """A config file or command-line override is wrong."""


class DataError(SegDistillError):
    """A dataset folder, list file, image or mask is missing or wrong."""


class CheckpointError(SegDistillError):
    """A checkpoint is missing, damaged, or belongs to another model."""


class DivergenceError(SegDistillError):
    """The training loss became NaN or infinite."""


class LatencyError(SegDistillError):
    """A latency table, block key or platform is wrong or missing (``segdistill lut``, ``segdistill latency``)."""
