"""Build models by name, timm-style: ``build_model("deeplabv3plus_resnet50", num_classes=11)``.

A model family registers a builder with :func:`register_model`. Each builder takes ``num_classes`` plus keyword
options (``width_mult``, ``output_stride``, ``aux``, ``pretrained_backbone`` ...) and returns an ``nn.Module`` whose
forward returns a :class:`segdistill.models.output.SegOutput`.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_UNLISTED: set[str] = set()  # buildable by name (checkpoints) but not listed: training-only models (a supernet)


def register_model(name: str, listed: bool = True):
    def deco(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        if not listed:
            _UNLISTED.add(name)
        return fn

    return deco


def list_models() -> list[str]:
    """The deployable models (not the unlisted training-only ones, e.g. the search's ``chain_supernet``)."""
    _import_zoo()
    return sorted(n for n in _REGISTRY if n not in _UNLISTED)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    _import_zoo()
    family, sep, arg = name.partition(":")
    if sep and name not in _REGISTRY and family in _REGISTRY:  # "family:arg", e.g. "searched:genotype.json"
        name, kwargs = family, {**kwargs, "genotype": arg}
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; `segdistill models` lists the {len(_REGISTRY)} known ones")
    if kwargs.get("output_stride", 0) is None:  # None means the model's own default
        del kwargs["output_stride"]
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints so a mismatched load is caught
    model.num_classes = num_classes
    # Architecture as data: the builder options beyond the common ones, recorded in checkpoints (model_meta) so the
    # same model is rebuilt from best.pt. A builder may set ``model.arch_spec`` itself (e.g. a genotype file read into
    # the mapping it holds, so the checkpoint does not depend on the file).
    if not getattr(model, "arch_spec", None):
        model.arch_spec = {k: v for k, v in kwargs.items() if k not in COMMON_OPTIONS}
    return model


#: Options every builder takes; anything else is architecture data (``model.arch_spec``).
COMMON_OPTIONS = ("width_mult", "output_stride", "aux", "pretrained", "pretrained_backbone")


def _import_zoo():
    from ..dynamic import mobilenet as _ddnn_mbv2  # noqa: F401  (ddnn_*_mobilenetv2)
    from ..dynamic import model as _ddnn  # noqa: F401  (ddnn_* depth-level dynamic networks)
    from . import searched, zoo  # noqa: F401  (registers every builder)
