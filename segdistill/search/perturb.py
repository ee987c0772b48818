"""Ops ranked by what the trained supernet loses without them (perturbation-based selection).

After Wang et al., "Rethinking Architecture Selection in Differentiable NAS" (ICLR 2021, DARTS-PT): the architecture
weights of a short search stay near uniform and do not say which op a layer needs (RESULTS.md, 2026-12-06), but the
supernet's trained *weights* may. For every op choice (chain space: each layer's ``alpha``, each strided layer's
``alpha_down``; LGCNet space: each edge of each cell, each fusion level) and every candidate ``o`` of it (``skip``
and ``none`` left out: whether a layer, an edge or a fusion level exists is the price's and the strengths' question,
not this one), the candidate is taken out of its mixed op and the supernet's task loss measured on fixed batches of
the architecture half of train::

    importance(o) = mean_b CE(supernet without o, b) - mean_b CE(supernet, b)

A candidate whose removal costs the most is the one the supernet relies on. Where we chose (the paper leaves it open or
does it differently):

* *Removal* sets the candidate's logit to -inf, so the others are renormalised (the mixed op keeps its scale);
  DARTS-PT zeroes its weight without renormalising.
* *One shot*: every choice is scored against the same trained supernet; DARTS-PT fixes one edge at a time and tunes
  the supernet between edges.
* *LGCNet*: the removal acts on the logits after the GCN-guided module (``alpha'``, the ones the cells mix with):
  :meth:`LgcSupernet.fold_ggm` writes them into ``alpha`` and drops the GGM first, which leaves the forward as it
  was. With shared cells one logit row is every cell's edge, so one removal acts on all three cells.
* *Criterion*: the per-pixel cross entropy of the search's criterion on the architecture half (the data the
  architecture steps see), not validation accuracy, so the val split stays out of the architecture's choice. The
  supernet runs in training mode (batch statistics, as in the search: its running statistics mix every op), without
  Gumbel sampling, in ``no_grad``; the same batches for every candidate, so the differences are paired.

:func:`rank_by_importance` then reorders each choice's logits so that the most important candidate holds the largest
one (a permutation of the values: a chain layer's skip logit and an LGCNet edge's none logit, and so the price's
view of depth and edges, are left as they were), and ``derive(ops="weights")`` takes each choice's most important
op (``segdistill derive RUN --ops perturb``).
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Iterable

import torch

from ..errors import ConfigError


def choices(supernet) -> list[tuple[str, torch.Tensor, list[str], int | None]]:
    """``(name, logits, candidate names, the kept candidate's index or None)`` of every op choice: a chain
    supernet's layers, then its strided layers; an LGCNet supernet's cell edges (``alpha.<cell>.<edge>``), then its
    fusion levels (``alpha_fusion.<level>``). The kept candidate is never scored or moved: a chain layer's ``skip``
    (no layer) and an LGCNet edge's or level's ``none`` (no edge); an LGCNet ``skip`` is an identity edge, an op
    like the others. The logits are the parameters themselves (or a row of them), so writing to them changes the
    supernet. An LGCNet supernet's GGM is folded into its logits first (module docstring)."""
    from .space_chain import ChainSupernet
    from .space_lgcnet import LgcSupernet

    if isinstance(supernet, ChainSupernet):
        sp = supernet.space
        out = [(f"alpha.{i}", p, list(sp.layer_ops)) for i, p in enumerate(supernet.alpha)]
        out += [(f"alpha_down.{i}", p, list(sp.down_ops)) for i, p in enumerate(supernet.alpha_down)]
        return [(*c, _index(c[2], "skip")) for c in out]
    if isinstance(supernet, LgcSupernet):
        supernet.fold_ggm()
        sp = supernet.space
        out = [(f"alpha.{k}.{e}", p[e], list(sp.cell_ops)) for k, p in enumerate(supernet.alpha) for e in range(len(p))]
        if (f := supernet.alpha_fusion) is not None:
            out += [(f"alpha_fusion.{lv}", f[lv], list(sp.fusion_ops)) for lv in range(len(f))]
        return [(*c, _index(c[2], "none")) for c in out]
    raise ConfigError(f"ops ranked by perturbation need a chain or LGCNet search supernet, not a "
                      f"{type(supernet).__name__}; derive with --ops weights or priced")


def _index(ops: list[str], op: str) -> int | None:
    return ops.index(op) if op in ops else None


def op_importance(supernet, batches: list[tuple[torch.Tensor, torch.Tensor]], loss: Callable,
                  progress: bool = True) -> dict:
    """``{"base": mean loss, "choices": {name: {"ops": [...], "importance": [loss increase per candidate, None for
    a kept one]}}}`` (module docstring). ``loss(output, masks)`` is a scalar; ``batches`` are (images, masks)."""
    from tqdm import tqdm

    todo = choices(supernet)
    n = sum(len(ops) - (keep is not None) for _, _, ops, keep in todo)
    saved = (supernet.training, supernet.gumbel)
    supernet.train()
    supernet.gumbel = False

    def losses() -> list[float]:
        return [float(loss(supernet(x), y)) for x, y in batches]

    out = {"choices": {}}
    try:
        with torch.no_grad():
            base = losses()
            out["base"] = sum(base) / len(base)
            bar = tqdm(total=n, desc="ops taken out", disable=not progress)
            for name, p, ops, keep in todo:
                imp: list[float | None] = []
                se: list[float | None] = []
                per: list[list[float] | None] = []
                for i in range(len(ops)):
                    if i == keep:
                        imp.append(None)
                        se.append(None)
                        per.append(None)
                        continue
                    old = float(p[i])
                    p[i] = -math.inf
                    try:
                        diff = [a - b for a, b in zip(losses(), base)]
                    finally:
                        p[i] = old
                    imp.append(sum(diff) / len(diff))
                    se.append(_se(diff))
                    per.append(diff)
                    bar.update()
                out["choices"][name] = {"ops": ops, "importance": imp, "se": se, "per_batch": per}
            bar.close()
    finally:
        supernet.train(saved[0])
        supernet.gumbel = saved[1]
    return out


def _se(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (0 for a single value)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def decided(importance: dict, z: float = 2.0) -> tuple[int, int]:
    """``(choices whose most important op leads the runner-up by more than z standard errors, choices)``: the
    standard error of the paired per-batch difference between the two (the same batches score both)."""
    n = lead = 0
    for c in importance["choices"].values():
        scored = sorted(((v, d) for v, d in zip(c["importance"], c["per_batch"]) if v is not None),
                        key=lambda t: -t[0])
        if len(scored) < 2:
            continue
        n += 1
        (v1, d1), (v2, d2) = scored[:2]
        gap = [a - b for a, b in zip(d1, d2)]
        lead += (v1 - v2) > z * max(_se(gap), 1e-12)
    return lead, n


def mean_ranks(importance: dict) -> dict[str, float]:
    """Each candidate's mean rank (1 = most important) over the choices that score it, most important first: does
    the supernet lean on some ops everywhere (capacity, say) or on different ones per layer?"""
    ranks: dict[str, list[int]] = {}
    for c in importance["choices"].values():
        order = sorted((i for i, v in enumerate(c["importance"]) if v is not None), key=lambda i: -c["importance"][i])
        for r, i in enumerate(order, start=1):
            ranks.setdefault(c["ops"][i], []).append(r)
    return dict(sorted(((o, sum(r) / len(r)) for o, r in ranks.items()), key=lambda kv: kv[1]))


def rank_by_importance(supernet, importance: dict) -> dict[str, tuple[str, str]]:
    """Reorder each scored choice's logits (in place) so that its candidates rank by ``importance``: the scored
    candidates' logit values are permuted, the kept one (chain skip, LGCNet none) untouched. Returns ``{name: (the
    logits' own pick, the most important op)}`` over the scored candidates."""
    from .genotype import weights_choice

    picks = {}
    with torch.no_grad():
        for name, p, ops, keep in choices(supernet):
            imp = importance["choices"][name]["importance"]
            scored = [i for i, v in enumerate(imp) if v is not None]
            values = sorted((float(p[i]) for i in scored), reverse=True)
            before = weights_choice(p.tolist(), keep)
            order = sorted(scored, key=lambda i: -imp[i])  # most important first (ties: the earlier candidate)
            for i, v in zip(order, values):
                p[i] = v
            picks[name] = (ops[before], ops[order[0]])
    return picks


def rank(supernet, batches: list[tuple[torch.Tensor, torch.Tensor]], loss: Callable,
         progress: bool = True) -> tuple[dict, dict]:
    """Score every op (:func:`op_importance`), then reorder ``supernet``'s logits by the scores
    (:func:`rank_by_importance`). Returns ``(record, summary)``: the scores with each choice's picks (what
    ``perturbation.json`` holds), and the counts a log or report quotes (choices whose top op moved, choices decided
    beyond 2 standard errors, each op's mean rank)."""
    imp = op_importance(supernet, batches, loss, progress)
    lead, n = decided(imp)
    picks = rank_by_importance(supernet, imp)
    record = {"batches": len(batches), **imp,
              "picks": {k: {"logits": a, "perturbation": b} for k, (a, b) in picks.items()}}
    summary = {"batches": len(batches), "base_ce": imp["base"], "changed": sum(a != b for a, b in picks.values()),
               "choices": len(picks), "decided": lead, "scored": n, "mean_ranks": mean_ranks(imp),
               "picks": {k: list(v) for k, v in picks.items()}}
    return record, summary


def summary_lines(summary: dict, path) -> list[str]:
    """Two lines saying what :func:`rank` found, the scores' file ``path`` named."""
    return [f"perturbation: base CE {summary['base_ce']:.4f} on {summary['batches']} architecture batches; the most "
            f"important op differs from the logits' pick in {summary['changed']} of {summary['choices']} choices; it "
            f"leads the runner-up by more than 2 standard errors in {summary['decided']} of {summary['scored']}; "
            f"scores in {path}",
            "ops by mean rank of importance (1 = the op the supernet loses most without): "
            + ", ".join(f"{o} {r:.1f}" for o, r in summary["mean_ranks"].items())]


def arch_batches(run_dir, n: int, threads: int = 1, overrides: Iterable[str] = ()):
    """``(supernet, [(images, masks)] * n, loss)``: a search run's supernet (at its ``last.pt``; the caller loads
    other weights into it, e.g. ``best.pt``'s) with the next ``n`` batches of its architecture half (the run's own
    split, augmentation and order) and its task criterion. The run's trainer is rebuilt from its ``config.yaml`` in a
    scratch folder (the teacher runs live; nothing is written beside the run)."""
    import tempfile
    from pathlib import Path

    from ..config import load_config
    from ..engine.hooks import build_hooks
    from ..engine.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir / 'config.yaml'} not found: ops ranked by perturbation need the search run's "
                          "folder (its config.yaml names the data); give the run folder, not a copied checkpoint")
    with tempfile.TemporaryDirectory() as scratch:
        last = run_dir / "last.pt"
        cfg = load_config(run_dir / "config.yaml", [f"train.out_dir={scratch}",
                                                    f"train.resume={last if last.is_file() else 'null'}",
                                                    "distill.cache=null", "data.workers=0", "train.progress=false",
                                                    f"train.threads={threads}", *overrides])
        hooks = build_hooks(cfg)
        trainer = Trainer(cfg, hooks)
        hook = next(h for h in hooks if h.name == "search")
        batches = hook.arch_batches(n, trainer.device)
    return hook.supernet, batches, hook.task_loss(trainer)
