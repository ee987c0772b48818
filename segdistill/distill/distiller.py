"""The Distiller: a student, a frozen teacher and the enabled KD terms, returning a dict of named losses.

Read it in the style of mdistiller: ``Distiller(student, teacher, cfg, ...)`` owns

* ``student``: the model being trained (the only thing a student checkpoint or an ONNX export holds);
* ``teacher``: frozen, always in eval mode (its BatchNorm statistics never change), no gradients;
* ``terms``: the enabled KD terms (``distill.<name>.weight != 0``), in run order, each a registered
  :class:`~segdistill.distill.terms.Term` (one file per term in :mod:`segdistill.distill.terms`). A term's
  training-only ``parts`` (feature adapters, projectors) are stepped by the student's optimizer
  (:meth:`part_parameters`); a term may also own an optimizer of its own (SKD's discriminator), stepped in
  :meth:`after_step`, after each student step.

``losses(images, masks, s_out, t_out, progress)`` hands every term the batch and both models'
:class:`~segdistill.models.SegOutput` (logits and features **by name**) and returns ``{"kd_pixel": ..., ...}``, each
term's losses multiplied by its scheduled weight (``distill.<term>.weight`` times its schedule at ``progress``).
Spatial alignment is automatic: every loss module resizes the teacher's map to the student's (bilinear); channel
counts are bridged by 1x1 adapters or need none. No term is named here: adding one is one new file.
:class:`DistillHook` plugs the Distiller into the one :class:`~segdistill.engine.trainer.Trainer`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..config import DistillConfig, KDTerm
from ..engine.checkpoint import build_from_checkpoint, load_checkpoint, state_fingerprint
from ..errors import CheckpointError, ConfigError
from ..models import SegOutput, build_model, list_models
from ..models.backbones import read_state_dict
from .schedules import WeightSchedule
from .terms import BuildContext, KDInputs, term_types


def schedule_of(term: KDTerm) -> WeightSchedule:
    """The weight schedule of a config term (linear start/end are factors on the weight)."""
    try:
        return WeightSchedule(term.schedule, value=term.weight, start=term.weight * term.start,
                              end=term.weight * term.end, side=term.side)
    except ValueError as e:
        raise ConfigError(f"distill term schedule: {e}") from None


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------- teacher loading
def load_teacher(cfg: DistillConfig, num_classes: int, class_names=None) -> tuple[nn.Module, dict]:
    """Build the frozen teacher from ``distill.teacher`` (a checkpoint path, or a model name plus
    ``distill.teacher_weights``) and refuse one whose classes differ from the dataset's."""
    spec = cfg.teacher
    if not spec:
        raise ConfigError("distill.teacher is not set: give a teacher checkpoint (distill.teacher=runs/x/best.pt) "
                          "or a model name with distill.teacher_weights=PATH")
    if spec in list_models() and not Path(spec).exists():
        if not cfg.teacher_weights:
            raise ConfigError(f"distill.teacher={spec!r} is a model name: also give its trained weights with "
                              "distill.teacher_weights=PATH (an untrained teacher teaches nothing)")
        path = Path(cfg.teacher_weights)
        try:  # a segdistill checkpoint (with its meta) ...
            state = load_checkpoint(path)
            meta, weights = state.get("meta", {}), state["model"]
        except CheckpointError:  # ... or a plain state dict (.pt / .safetensors)
            meta = {}
            weights = read_state_dict(path, "teacher weights")
            weights = {k.removeprefix("module."): v for k, v in weights.items()}
        k = _classes_in(weights)
        _check_classes(path, k, num_classes, meta, class_names)
        teacher = build_model(spec, num_classes, width_mult=cfg.teacher_width_mult,
                              output_stride=cfg.teacher_output_stride, aux=cfg.teacher_aux)
        weights = {key: v for key, v in weights.items() if not key.startswith("aux_head.")} if not cfg.teacher_aux else weights
        fit = f"teacher weights {path} do not fit {spec!r} (width {cfg.teacher_width_mult})"
        hint = "check distill.teacher, distill.teacher_width_mult and distill.teacher_aux"
        try:
            missing, unexpected = teacher.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"{fit}: {' '.join(str(e).split())[:300]}; {hint}") from None
        missing = [m for m in missing if not m.startswith("aux_head.")]
        if missing or unexpected:
            raise CheckpointError(f"{fit}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {hint}")
        desc = {"teacher": spec, "weights": str(path)}
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"distill.teacher={spec!r} is neither a checkpoint file nor a registered model name "
                              "(segdistill models lists them)")
        teacher, meta = build_from_checkpoint(path)
        _check_classes(path, int(meta["model"]["num_classes"]), num_classes, meta, class_names)
        desc = {"teacher": meta["model"]["name"], "weights": str(path)}
    desc["fingerprint"] = state_fingerprint(teacher, skip_prefixes=("aux_head.",))  # aux head: no part in eval outputs
    return freeze(teacher), desc


def _classes_in(weights: dict) -> int | None:
    """Class count of a raw state dict, read from its classifier (the last 4-d weight of ``head``)."""
    heads = [v for k, v in weights.items() if k.startswith("head.") and k.endswith("weight") and getattr(v, "ndim", 0) == 4]
    return int(heads[-1].shape[0]) if heads else None


def _check_classes(path, k_teacher, k_data, meta: dict, class_names):
    if k_teacher is not None and int(k_teacher) != int(k_data):
        raise ConfigError(
            f"teacher {path} predicts {k_teacher} classes, but the dataset and student have {k_data}; "
            "a teacher must be trained on the same classes: train or pick one on this dataset")
    names = (meta.get("data") or {}).get("class_names")
    if names and class_names and list(names) != list(class_names):
        raise ConfigError(
            f"teacher {path} was trained on classes {list(names)[:5]}..., not this dataset's {list(class_names)[:5]}...; "
            "a teacher must share the dataset's classes in the same order")


# ---------------------------------------------------------------------------- the Distiller
class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: DistillConfig, num_classes: int,
                 ignore_index: int = 255):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        types = term_types()
        self.schedules = {name: schedule_of(getattr(cfg, name)) for name in ("task", *types)}
        self.terms = nn.ModuleDict({name: cls(getattr(cfg, name)) for name, cls in types.items()
                                    if getattr(cfg, name).weight != 0})
        ctx = BuildContext(student, self.teacher, self.num_classes, ignore_index)
        for term in sorted(self.terms.values(), key=lambda t: t.build_order):
            term.build(ctx)

    @property
    def active(self) -> list[str]:
        """Names of the enabled terms, in run order."""
        return list(self.terms)

    def part_parameters(self) -> list[nn.Parameter]:
        """The terms' training-only parameters that the student's optimizer steps."""
        return [p for term in self.terms.values() for p in term.parts.parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # always: the teacher's BatchNorm statistics never change
        return self

    def terms_needing(self, what: str) -> list[str]:
        """Enabled terms whose ``needs`` include ``what`` (logits, images, features)."""
        return [name for name, term in self.terms.items() if what in term.needs]

    @property
    def needs_teacher_features(self) -> bool:
        return bool(self.terms_needing("features"))

    # ---- forward
    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> SegOutput:
        self.teacher.eval()
        return self.teacher(images)

    def task_weight(self, progress: float) -> float:
        return self.schedules["task"](progress)

    def forward(self, images, masks, progress: float = 0.0, teacher_logits: torch.Tensor | None = None):
        """Student forward plus every KD term: returns ``(student SegOutput, {name: weighted loss})``."""
        s_out = self.student(images)
        t_out = SegOutput(logits=teacher_logits) if teacher_logits is not None else self.teacher_forward(images)
        return s_out, self.losses(images, masks, s_out, t_out, progress)

    def losses(self, images, masks, s_out: SegOutput, t_out: SegOutput, progress: float) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        batch = KDInputs(images, masks, s_out, t_out)
        for name, term in self.terms.items():
            w = self.schedules[name](progress)
            if w != 0:
                out.update({k: w * v for k, v in term(batch).items()})
        return out

    def after_step(self) -> dict[str, float]:
        """Every term's step after the student's (e.g. SKD's discriminator step); values to log."""
        logged: dict[str, float] = {}
        for term in self.terms.values():
            logged.update(term.after_step())
        return logged

    # ---- checkpoints
    def term_states(self) -> dict[str, dict]:
        return {name: term.term_state() for name, term in self.terms.items()}

    def load_term_states(self, states: dict[str, dict]):
        """Load every enabled term's state; raises KeyError / RuntimeError when the saved terms differ from these."""
        saved = sorted(n for n, s in states.items() if _holds_state(s))
        mine = sorted(n for n, t in self.terms.items() if _holds_state(t.term_state()))
        if saved != mine:
            raise KeyError(f"the checkpoint holds state for the terms {saved}, this config's terms have {mine}")
        for name, term in self.terms.items():
            if name in states:
                term.load_term_state(states[name])


def _holds_state(state: dict) -> bool:
    """Whether a term's state holds anything (a term without parts or optimizer saves only empty mappings)."""
    return any(bool(v) for v in state.values())
