"""Which hooks a run gets: :func:`build_hooks` is the one place that turns a config into trainer hooks.

Each capability registers a factory ``fn(cfg) -> Hook | None`` under a name with :func:`register_hook`; the factory
looks at its own config section and returns its hook when that section asks for it (``None`` otherwise). The CLI, the
demo and the benchmarks all call :func:`build_hooks`, so a new capability (search, dynamic depth ...) is enabled by its
config alone. Factories run in registration order, which is also the order the trainer calls the hooks in.
"""
from __future__ import annotations

import importlib
from typing import Callable

from .trainer import Hook, Trainer

_FACTORIES: dict[str, Callable] = {}

#: Modules whose import registers the built-in factories (imported on the first :func:`build_hooks`).
BUILTIN = ("segdistill.engine.hooks", "segdistill.dynamic.ekd", "segdistill.search.hook")


def register_hook(name: str):
    """Register ``fn(cfg) -> Hook | None`` as the factory called ``name``."""

    def deco(fn: Callable):
        if name in _FACTORIES and _FACTORIES[name] is not fn:
            raise ValueError(f"hook factory {name!r} is registered twice")
        _FACTORIES[name] = fn
        return fn

    return deco


def build_hooks(cfg) -> list[Hook]:
    """The hooks ``cfg`` asks for, in factory registration order."""
    for mod in BUILTIN:
        importlib.import_module(mod)
    hooks = [fn(cfg) for fn in _FACTORIES.values()]
    return [h for h in hooks if h is not None]


def run_training(cfg) -> tuple[dict, bool]:
    """Train ``cfg`` with the hooks it asks for, under torchrun when launched so: (the trainer's result, whether this
    process is the main rank). What ``segdistill train``, ``distill`` and ``search`` run."""
    from . import distributed as dist

    hooks = build_hooks(cfg)
    dist.setup_distributed()
    main_rank = dist.is_main()
    try:
        result = Trainer(cfg, hooks).train()
    finally:
        dist.cleanup()
    return result, main_rank


def hook_factories() -> list[str]:
    return list(_FACTORIES)


@register_hook("distill")
def _distill(cfg):
    """Distillation (:class:`~segdistill.distill.hook.DistillHook`) when ``distill.teacher`` is set."""
    if not cfg.distill.teacher:
        return None
    from ..distill.hook import DistillHook

    return DistillHook(cfg)
