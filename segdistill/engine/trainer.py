"""The one trainer: iteration-based training of a segmentation model, with hooks for distillation and search.

Read top to bottom: set-up (data, model, optimizer, schedule), then the loop (forward, named losses, backward,
step, log, validate, checkpoint). Methods never get their own copy of this loop: they plug in through :class:`Hook`.

Exact resume: a full checkpoint holds the model, optimizer, scheduler, grad scaler, every RNG state and the
iteration. Data order and augmentation are pure functions of (seed, epoch, index), and the sampler can start
mid-epoch, so a run killed at any moment and resumed from its last checkpoint repeats the never-stopped run's losses.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from ..config import Config, save_config, to_dict, validate
from ..data import build_dataset
from ..errors import CheckpointError, ConfigError, DataError, DivergenceError
from ..models import build_model
from . import distributed as dist
from .checkpoint import check_compatible, load_checkpoint, load_model_weights, model_meta, save_checkpoint
from .evaluate import evaluate
from .losses import SegLoss


class Hook:
    """Extension point. Distillation, search and dynamic networks subclass this instead of copying the loop.

    Every hook has a ``name`` (unique in a run; the class name in lower case unless set). Its checkpoint state is
    stored under that name, and other hooks find it with ``trainer.hook(name)`` (e.g. a structural term reading the
    search's architecture weights). The points, in the order the trainer calls them:

    Set-up (once):

    0. ``train_indices(trainer, n) -> list[int] | None``: the dataset indices (of the train split's ``n``) that the
       trainer's loop draws from; ``None``: all of them. The first hook that returns a list wins (e.g. a search that
       keeps the other half for its architecture steps). Order and resume stay pure functions of (seed, epoch).
    1. ``wrap_model(trainer, model) -> model``: the model is built and on its device, not yet wrapped in DDP. Return
       it, or a module that replaces or wraps it (e.g. a supernet); what is returned is ``trainer.model``, the module
       that is trained, validated and saved in ``best.pt``.
    1b. ``train_module(trainer, model) -> module``: the module that a training step calls, ``trainer.ddp_model``
       (wrapped in DDP when distributed); default: ``model`` (= ``trainer.model``) itself. A hook that runs the model
       several times per step returns a module whose *one* call runs them all (e.g. EKD's full net and sub-nets), as
       DDP expects one forward per backward. It must own no parameters or buffers besides the model's: checkpoints,
       validation and ``best.pt`` use ``trainer.model``, never this module.
    2. ``setup(trainer)``: build training-only modules (teachers, adapters, discriminators, architecture weights).
    3. ``parameters()``: training-only parameters that join the main optimizer (default decay rules).
       ``param_groups()``: parameter groups that join it with their own settings, as torch param-group dicts
       (``{"params": [...], "lr": 0.001, "weight_decay": 0.0}``; the lr schedule scales every group alike).
       Parameters that need an optimizer of their own (architecture weights under Adam, a discriminator) are
       stepped by the hook itself; list those optimizers in ``optimizers()`` (name -> optimizer) so that the
       trainer saves and restores their state with the run. Parameters held by a hook's optimizer are kept out
       of the main optimizer (and its gradient clipping), even when they belong to the model.
    4. ``on_train_start(trainer)``: the optimizer exists; resume (if any) happens right after this.

    Per iteration:

    5. ``forward(trainer, images, masks) -> (out, losses) | None``: run the model. The first hook that returns a
       pair replaces the trainer's own ``out = model(images); losses = criterion(out, masks)``: a hook may run the
       model several times per step (the full net and its sub-nets) and return every named loss. ``None``: the
       trainer's forward.
    6. ``task_weight(trainer) -> float``: a factor on the task losses of step 5.
    7. ``losses(trainer, images, masks, out) -> {name: tensor}``: extra named loss terms, added to the total and
       logged (the whole batch dict is ``trainer.batch``).
    8. ``before_step(trainer)``: after backward, before the optimizer step (e.g. average hook gradients over ranks).
    9. ``after_step(trainer) -> dict | None``: after the optimizer step; may step its own optimizers (an
       architecture step on another batch, a discriminator step) and return values to log.

    Validation (every ``train.val_interval``):

    10. ``on_validate(trainer, metrics) -> metrics``: the validation metrics of ``trainer.model``; a hook may add
        entries (e.g. ``miou@depth18``) and set ``metrics["score"]`` to choose what "best" means (default: ``miou``).
        ``best.pt`` is written when the score improves.

    Checkpoints: ``state_dict()`` / ``load_state_dict(state)`` put the hook's own state (discriminators,
    architecture weights ...) into full checkpoints, under its name.
    """

    name: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__.lower()

    def train_indices(self, trainer: "Trainer", n: int) -> list[int] | None:
        return None

    def wrap_model(self, trainer: "Trainer", model: nn.Module) -> nn.Module:
        return model

    def train_module(self, trainer: "Trainer", model: nn.Module) -> nn.Module:
        return model

    def setup(self, trainer: "Trainer"):
        pass

    def parameters(self) -> list:
        return []

    def param_groups(self) -> list[dict]:
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def on_train_start(self, trainer: "Trainer"):
        pass

    def forward(self, trainer: "Trainer", images, masks):
        return None

    def task_weight(self, trainer: "Trainer") -> float:
        return 1.0

    def losses(self, trainer: "Trainer", images, masks, out) -> dict[str, torch.Tensor]:
        return {}

    def before_step(self, trainer: "Trainer"):
        pass

    def after_step(self, trainer: "Trainer") -> dict | None:
        return None

    def on_validate(self, trainer: "Trainer", metrics: dict) -> dict:
        return metrics

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way through an epoch (for exact resume); with ``indices``, it
    shuffles and shares those dataset indices only."""

    def __init__(self, dataset, num_replicas, rank, seed, indices: list[int] | None = None):
        self.indices = None if indices is None else [int(i) for i in indices]
        super().__init__(dataset if indices is None else range(len(self.indices)), num_replicas=num_replicas,
                         rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int):
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        order = list(super().__iter__())
        if self.indices is not None:
            order = [self.indices[i] for i in order]
        return iter(order[self.start:])

    def __len__(self):
        return self.num_samples - self.start


def poly_lr_lambda(total_iters: int, warmup_iters: int, warmup_ratio: float, power: float, min_ratio: float):
    """Linear warm-up from ``warmup_ratio`` to 1, then poly decay (1 - t/T)^power down to ``min_ratio``."""

    def fn(it: int) -> float:
        if it < warmup_iters:
            return warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
        decay = (1 - min(it, total_iters) / total_iters) ** power
        return (1 - min_ratio) * decay + min_ratio

    return fn


def build_optimizer(params, cfg, extra_groups: list[dict] = ()) -> torch.optim.Optimizer:
    """SGD or AdamW; biases and norm weights (1-d tensors) get no weight decay. ``extra_groups``: torch param-group
    dicts with their own settings (``lr``, ``weight_decay`` ...), added as they are."""
    taken = {id(p) for g in extra_groups for p in g["params"]}
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad and id(p) not in taken:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              *[dict(g) for g in extra_groups]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ConfigError(f"optim.name must be sgd or adamw, not {cfg.name!r}")


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": list(py_state),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no GPU is visible; use train.device=cpu")
    if name == "cuda" and dist.is_dist():
        name = f"cuda:{dist.local_rank()}"
    return torch.device(name)


@dataclass
class TrainState:
    iteration: int = 0
    best_miou: float = -math.inf  # the best validation score so far (mIoU unless a hook sets "score")
    history: list = field(default_factory=list)
    # Wall seconds of the training kept so far (iterations, validation, checkpoints), carried across resumes: work done
    # after the last checkpoint of a killed run is not counted, work done again after a resume is counted once. NaN
    # for a run resumed from a checkpoint written before this was recorded.
    wall_s: float = 0.0


@contextmanager
def out_dir_lock(out_dir: Path):
    """An exclusive lock on ``out_dir/.train.lock`` (``fcntl.flock``; released when the block ends or the process
    dies), so that two trainings never write one run folder (checkpoints, logs) at once. Where ``fcntl`` is missing
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".train.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(f"{out_dir} is being written by another training (process {holder}, lock {path}): "
                              "wait for it to finish, or give this run another train.out_dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Trainer:
    def __init__(self, cfg: Config, hooks: list[Hook] | None = None):
        validate(cfg)  # every value in its allowed range before any work starts
        self.cfg = cfg
        self.hooks = list(hooks or [])
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise ConfigError(f"hook names must be unique in a run, got {names}; set a distinct `name` on each hook")
        self.out_dir = Path(cfg.train.out_dir)
        self.state = TrainState()
        self._wall_mark: float | None = None  # where state.wall_s was last brought up to date (None: not training)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed + dist.rank())

        # ---- data: checked before any training starts
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
        self.val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
        if dist.is_main():
            self.train_set.validate()
            self.val_set.validate()
        self.num_classes = self.train_set.num_classes
        indices = next((i for h in self.hooks if (i := h.train_indices(self, len(self.train_set))) is not None), None)
        n_train = len(self.train_set) if indices is None else len(indices)
        per_rank = math.ceil(n_train / dist.world_size())
        if per_rank < cfg.data.batch_size:
            part = "" if indices is None else f" (the {n_train} the training loop uses)"
            raise DataError(
                f"split {cfg.data.train_split!r} of {cfg.data.root or cfg.data.name} has {len(self.train_set)} images"
                f"{part}, fewer than one batch of {cfg.data.batch_size} per process; lower data.batch_size"
            )
        self.iters_per_epoch = per_rank // cfg.data.batch_size
        self.sampler = ResumableSampler(self.train_set, dist.world_size(), dist.rank(), cfg.train.seed, indices)

        # ---- model, optimizer, schedule, precision
        m = cfg.model
        model = build_model(
            m.name, self.num_classes, width_mult=m.width_mult, output_stride=m.output_stride, aux=m.aux,
            pretrained=m.pretrained, **m.arch,
        ).to(self.device)
        for h in self.hooks:
            model = h.wrap_model(self, model)
        self.model = model
        if m.sync_bn and dist.is_dist():
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                warnings.warn("model.sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only); using per-process BatchNorm")
        self.model.to(self.device)
        self.criterion = SegLoss(
            cfg.data.ignore_index, cfg.loss.aux_weight, cfg.loss.ohem, cfg.loss.ohem_thresh, cfg.loss.ohem_min_kept, cfg.loss.class_weights
        ).to(self.device)
        step_module = self.model  # what a training step calls; hooks may wrap it (Hook.train_module)
        for h in self.hooks:
            step_module = h.train_module(self, step_module)
        self.ddp_model = (
            nn.parallel.DistributedDataParallel(step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist.is_dist()
            else step_module
        )
        for h in self.hooks:
            h.setup(self)
        self.optimizer = build_optimizer(self.trainable_parameters(), cfg.optim,
                                         extra_groups=[g for h in self.hooks for g in h.param_groups()])
        o = cfg.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lr_lambda(cfg.train.iters, o.warmup_iters, o.warmup_ratio, o.power, o.min_lr / o.lr if o.lr else 0.0)
        )
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp, "bad")
        if self.amp_dtype == "bad":
            raise ConfigError(f"train.amp must be none, bf16 or fp16, not {cfg.train.amp!r}")
        if self.amp_dtype is not None and self.device.type != "cuda":
            warnings.warn(f"train.amp={cfg.train.amp} needs CUDA; training in fp32 on {self.device}")
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        for h in self.hooks:
            h.on_train_start(self)
        if cfg.train.resume == "auto":
            if (self.out_dir / "last.pt").exists():
                self.resume(self.out_dir / "last.pt")
            elif dist.is_main():
                print(f"train.resume=auto: no {self.out_dir / 'last.pt'} yet, starting a new run")
        elif cfg.train.resume:
            self.resume(Path(cfg.train.resume))

    def trainable_parameters(self):
        """The model's parameters plus the hooks' training-only ones (adapters, projectors ...) that the main
        optimizer steps with the default rules (not those of ``param_groups``, nor those the hooks' own optimizers
        hold, e.g. a supernet's architecture weights)."""
        own = {id(p) for h in self.hooks for o in h.optimizers().values() for g in o.param_groups for p in g["params"]}
        return [p for p in [*self.model.parameters(), *(p for h in self.hooks for p in h.parameters())] if id(p) not in own]

    def hook(self, name: str) -> Hook:
        """The hook called ``name`` in this run (hooks read each other's state through this)."""
        for h in self.hooks:
            if h.name == name:
                return h
        raise KeyError(f"no hook {name!r} in this run (hooks: {', '.join(h.name for h in self.hooks) or 'none'})")

    @property
    def progress(self) -> float:
        """Training progress in [0, 1]: iterations done / train.iters."""
        return self.state.iteration / max(1, self.cfg.train.iters)

    # ------------------------------------------------------------------ checkpoints
    def meta(self) -> dict:
        m = self.cfg.model
        return {
            "model": model_meta(
                self.model, width_mult=m.width_mult, output_stride=getattr(self.model, "output_stride", m.output_stride),
                aux=m.aux,
            ),
            "iteration": self.state.iteration,
            "config": to_dict(self.cfg),
            "data": {
                "mean": self.cfg.data.mean,
                "std": self.cfg.data.std,
                "resize": self.cfg.data.resize,
                "class_names": list(self.train_set.class_names),
                "palette": [list(map(int, c)) for c in self.train_set.palette],
                "ignore_index": self.cfg.data.ignore_index,
            },
        }

    def save(self, name: str, full: bool = True, metrics: dict | None = None):
        if not dist.is_main():
            return
        state = {"meta": {**self.meta(), "metrics": metrics or {}}, "model": self.model.state_dict()}
        if full:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_state(),
                trainer={"iteration": self.state.iteration, "best_miou": self.state.best_miou, "wall_s": self._wall()},
                hooks={h.name: h.state_dict() for h in self.hooks},
                hook_optimizers={f"{h.name}/{k}": o.state_dict() for h in self.hooks for k, o in h.optimizers().items()},
            )
        save_checkpoint(state, self.out_dir / name)

    def resume(self, path: Path):
        state = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in state:
            raise CheckpointError(f"{path} is a weights-only checkpoint; resume needs a full one (last.pt)")
        check_compatible(state, path, self.model, self.num_classes)
        load_model_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.state.iteration = int(state["trainer"]["iteration"])
        self.state.best_miou = float(state["trainer"]["best_miou"])
        self.state.wall_s = float(state["trainer"].get("wall_s", math.nan))
        self._load_hook_states(state, path)
        self._truncate_log(self.state.iteration)
        if dist.is_main():
            print(f"resumed from {path} at iteration {self.state.iteration}")

    def _load_hook_states(self, state: dict, path):
        """Hook states by name (checkpoints before 2026-12 stored a list in hook order: read by position)."""
        saved = state.get("hooks", {})
        if isinstance(saved, list):
            saved = {h.name: s for h, s in zip(self.hooks, saved)}
        unknown = sorted(n for n, s in saved.items() if s and n not in {h.name for h in self.hooks})
        if unknown:
            raise CheckpointError(f"checkpoint {path} holds state of hook(s) {unknown} that this run does not have "
                                  f"(this run's: {[h.name for h in self.hooks]}); resume with the command and config "
                                  "that started the run (train vs distill/search)")
        for h in self.hooks:
            if h.name in saved:
                h.load_state_dict(saved[h.name])
            for k, opt in h.optimizers().items():
                key = f"{h.name}/{k}"
                if key not in state.get("hook_optimizers", {}):
                    raise CheckpointError(f"checkpoint {path} has no state for the optimizer {key!r}; it was written by "
                                          "another configuration: resume with the config that started the run")
                opt.load_state_dict(state["hook_optimizers"][key])

    # ------------------------------------------------------------------ logging
    def _truncate_log(self, iteration: int):
        """Drop log lines written after the checkpoint we resume from, so the log reads as one run."""
        log = self.out_dir / "metrics.jsonl"
        if dist.is_main() and log.exists():
            lines = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln).get("iter", 0) <= iteration]
            log.write_text("".join(ln + "\n" for ln in lines))

    def log(self, record: dict):
        if not dist.is_main():
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "iter" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["iter"])

    # ------------------------------------------------------------------ the loop
    def compute_losses(self, images, masks) -> dict[str, torch.Tensor]:
        for h in self.hooks:
            res = h.forward(self, images, masks)
            if res is not None:
                out, losses = res
                break
        else:
            out = self.ddp_model(images)
            losses = self.criterion(out, masks)
        w = math.prod(h.task_weight(self) for h in self.hooks)
        if w != 1.0:
            losses = {k: w * v for k, v in losses.items()}
        for h in self.hooks:
            losses.update(h.losses(self, images, masks, out))
        return losses

    def train_step(self, batch) -> dict[str, float]:
        self.batch = batch
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        self.model.train()
        amp = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with amp:
            losses = self.compute_losses(images, masks)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            last = self.out_dir / "last.pt"
            raise DivergenceError(
                f"loss became {loss.item()} at iteration {self.state.iteration + 1} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); "
                f"the last good checkpoint is kept at {last if last.exists() else '(none written yet)'}. "
                "Lower optim.lr, set optim.clip_grad, or use train.amp=bf16 instead of fp16, then resume with train.resume=auto"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for h in self.hooks:
            h.before_step(self)
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def evaluate(self, model: nn.Module | None = None) -> dict:
        """Metrics of ``model`` (default: the trained model) on the validation split, with the eval settings."""
        return evaluate(
            model if model is not None else self.model, self.val_set, self.cfg.eval, self.device, self.num_classes,
            self.cfg.data.ignore_index, progress=False,
        )

    def validate(self) -> dict:
        """Validation metrics after every hook's ``on_validate``; ``score`` (default ``miou``) decides "best"."""
        metrics = self.evaluate()
        base = set(metrics)
        for h in self.hooks:
            metrics = h.on_validate(self, metrics)
        metrics.setdefault("score", metrics["miou"])
        metrics["hook_keys"] = sorted(set(metrics) - base - {"score"})
        return metrics

    def loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.sampler.set_position(epoch, start_batch * self.cfg.data.batch_size)
        self.train_set.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.data.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.train.seed + epoch),  # keeps the global RNG untouched
        )

    def train(self) -> dict:
        """Train to ``train.iters``; the run folder is locked (``out_dir_lock``) while this process writes to it."""
        with out_dir_lock(self.out_dir) if dist.is_main() else nullcontext():
            return self._train()

    def _train(self) -> dict:
        cfg = self.cfg.train
        self.tb = None
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:  # tensorboard is optional (extra tb)
                warnings.warn("tensorboard is not installed (pip install 'segdistill[tb]'); logging to metrics.jsonl only")
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.iters, initial=self.state.iteration, disable=not (cfg.progress and dist.is_main()),
            desc=f"train {self.cfg.model.name}", dynamic_ncols=True,
        )
        metrics: dict = {}
        t_last, n_last = time.perf_counter(), 0
        self._wall_mark = t_last
        while self.state.iteration < cfg.iters:
            epoch, start = divmod(self.state.iteration, self.iters_per_epoch)
            for batch in self.loader(epoch, start):
                values = self.train_step(batch)
                self.state.iteration += 1
                it = self.state.iteration
                n_last += batch["image"].shape[0] * dist.world_size()
                for h in self.hooks:
                    values.update(h.after_step(self) or {})
                if it % cfg.log_interval == 0 or it == cfg.iters:
                    if dist.is_dist():  # log the mean over ranks, not rank 0's share
                        mean = dist.all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64))
                        values = dict(zip(values, (mean / dist.world_size()).tolist()))
                    now = time.perf_counter()
                    speed = n_last / max(now - t_last, 1e-9)
                    t_last, n_last = now, 0
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.log({"iter": it, "epoch": epoch, "lr": lr, "img_per_s": speed, **values})
                    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                bar.update(1)
                if it % cfg.val_interval == 0 or it == cfg.iters:
                    metrics = self.validate()
                    extra = {f"val/{k}": metrics[k] for k in metrics.pop("hook_keys") + ["score"]
                             if isinstance(metrics[k], (int, float)) and metrics[k] is not metrics["miou"]}
                    self.log({"iter": it, "val/miou": metrics["miou"], "val/pixel_acc": metrics["pixel_acc"], **extra,
                              "wall_s": self._wall()})
                    if metrics["score"] > self.state.best_miou:
                        self.state.best_miou = metrics["score"]
                        self.save("best.pt", full=False, metrics=metrics)
                    if dist.is_main():
                        what = "" if metrics["score"] is metrics["miou"] else "score "
                        bar.write(f"iter {it}: val mIoU {100 * metrics['miou']:.2f} (best {what}{100 * self.state.best_miou:.2f})")
                if it % cfg.ckpt_interval == 0 or it == cfg.iters:
                    self.save("last.pt", full=True, metrics=metrics)
                if it % cfg.val_interval == 0 or it % cfg.ckpt_interval == 0:
                    t_last, n_last = time.perf_counter(), 0  # img/s counts training only
                if it >= cfg.iters:
                    break
        bar.close()
        if self.tb is not None:
            self.tb.close()
        dist.barrier()
        wall, self._wall_mark = self._wall(), None  # the clock stops with the training
        return {"iteration": self.state.iteration, "best_miou": self.state.best_miou, "last_metrics": metrics,
                "wall_s": wall}

    def _wall(self) -> float:
        """``state.wall_s`` brought up to now (the clock runs while ``_train`` does)."""
        if self._wall_mark is not None:
            now = time.perf_counter()
            self.state.wall_s += now - self._wall_mark
            self._wall_mark = now
        return self.state.wall_s
