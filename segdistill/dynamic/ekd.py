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
* Distributed training is refused: several forwards of a DDP model before one backward need DDP's ``static_graph``,
  which the trainer does not set.
"""
from __future__ import annotations

import random

import torch

from ..distill.losses import PairwiseKD, PixelKD
from ..engine import distributed as dist
from ..engine.hooks import register_hook
from ..engine.trainer import Hook
from ..errors import ConfigError
from .model import unwrap_dynamic

SUBNET_RULES = ("all", "sandwich")
SCORES = ("mean", "min", "full")


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

    def setup(self, trainer):
        self.ddnn = unwrap_dynamic(trainer.model)
        e = self.cfg.ekd
        if dist.is_dist():
            raise ConfigError("ekd runs the model several times per step, which DDP supports only with static_graph; "
                              "train EKD in one process")
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
        model, run = self.ddnn, trainer.ddp_model
        full = model.full_depth
        try:
            model.set_depth(full)
            out = run(images)
            losses = trainer.criterion(out, masks)
            for d in self.subnets(trainer.state.iteration):
                model.set_depth(d)
                for k, v in self.subnet_losses(trainer, run(images), out, masks).items():
                    losses[f"{k}@{d}"] = v
        finally:
            model.set_depth(full)
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
