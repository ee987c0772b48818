"""Embedded Knowledge Distillation (EKD): the full net of a DDNN teaches its sub-nets in the same iteration.

Seed 001 (second abstract; arXiv:2103.00793) and methods.md, "Depth-level dynamic networks with embedded KD". Enabled
by ``ekd.enabled=true`` on a ``ddnn_*`` model (section :class:`~segdistill.config.EKDConfig`). Each iteration
(the trainer's ``forward`` point):

1. the full net with the task loss (``ce`` and ``aux`` as usual);
2. the sub-nets (``ekd.subnets``: ``all`` of them, or ``sandwich``: the smallest plus ``ekd.num_random`` others drawn at
   random, as in the sandwich rule of Yu & Huang, "Universally Slimmable Networks", ICCV 2019), each with

   ``L_d = CE_d (+ aux) + λ_kl · T² · KL(p_full^T ‖ p_d^T) + λ_att · A(full, d)``

   logged as ``task@d``, ``kl@d`` and ``att@d`` (weights included).

* **KL term**: :class:`~segdistill.distill.losses.PixelKD`, ``T² · mean_{valid p} KL(softmax(z_full[p]/T) ‖
  softmax(z_d[p]/T))`` on the logits, void pixels excluded; the full net's logits are detached, so the term trains the
  sub-net only (the paper's "posterior class probability consistency").
* **Self-attention term** ``A``: between the features of the same resolution (``ekd.att_features``, by default
  ``stage1`` .. ``stage4``: same names, sizes and widths at every depth). Our formula: per feature, the spatial
  self-attention (affinity) map ``a_ij = f̂_i · f̂_j`` over all positions (``f̂`` = the L2-normalised channel vector of
  position i after ``ekd.att_patch`` x ``ekd.att_patch`` max-pooling; the un-normalised attention of a non-local block,
  Wang et al., CVPR 2018), and ``A = mean_features mean_b Σ_ij (a^d_ij - a^full_ij)² / N²``. The full net's features
  are detached. It is :class:`~segdistill.distill.losses.PairwiseKD` (SKD's pair-wise term, Liu et al. CVPR 2019),
  computed exactly with its Gram identity: O(N C²) work, O(C²) memory, never the N x N map, so 1/4-resolution
  features cost no more than a 1x1 conv. The DDNN paper's self-attention is on same-resolution features too; its exact
  normalisation is not given in the abstract, so this is our choice (methods.md leaves it open).
* **Batch norm**: each forward uses batch statistics and updates the running statistics of its own depth (per-depth
  statistics, see :mod:`segdistill.dynamic.model`).
* **Validation**: every depth is evaluated (``miou@NAME``); the score that picks ``best.pt`` is ``ekd.score``:
  ``mean`` (default: best.pt serves every depth, so the checkpoint best on average across them), ``min``, ``full`` or
  a depth name.
* **External teacher**: with ``distill.teacher`` set as well, the DistillHook's KD terms apply to the full net's output
  (the ``out`` this hook returns), on top of EKD; the trainer's ``task_weight`` scales every loss returned here.
* **Cost per iteration**: 1 + (number of sub-nets) forward/backward passes of the shared network, each sub-net cheaper
  than the full net; ``benchmarks/camvid_ddnn.py --timing`` measures it against training the full net alone.
* The sub-nets drawn at an iteration are a pure function of (``train.seed``, iteration), so a resumed run draws the
  same ones (exact resume without extra state).
* **Distributed training (DDP under torchrun)**: one DDP forward and one backward per step. DDP allows one forward per
  backward (several calls of a DDP model before one backward need ``static_graph``), so the hook's
  ``train_module`` (see :class:`~segdistill.engine.trainer.Hook`) gives the trainer :class:`EKDStep`, whose one call
  runs the full net and this step's sub-nets and returns every output; the trainer wraps *that* in DDP. Every
  rank draws the same sub-nets (a pure function of seed and iteration, above), so all ranks run the same graph. No
  ``find_unused_parameters``: the full net runs every step and uses every parameter (a sub-net's blocks, BN scales
  and shifts are a subset of the full net's; per-depth BN *statistics* are buffers, not parameters), so the set of
  parameters with a gradient is all of them at every step, whichever sub-nets are drawn; each gets one gradient, the
  sum over the full net and the sub-nets, which DDP averages over ranks once backward has accumulated it. Buffers
  (the per-depth statistics included) are rank 0's at the start of each step (DDP's ``broadcast_buffers``), as for
  any model. :class:`EKDStep` owns nothing: ``trainer.model`` stays the plain DDNN, so validation, ``best.pt`` and
  checkpoints (keys, loading old ones) are unchanged. ``model.sync_bn`` is refused: torch's SyncBatchNorm would
  replace the per-depth BN layers and every depth would share one set of statistics. In one process the forwards
  and losses are the same operations in the same order as before (bit-identical losses).
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn

from ..distill.losses import PairwiseKD, PixelKD
from ..engine import distributed as dist
from ..engine.hooks import register_hook
from ..engine.trainer import Hook
from ..errors import ConfigError
from .model import unwrap_dynamic

SUBNET_RULES = ("all", "sandwich")
SCORES = ("mean", "min", "full")


class EKDStep(nn.Module):
    """The forwards of one EKD step as one module call (training only; what DDP wraps, see the module docstring).

    ``forward(images, depths)``: the model's outputs at each depth of ``depths``, in that order (a list); the model is
    left at its full depth. ``forward(images)``: one plain call of the model at its active depth. It holds the model
    as its only sub-module and has no parameters or buffers of its own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        unwrap_dynamic(model)  # a clear error for a model that is not a DDNN

    def forward(self, images, depths: list[str] | None = None):
        if depths is None:
            return self.model(images)
        ddnn = unwrap_dynamic(self.model)
        outs = []
        try:
            for d in depths:
                ddnn.set_depth(d)
                outs.append(self.model(images))
        finally:
            ddnn.set_depth(ddnn.full_depth)
        return outs


class EKDHook(Hook):
    name = "ekd"

    def __init__(self, cfg):
        self.cfg = cfg
        e = cfg.ekd
        if e.subnets not in SUBNET_RULES:
            raise ConfigError(f"ekd.subnets must be one of {', '.join(SUBNET_RULES)}, not {e.subnets!r}")
        if e.num_random < 0:
            raise ConfigError(f"ekd.num_random must be >= 0, got {e.num_random}")
        self.kl = PixelKD(e.T, cfg.data.ignore_index)
        self.att = PairwiseKD(patch=e.att_patch)
        self.ddnn = None

    def train_module(self, trainer, model):
        return EKDStep(model)

    def setup(self, trainer):
        self.ddnn = unwrap_dynamic(trainer.model)
        e = self.cfg.ekd
        if not isinstance(getattr(trainer.ddp_model, "module", trainer.ddp_model), EKDStep):
            raise ConfigError("ekd needs its own step module as the trainer's training module (Hook.train_module); "
                              "another hook replaced it: run ekd without that hook")
        if any(isinstance(m, nn.SyncBatchNorm) for m in self.ddnn.modules()):
            raise ConfigError("model.sync_bn=true replaces the DDNN's per-depth BatchNorm with torch's SyncBatchNorm "
                              "(one set of statistics for every depth); set model.sync_bn=false for ekd")
        unknown = [f for f in e.att_features if f not in self.ddnn.feature_channels]
        if unknown:
            raise ConfigError(f"ekd.att_features {unknown} are not features of {self.ddnn.model_name}; "
                              f"it has {', '.join(self.ddnn.feature_channels)}")
        names = self.ddnn.depth_names
        if e.score not in SCORES and e.score not in names:
            raise ConfigError(f"ekd.score must be one of {', '.join(SCORES)} or a depth ({', '.join(names)}), "
                              f"not {e.score!r}")
        if dist.is_main():
            print(f"EKD: full net {self.ddnn.full_depth}, sub-nets {', '.join(self.subnets_pool())} "
                  f"({e.subnets}{f', {e.num_random} random' if e.subnets == 'sandwich' else ''}); "
                  f"kl x{e.kl_weight:g} (T {e.T:g}), att x{e.att_weight:g} on {', '.join(e.att_features)}")

    def subnets_pool(self) -> list[str]:
        return [d for d in self.ddnn.depth_names if d != self.ddnn.full_depth]

    def subnets(self, iteration: int) -> list[str]:
        """The sub-nets trained at ``iteration`` (0-based), shallowest first."""
        pool = self.subnets_pool()
        if self.cfg.ekd.subnets == "all" or len(pool) <= 1:
            return pool
        smallest, rest = pool[0], pool[1:]
        rng = random.Random(1_000_003 * self.cfg.train.seed + iteration)
        picked = set(rng.sample(rest, min(self.cfg.ekd.num_random, len(rest))))
        return [smallest] + [d for d in rest if d in picked]

    def subnet_losses(self, trainer, out_sub, out_full, masks) -> dict[str, torch.Tensor]:
        """Task loss, weighted KL and weighted attention term of one sub-net's output against the full net's."""
        e = self.cfg.ekd
        task = sum(trainer.criterion(out_sub, masks).values())
        losses = {"task": task}
        if e.kl_weight:
            losses["kl"] = e.kl_weight * self.kl(out_sub.logits, out_full.logits.detach(), masks)
        if e.att_weight and e.att_features:
            att = sum(self.att(out_sub.features[f], out_full.features[f].detach()) for f in e.att_features)
            losses["att"] = e.att_weight * att / len(e.att_features)
        return losses

    def forward(self, trainer, images, masks):
        subnets = self.subnets(trainer.state.iteration)
        out, *outs = trainer.ddp_model(images, [self.ddnn.full_depth, *subnets])  # one (DDP) forward for all depths
        losses = trainer.criterion(out, masks)
        for d, out_d in zip(subnets, outs):
            for k, v in self.subnet_losses(trainer, out_d, out, masks).items():
                losses[f"{k}@{d}"] = v
        return out, losses

    def on_validate(self, trainer, metrics):
        model = self.ddnn
        full = model.full_depth
        per = {}
        try:
            for d in model.depth_names:
                if d == full:
                    per[d] = metrics["miou"] * 1.0  # evaluated by the trainer; a new float, so it is logged too
                    continue
                model.set_depth(d)
                per[d] = trainer.evaluate()["miou"]
        finally:
            model.set_depth(full)
        for d, v in per.items():
            metrics[f"miou@{d}"] = v
        metrics["miou_mean_depths"] = sum(per.values()) / len(per)
        s = self.cfg.ekd.score
        metrics["score"] = (metrics["miou_mean_depths"] if s == "mean" else min(per.values()) if s == "min"
                            else per[full] if s == "full" else per[s])
        return metrics


@register_hook("ekd")
def _ekd(cfg):
    """EKD on a DDNN when ``ekd.enabled`` is set."""
    return EKDHook(cfg) if cfg.ekd.enabled else None
