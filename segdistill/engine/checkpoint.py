"""Checkpoints that are written atomically and never run code when loaded.

Layout of a checkpoint (a plain dict saved with ``torch.save``)::

    format: "segdistill"      version: 1
    meta:   {model: {name, num_classes, width_mult, output_stride, aux, arch}, iteration, config, metrics}
    model:  the model's state dict
    (full checkpoints only) optimizer, scheduler, scaler, rng, trainer,
            hooks ({hook name: its state}; a list in hook order before 2026-12), hook_optimizers

``meta.model.arch`` is the model's architecture data (``model.arch_spec``: a genotype, a depth configuration ...),
so :func:`build_from_checkpoint` rebuilds any registered model from the checkpoint alone.

Everything in it is tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``.
Writes go to ``<name>.tmp`` in the same folder, are flushed to disk, then renamed over the target, so a run killed
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError

FORMAT = "segdistill"
VERSION = 1


def save_checkpoint(state: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"format": FORMAT, "version": VERSION, **state}
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left behind when writing failed
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a segdistill checkpoint safely (``weights_only=True``); clear errors for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path (runs keep last.pt and best.pt in their folder)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickled code, random bytes ...
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a safe segdistill checkpoint ({type(e).__name__}: {str(e)[:200]}); "
            "use another checkpoint (an older copy; to resume a run, its last.pt) or train again to write a new one"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a segdistill checkpoint (no 'format'/'model' entries)")
    return state


def model_meta(model, **extra) -> dict:
    """What is needed to rebuild ``model`` from a checkpoint alone (``extra``: width_mult, output_stride, aux)."""
    return {
        "name": getattr(model, "model_name", type(model).__name__),
        "num_classes": int(getattr(model, "num_classes", -1)),
        **extra,
        "arch": dict(getattr(model, "arch_spec", None) or {}),
    }


def check_compatible(state: dict, path, model: nn.Module, num_classes: int):
    """Refuse a checkpoint of another model, architecture or class count than ``model``."""
    meta = state.get("meta", {}).get("model", {})
    model_name = getattr(model, "model_name", type(model).__name__)
    if meta.get("name") != model_name:
        raise CheckpointError(
            f"checkpoint {path} holds a {meta.get('name')!r} model, not {model_name!r}; "
            "pick the checkpoint of this architecture or set model.name to match it"
        )
    arch = dict(getattr(model, "arch_spec", None) or {})
    if meta.get("arch", {}) != arch:
        raise CheckpointError(
            f"checkpoint {path} holds {model_name!r} with architecture {_short(meta.get('arch', {}))}, not "
            f"{_short(arch)}; set model.arch to the checkpoint's (its config.yaml has it) or pick another checkpoint"
        )
    if int(meta.get("num_classes", -1)) != int(num_classes):
        raise CheckpointError(
            f"checkpoint {path} was trained for {meta.get('num_classes')} classes, but this run has {num_classes}; "
            "use a checkpoint trained on this dataset's classes"
        )


def _short(obj, n: int = 160) -> str:
    text = repr(obj)
    return text if len(text) <= n else text[: n - 3] + "..."


def load_model_weights(model, state: dict, path):
    """load_state_dict with an error that names the file and the first mismatched keys."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        msg = str(e).split("\n")
        raise CheckpointError(f"checkpoint {path} does not fit the model: {' '.join(m.strip() for m in msg[:4])[:600]}") from None


def build_from_checkpoint(path: str | Path, map_location="cpu"):
    """Rebuild a model from a segdistill checkpoint alone. Returns (model in eval mode, checkpoint meta)."""
    from ..models import build_model

    state = load_checkpoint(path, map_location)
    meta = state.get("meta", {})
    m = meta.get("model", {})
    if "name" not in m:
        raise CheckpointError(f"checkpoint {path} does not record its model; it was not written by segdistill")
    model = build_model(
        m["name"], int(m["num_classes"]), width_mult=m.get("width_mult", 1.0),
        output_stride=m.get("output_stride"), aux=m.get("aux", False), **m.get("arch", {}),
    )
    load_model_weights(model, state, path)
    return model.eval(), meta


def model_or_checkpoint(spec: str, num_classes: int = 11, width_mult: float = 1.0):
    """A checkpoint path, or a registered model name (random weights; ``family:ARG`` names too, e.g.
    ``searched:genotype.json``). Returns (model in eval mode, checkpoint meta or {})."""
    from ..models import build_model, list_models

    if not Path(spec).is_file() and (spec in list_models() or ":" in spec):
        return build_model(spec, num_classes, width_mult=width_mult).eval(), {}
    return build_from_checkpoint(spec)


def state_fingerprint(module, skip_prefixes: tuple[str, ...] = ()) -> str:
    """sha256 (hex) of a module's state dict: every tensor's name, dtype, shape and bytes, except keys starting
    with ``skip_prefixes``. Identifies weights (a teacher for resume checks, the teacher cache's key)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if name.startswith(skip_prefixes):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
