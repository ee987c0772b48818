"""Backbones (ResNet, MobileNetV2, MiT) and loading ImageNet weights into them from a local file.

Every backbone's ``forward`` returns an ordered dict of named maps (``stem``?, ``stage1`` .. ``stage4``) and carries
``feature_channels`` / ``feature_strides`` dicts and its ``width_mult``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ...errors import CheckpointError, ConfigError
from .mit import MixVisionTransformer, mit, mit_b0, mit_b1, mit_b2
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import ResNet, resnet, resnet18, resnet34, resnet50, resnet101

__all__ = [
    "build_backbone", "load_backbone_weights", "ResNet", "MobileNetV2", "MixVisionTransformer",
    "resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2", "mit_b0", "mit_b1", "mit_b2",
]

# classifier weights of ImageNet checkpoints: never part of a segmentation backbone
_IGNORED_PREFIXES = ("fc.", "classifier.", "head.")
_STRIP_PREFIXES = ("module.", "backbone.")
_SHOW = 5  # keys listed per kind in an error message


def build_backbone(arch: str, width_mult: float = 1.0, output_stride: int = 32, **kw) -> nn.Module:
    """``resnet18|34|50|101``, ``mobilenetv2`` or ``mit_b0|1|2``. MiT ignores ``output_stride`` (always 32)."""
    if arch.startswith("resnet"):
        return resnet(arch, width_mult=width_mult, output_stride=output_stride, **kw)
    if arch == "mobilenetv2":
        return mobilenetv2(width_mult=width_mult, output_stride=output_stride, **kw)
    if arch.startswith("mit_"):
        return mit(arch, width_mult=width_mult, **kw)
    raise ConfigError(f"unknown backbone {arch!r}")


def read_state_dict(path: Path, what: str = "backbone weights") -> dict:
    """A name -> tensor dict from a .pt/.pth (loaded with weights_only) or .safetensors file, unwrapping
    ``{"state_dict": ...}`` / ``{"model": ...}``; clear errors naming ``path`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist; give the local path of a state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file becomes one clear error)
        raise CheckpointError(f"could not read {what} {path}: {type(e).__name__}: {str(e)[:300]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{what} {path} hold no state dict (expected name -> tensor, or {{'state_dict'|'model': ...}})"
        )
    return state


def _clean_keys(state: dict) -> dict:
    """Strip ``module.`` (DataParallel) and keep only ``backbone.*`` when a whole segmentation model was saved."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}


def _head(keys, n=_SHOW) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> dict:
    """Load ImageNet weights from a local file into ``backbone`` (strictly, except classifier keys).

    Accepts ``torch.save`` files (read with ``weights_only=True``) and ``.safetensors``; a raw state dict or one
    under ``"state_dict"`` / ``"model"``. ``module.`` and ``backbone.`` prefixes are stripped and ``fc.*`` /
    ``classifier.*`` / ``head.*`` keys ignored. A missing BN ``num_batches_tracked`` (old torchvision files) is fine.

    Returns ``{"loaded": n_tensors, "ignored": n_ignored}``. Raises :class:`CheckpointError` naming the file and the
    first missing / unexpected / shape-mismatched keys when the weights do not fit.
    """
    path = Path(path)
    width = getattr(backbone, "width_mult", 1.0)
    if width != 1.0:
        raise CheckpointError(
            f"backbone weights {path} are for width_mult=1.0 but this backbone has width_mult={width:g}; "
            "set width_mult=1.0 or train without pretrained weights"
        )
    raw = read_state_dict(path)
    state = _clean_keys(raw)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_head(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape (file vs model): {_head(mismatched)}")
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise CheckpointError(
            f"backbone weights {path} do not fit {arch}: " + "; ".join(parts)
            + ". Use the ImageNet state dict of the same architecture"
        )
    backbone.load_state_dict(state, strict=False)
    return {"loaded": len(state), "ignored": len(raw) - len(state)}
