"""Optional dependencies: imported where they are used, with a clear error naming the extra that installs them.

The core (train, distill, eval, predict) needs only the base dependencies. The heavy ones are extras of the package
(``pyproject.toml``): ``onnx`` (onnx, onnxscript, onnxruntime: ``export`` and the ``onnxruntime-cpu`` latency
platform), ``plot`` (matplotlib: curves, prediction grids, latency scatter plots), ``tb`` (tensorboard: training
logs) and ``all``. ``scripts/setup.sh`` installs ``.[all,test]``::

    mpl_figure = require("matplotlib.figure", "plot", "plotting training curves")
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SegDistillError


class MissingDependencyError(SegDistillError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Also an ``ImportError``, so code that already falls back on ``except ImportError`` keeps doing so."""


def require(module_name: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import and return ``module_name``, or raise :class:`MissingDependencyError`:
    ``"<purpose> needs <package>: pip install 'segdistill[<extra>]'"``.

    ``package`` is the distribution to install (default: the top-level module, e.g. ``matplotlib`` for
    ``matplotlib.figure``; give ``package="tensorboard"`` for ``torch.utils.tensorboard``). When the module is
    present but fails to import for another reason, that reason is appended."""
    package = package or module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        message = f"{purpose} needs {package}: pip install 'segdistill[{extra}]'"
        if not (isinstance(e, ModuleNotFoundError) and e.name and package.startswith(e.name.split(".")[0])):
            message += f" (importing {module_name} failed: {e})"
        raise MissingDependencyError(message) from e
