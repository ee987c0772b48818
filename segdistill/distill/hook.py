"""``DistillHook``: plugs a :class:`~segdistill.distill.distiller.Distiller` into the one trainer.

The trainer keeps training ``trainer.model`` (the student), so ``best.pt`` holds the student alone (what
``eval``, ``profile`` and ``export`` take), while ``last.pt`` also carries this hook's state,
``{"teacher": ..., "terms": {name: term state}}``: each term's training-only parts (and, for a term that owns one, its
optimizer, e.g. SKD's discriminator), and the teacher's fingerprint (a resume with another teacher is refused).
States written before terms were a registry (``{"teacher", "parts", "discriminator", "d_optimizer"}``) are
translated on load. With ``distill.cache`` set, the teacher's logits are read from the teacher-output cache (computed once
per training image, augmentation replayed) instead of running the teacher every step.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine import distributed as dist
from ..engine.trainer import Hook
from ..errors import CheckpointError, ConfigError
from ..models import SegOutput
from .distiller import Distiller, load_teacher


class DistillHook(Hook):
    name = "distill"

    def __init__(self, cfg):
        self.cfg = cfg
        self.distiller: Distiller | None = None
        self.cache = None
        self._out_sizes: dict = {}

    def setup(self, trainer):
        d = self.cfg.distill
        teacher, self.teacher_desc = load_teacher(d, trainer.num_classes, trainer.train_set.class_names)
        self.distiller = Distiller(trainer.model, teacher, d, trainer.num_classes, self.cfg.data.ignore_index)
        self.distiller.to(trainer.device)
        if d.cache not in (None, False, "off"):
            self._open_cache(trainer)
        if dist.is_main():
            terms = ", ".join(f"{n} x{getattr(d, n).weight:g} ({getattr(d, n).schedule})" for n in self.distiller.active)
            print(f"distilling from {self.teacher_desc['weights']} ({self.teacher_desc['teacher']}): "
                  f"{terms or 'no KD term (weights are all 0)'}{'; teacher cache on' if self.cache else ''}")

    def _open_cache(self, trainer):
        from .cache import TeacherCache

        d = self.cfg.distill
        feature_terms = self.distiller.terms_needing("features")
        if feature_terms:
            raise ConfigError(f"distill.cache keeps the teacher's logits only, but {', '.join(feature_terms)} need its "
                              "features: set distill.cache=off for these terms")
        folder = Path(self.cfg.train.out_dir) / "teacher_cache" if d.cache == "auto" else Path(d.cache)
        for building in (True, False):  # rank 0 builds (or finds) the cache, then the other ranks load it
            if dist.is_main() == building:
                self.cache = TeacherCache.build_or_load(
                    self.distiller.teacher, trainer.train_set, folder, device=trainer.device,
                    batch_size=self.cfg.data.batch_size, progress=building and self.cfg.train.progress)
            if building:
                dist.barrier()

    def parameters(self):
        return self.distiller.part_parameters()

    def task_weight(self, trainer) -> float:
        return self.distiller.task_weight(trainer.progress)

    def _teacher_size(self, hw) -> tuple[int, int]:
        """The teacher's logits size for an input of size ``hw`` (one dry run per new size)."""
        if hw not in self._out_sizes:
            x = torch.zeros(1, 3, *hw, device=next(self.distiller.teacher.parameters()).device)
            self._out_sizes[hw] = tuple(self.distiller.teacher_forward(x).logits.shape[-2:])
        return self._out_sizes[hw]

    def losses(self, trainer, images, masks, out):
        if self.cache is not None:
            batch = trainer.batch
            size = self._teacher_size(tuple(images.shape[-2:]))
            t_out = SegOutput(logits=self.cache.lookup(batch["index"], batch["geom"], size, images.device))
        else:
            t_out = self.distiller.teacher_forward(images)
        return self.distiller.losses(images, masks, out, t_out, trainer.progress)

    def before_step(self, trainer):
        dist.average_gradients(self.distiller.part_parameters())

    def after_step(self, trainer):
        return self.distiller.after_step()

    def state_dict(self) -> dict:
        return {"teacher": dict(self.teacher_desc), "terms": self.distiller.term_states()}

    def load_state_dict(self, state: dict):
        saved = state.get("teacher", {}).get("fingerprint")
        if saved and saved != self.teacher_desc["fingerprint"]:
            raise CheckpointError(
                f"this run was distilled from another teacher ({state['teacher'].get('weights')}), not "
                f"{self.teacher_desc['weights']}; resume with the original teacher or start a new out_dir")
        try:
            terms = state["terms"] if "terms" in state else self._terms_from_v1(state)
            self.distiller.load_term_states(terms)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's distillation state does not match this config's KD terms ({e}); "
                                  "resume with the config the run was started with") from None

    def _terms_from_v1(self, state: dict) -> dict[str, dict]:
        """Per-term states out of a v1 hook state (one flat ``parts`` state for every term, keyed by part name, plus
        the holistic term's ``discriminator`` and ``d_optimizer``): each enabled term takes its own entries."""
        terms = {name: term.state_from_v1(state) for name, term in self.distiller.terms.items()}
        taken = {k for s in terms.values() for k in s["parts"]}
        left = sorted(set(state.get("parts", {})) - taken)
        if left:
            raise KeyError(f"parts {left[:3]} of no enabled term")
        return terms
