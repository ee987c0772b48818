"""What a KD term is, and the registry that finds one by name.

A term is a small :class:`Term` subclass registered with ``@register_term("name")``. It declares

* ``Config``: its config dataclass, a :class:`~segdistill.config.KDTerm` subclass (weight and schedule, plus the
  term's own settings); it becomes the ``distill.<name>`` section (YAML and ``distill.<name>.<key>=value``);
* ``needs``: what it reads, some of ``"logits"``, ``"images"`` and ``"features"`` (the teacher's intermediate
  features: an online teacher, so the teacher-output cache, which keeps logits only, cannot serve it);
* :meth:`Term.build`: given the student, teacher, class count and ignore index (a :class:`BuildContext`), it makes its
  parameter-free loss functions and its training-only modules, the latter in ``self.parts`` (stepped by the student's
  optimizer, saved in checkpoints, never exported);
* :meth:`Term.forward`: one batch (:class:`KDInputs`) -> ``{"kd_<name>": loss, ...}``, **unweighted**: the Distiller
  multiplies every value by the term's scheduled weight;
* optionally :meth:`Term.after_step` (called once after each student step; may step the term's own optimizer and
  return values to log) and :meth:`Term.term_state` / :meth:`Term.load_term_state` for what ``parts`` does not hold.

Terms run in registration order (the built-in ones as imported by :mod:`segdistill.distill.terms`, then any registered
later, e.g. from a plugin or a test file). Adding a term is one new file: the Distiller, the hook and the config know
terms only through this interface.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...config import KDTerm, described
from ...errors import ConfigError
from ...models import SegOutput

NEEDS = frozenset({"logits", "images", "features"})

_REGISTRY: dict[str, type[Term]] = {}


def register_term(name: str):
    """Class decorator: register a :class:`Term` subclass as ``distill.<name>``."""

    def deco(cls: type[Term]) -> type[Term]:
        if not name.isidentifier():
            raise ValueError(f"KD term name {name!r} must be an identifier (it is a config key: distill.{name}.weight)")
        if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, KDTerm)):
            raise TypeError(f"KD term {name!r}: Config must be a dataclass subclassing KDTerm, not {cls.Config!r}")
        if not cls.needs or not set(cls.needs) <= NEEDS:
            raise TypeError(f"KD term {name!r}: needs must be some of {sorted(NEEDS)}, not {set(cls.needs)}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a KD term named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_term(name: str):
    """Remove a registered term (for plugins and tests that register one for a while)."""
    _REGISTRY.pop(name, None)


def term_types() -> dict[str, type[Term]]:
    """Every registered term, in run order."""
    return dict(_REGISTRY)


def term_configs() -> dict[str, type[KDTerm]]:
    """``{name: config dataclass}`` of every registered term (the ``distill.<name>`` sections)."""
    return {name: cls.Config for name, cls in _REGISTRY.items()}


def get_term(name: str) -> type[Term]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown KD term {name!r}; known terms: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


@dataclass
class BuildContext:
    """What a term's :meth:`Term.build` may look at."""

    student: nn.Module
    teacher: nn.Module
    num_classes: int
    ignore_index: int = 255

    def channels(self, feature: str, who: str) -> int:
        """Channel count of ``feature`` on the ``"student"`` or the ``"teacher"``; a ConfigError naming the
        features the model has when it lacks this one."""
        model = self.student if who == "student" else self.teacher
        chans = getattr(model, "feature_channels", {})
        if feature not in chans:
            raise ConfigError(f"the {who} ({type(model).__name__}) has no feature {feature!r}; it has "
                              f"{', '.join(chans) or 'none'} (distill.*.feature / teacher_feature)")
        return int(chans[feature])


@dataclass
class KDInputs:
    """One batch as every term sees it: images, labels, and both models' outputs (features by name)."""

    images: torch.Tensor
    masks: torch.Tensor
    student: SegOutput
    teacher: SegOutput

    @property
    def z_s(self) -> torch.Tensor:
        return self.student.logits

    @property
    def z_t(self) -> torch.Tensor:
        """The teacher's logits, detached, in the student's dtype."""
        return self.teacher.logits.detach().to(self.student.logits.dtype)


class Term(nn.Module):
    """Base of every KD term (see the module docstring). ``self.cfg`` is the term's ``distill.<name>`` section."""

    name: str = ""  # set by register_term
    Config: type[KDTerm] = KDTerm
    needs: frozenset[str] = frozenset({"logits"})
    #: Terms are built in ascending ``build_order`` (ties: run order). A term owning an optimizer (SKD's
    #: discriminator) is built after the rest, so every initialisation draws the same random numbers as before terms
    #: were a registry.
    build_order: int = 0

    def __init__(self, cfg: KDTerm):
        super().__init__()
        self.cfg = cfg
        self.parts = nn.ModuleDict()  # training-only, stepped by the student's optimizer

    def build(self, ctx: BuildContext):
        """Make the loss functions and ``self.parts`` (see the module docstring)."""

    def forward(self, x: KDInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self) -> dict[str, float]:
        """Called once after each student step; returns values to log."""
        return {}

    # ---- checkpoints
    def term_state(self) -> dict:
        return {"parts": self.parts.state_dict()}

    def load_term_state(self, state: dict):
        self.parts.load_state_dict(state["parts"])

    def state_from_v1(self, hook_state: dict) -> dict:
        """This term's state out of a hook state written before terms were a registry (v1: one flat ``parts`` dict
        keyed by part name for every term, plus the holistic term's ``discriminator`` and ``d_optimizer``)."""
        return {"parts": {k: v for k, v in hook_state.get("parts", {}).items() if k.split(".", 1)[0] in self.parts}}


@dataclass
class FeatureConfig(KDTerm):
    """Settings of a term on a pair of intermediate features."""

    feature: str = described("pre_logits", "student feature name from the output contract (stem, stage1..4, pre_logits)")
    teacher_feature: str | None = described(None, "teacher feature name; null: the same name as feature")


class FeatureTerm(Term):
    """A term on one student feature and one teacher feature, named by ``cfg.feature`` / ``cfg.teacher_feature``."""

    Config = FeatureConfig
    needs = frozenset({"features"})

    @property
    def teacher_feature(self) -> str:
        return self.cfg.teacher_feature or self.cfg.feature

    def feature_channels(self, ctx: BuildContext) -> tuple[int, int]:
        """``(student channels, teacher channels)``; a ConfigError when a model lacks its feature."""
        return ctx.channels(self.cfg.feature, "student"), ctx.channels(self.teacher_feature, "teacher")

    def features(self, x: KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return x.student.features[self.cfg.feature], x.teacher.features[self.teacher_feature]
