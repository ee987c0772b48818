"""The Distiller: a student, a frozen teacher and the training-only parts, returning a dict of named losses.

Read it in the style of mdistiller: ``Distiller(student, teacher, cfg, ...)`` owns

* ``student``: the model being trained (the only thing a student checkpoint or an ONNX export holds);
* ``teacher``: frozen, always in eval mode (its BatchNorm statistics never change), no gradients;
* ``parts``: training-only modules stepped by the student's optimizer: feature adapters (CWD on features) and the
  HeteroAKD projectors of both sides;
* ``holistic``: SKD's discriminator, with its **own** Adam optimizer (``d_optimizer``), stepped by
  :meth:`discriminator_step` after each student step (one student step, then one D step).

``losses(images, masks, s_out, t_out, progress)`` asks both models' :class:`~segdistill.models.SegOutput` for
logits and features **by name** and returns ``{"kd_pixel": ..., "kd_pairwise": ..., ...}``, every term already
multiplied by its scheduled weight (``distill.<term>.weight`` times its schedule at ``progress``). Terms whose
weight is 0 are not computed. Spatial alignment is automatic: every loss module resizes the teacher's map to the
student's (bilinear); channel counts are bridged by 1x1 adapters (CWD on features) or need none (pair-wise
similarity, logits). :class:`DistillHook` plugs the Distiller into the one :class:`~segdistill.engine.trainer.Trainer`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DistillConfig, KDTerm
from ..engine import distributed as dist
from ..engine.checkpoint import build_from_checkpoint, load_checkpoint, state_fingerprint
from ..errors import CheckpointError, ConfigError
from ..models import SegOutput, build_model, list_models
from ..models.backbones import read_state_dict
from .hetero import HeteroAKD, LogitProjector
from .holistic import Discriminator, HolisticKD
from .losses import ChannelWiseKD, InterClassSimilarityKD, PairwiseKD, PixelKD, _match_target
from .schedules import WeightSchedule

#: Terms that need only the teacher's logits (so they can read them from the teacher-output cache).
LOGIT_TERMS = ("pixel", "cwd", "icsd", "holistic")
#: Terms that need the teacher's intermediate features (an online teacher).
FEATURE_TERMS = ("cwd_feat", "pairwise", "hetero")
TERMS = LOGIT_TERMS + FEATURE_TERMS


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
        self.schedules = {name: schedule_of(getattr(cfg, name)) for name in ("task", *TERMS)}
        self.active = [n for n in TERMS if getattr(cfg, n).weight != 0]
        self.parts = nn.ModuleDict()  # training-only, stepped by the student's optimizer
        self.fns: dict[str, nn.Module] = {}  # parameter-free loss modules
        for name in self.active:
            self._build(name)
        self.holistic = None
        if "holistic" in self.active:
            h = cfg.holistic
            d = Discriminator(num_classes, condition_on_image=h.condition_on_image, widths=tuple(h.widths))
            self.holistic = HolisticKD(d, gp_weight=h.gp_weight, l_ho=1.0)  # l_ho is the term's weight
            self.d_optimizer = torch.optim.Adam(d.parameters(), lr=h.lr, betas=tuple(h.betas))

    # ---- set-up
    def _feature(self, name: str, model: nn.Module, who: str) -> int:
        chans = getattr(model, "feature_channels", {})
        if name not in chans:
            raise ConfigError(f"the {who} ({type(model).__name__}) has no feature {name!r}; it has "
                              f"{', '.join(chans) or 'none'} (distill.*.feature / teacher_feature)")
        return int(chans[name])

    def _build(self, name: str):
        c = getattr(self.cfg, name)
        if name == "pixel":
            self.fns[name] = PixelKD(T=c.T, ignore_index=self.ignore_index)
        elif name == "cwd":
            self.fns[name] = ChannelWiseKD(T=c.T)
        elif name == "icsd":
            self.fns[name] = InterClassSimilarityKD(tau=c.tau)
        elif name == "cwd_feat":
            cs = self._feature(c.feature, self.student, "student")
            ct = self._feature(c.teacher_feature or c.feature, self.teacher, "teacher")
            self.parts["cwd_feat"] = ChannelWiseKD(T=c.T, student_channels=cs, teacher_channels=ct)
        elif name == "pairwise":
            self._feature(c.feature, self.student, "student")
            self._feature(c.teacher_feature or c.feature, self.teacher, "teacher")
            self.fns[name] = PairwiseKD(patch=c.patch)
        elif name == "hetero":
            if c.weight_over not in ("space", "classes"):
                raise ConfigError(f"distill.hetero.weight_over must be space or classes, not {c.weight_over!r}")
            for stage in c.stages:
                if stage == "logits":
                    continue
                self.parts[f"hetero_s_{stage}"] = LogitProjector(self._feature(stage, self.student, "student"), self.num_classes)
                self.parts[f"hetero_t_{stage}"] = LogitProjector(self._feature(stage, self.teacher, "teacher"), self.num_classes)
            self.fns[name] = HeteroAKD(self.num_classes, T=c.T, weight_over=c.weight_over, logit_kd_weight=c.logit_kd_weight,
                                       ignore_index=self.ignore_index)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # always: the teacher's BatchNorm statistics never change
        return self

    @property
    def needs_teacher_features(self) -> bool:
        return any(n in FEATURE_TERMS for n in self.active)

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
        z_s, z_t = s_out.logits, t_out.logits.detach().to(s_out.logits.dtype)
        for name in self.active:
            w = self.schedules[name](progress)
            if w == 0:
                continue
            c = getattr(self.cfg, name)
            if name == "pixel":
                out["kd_pixel"] = w * self.fns[name](z_s, z_t, masks)
            elif name == "cwd":
                out["kd_cwd"] = w * self.fns[name](z_s, z_t)
            elif name == "icsd":
                out["kd_icsd"] = w * self.fns[name](z_s, z_t)
            elif name == "holistic":
                img = images if c.condition_on_image else None
                zs_d, zt_d = _d_input(z_s, images), _d_input(z_t, images)
                self._last_maps = (zs_d.detach(), zt_d, img)
                out["kd_holistic"] = w * self.holistic.g_loss(zs_d, img)
            elif name == "cwd_feat":
                f_s, f_t = s_out.features[c.feature], t_out.features[c.teacher_feature or c.feature]
                out["kd_cwd_feat"] = w * self.parts["cwd_feat"](f_s, f_t)
            elif name == "pairwise":
                f_s, f_t = s_out.features[c.feature], t_out.features[c.teacher_feature or c.feature]
                out["kd_pairwise"] = w * self.fns[name](f_s, f_t)
            elif name == "hetero":
                out.update({k: w * v for k, v in self._hetero(c, s_out, t_out, masks).items()})
        return out

    def _hetero(self, c, s_out: SegOutput, t_out: SegOutput, masks) -> dict[str, torch.Tensor]:
        """HeteroAKD: each stage of both models projected into logits space at the student's logit grid; KMM + KEM
        per stage (``stage == "logits"`` uses the final logits as they are), plus pixel KD on the final logits.

        Design choice: the projectors are trained by a CE on the labels computed on *detached* features, so what
        reaches the student from this term is distillation only (no deep supervision in disguise); the student
        side also receives the KMM gradient through its projector."""
        size = s_out.logits.shape[-2:]
        akd: HeteroAKD = self.fns["hetero"]
        kmm, proj_ce = 0.0, 0.0
        for stage in c.stages:
            if stage == "logits":
                z_s, z_t = s_out.logits, t_out.logits
            else:
                f_s, f_t = s_out.features[stage], t_out.features[stage].detach()
                z_s = self.parts[f"hetero_s_{stage}"](f_s, size)
                z_t = self.parts[f"hetero_t_{stage}"](f_t, size)
                if c.proj_ce_weight:
                    z_sd = self.parts[f"hetero_s_{stage}"](f_s.detach(), size)
                    proj_ce = proj_ce + _ce(z_sd, masks, self.ignore_index) + _ce(z_t, masks, self.ignore_index)
            kmm = kmm + akd(z_s, z_t.detach(), masks)["kmm"]
        out = {"kd_hetero": kmm / max(1, len(c.stages)),
               "kd_hetero_logit": akd.logit_kd_weight * akd.pixel_kd(s_out.logits, t_out.logits, masks)}
        if c.proj_ce_weight:
            out["hetero_proj_ce"] = c.proj_ce_weight * proj_ce
        return out

    # ---- the discriminator's own step
    def discriminator_step(self) -> dict[str, float]:
        """One WGAN-GP step of SKD's discriminator on the maps of the student step just taken."""
        if self.holistic is None or getattr(self, "_last_maps", None) is None:
            return {}
        z_s, z_t, img = self._last_maps
        self._last_maps = None
        self.d_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(z_s.device.type, enabled=False):
            d_loss = self.holistic.d_loss(z_s.float(), z_t.float(), None if img is None else img.float())
        d_loss.backward()
        dist.average_gradients(self.holistic.parameters())
        self.d_optimizer.step()
        return {"d_loss": float(d_loss.detach())}


def _d_input(z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The map the discriminator scores: the logits at their own resolution (SKD scores 1/8 maps), upsampled
    to the image size when a side is under 16 pixels (the discriminator's four stride-2 convs need 16)."""
    if min(z.shape[-2:]) >= 16:
        return z
    return F.interpolate(z, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _ce(logits, masks, ignore_index):
    masks = _match_target(masks, logits)
    if not (masks != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, masks, ignore_index=ignore_index)
