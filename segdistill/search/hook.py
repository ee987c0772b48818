"""``SearchHook``: gradient architecture search of the chain space on the one trainer (issue 10, seed 000).

Enabled by ``search.space=chain`` (factory ``search`` below; ``segdistill search CONFIG``). What it does:

* **Model.** The run trains the supernet: the hook sets ``model.name=chain_supernet`` and ``model.arch`` to the
  space options (``search.input``, ``layers``, ``width_ratios``, ``base_widths``, ``stem_widths``,
  ``head_channels``) before the trainer builds the model, so ``config.yaml``, ``best.pt`` and ``last.pt`` describe
  the supernet and ``build_from_checkpoint`` rebuilds it, architecture weights included. ``best.pt`` is the supernet
  at its best validation mIoU; ``genotype.json`` is derived from the *current* weights at every validation, so the
  one left at the end is the final architecture (the one band control steered).
* **Data split** (:meth:`SearchHook.train_indices`). A seeded permutation of the train split: the first half
  (rounded up) feeds the trainer's weight steps, the rest the architecture steps. Architecture batches follow their
  own order, a pure function of (seed, arch epoch) like the trainer's sampler (sharded over ranks), with the
  augmentation of that arch epoch; the position (``arch_pos``) is saved, so resume repeats them.
* **First-order bilevel steps** (:meth:`SearchHook.after_step`). After ``search.warmup_iters`` weights-only
  iterations, every ``search.arch_interval`` iterations one architecture step on an arch batch:
  ``CE + lambda_kd * KD + lambda_ged * E[GED] + sum_p lambda_p * penalty_p`` (:mod:`.objective`), Adam on
  alpha/beta/width logits only (``search.arch_lr``, ``arch_betas``, ``arch_weight_decay``). KD is the distillation
  hook's terms (``distill.*``, their weights and the teacher cache apply) on the arch batch; E[GED] is the
  supernet's :func:`~.objective.soft_graph` against the teacher's :func:`~.graph.model_graph` (traced once). The
  architecture gradients the weight step leaves are zeroed every iteration; the hook's Adam holds the architecture
  weights, so the trainer keeps them out of the main optimizer. DDP: architecture gradients are averaged over
  ranks (DDP synchronised the initial weights), so alpha/beta stay identical everywhere.
* **Gumbel.** With ``search.gumbel``, the supernet's training forward samples Gumbel-softmax weights at
  temperature tau, annealed exponentially from ``tau_start`` (until the warm-up ends) to ``tau_end`` (last
  iteration).
* **Auxiliary skip** (DARTS-, Chu et al., ICLR 2021): with ``search.aux_skip = b > 0`` every stride-1 searchable
  layer (chain) or edge between intermediate nodes (lgcnet) gets ``b_t * input`` beside its mixed op, ``b_t = b``
  until the warm-up ends, then linearly to 0 at the last iteration. The supernet then trains well without the skip
  candidate's help, which is DARTS-' answer to the skip op winning by easing optimisation rather than by being
  better; the derived network never has it. Off by default.
* **Band control** every ``search.band_interval`` iterations (0: once per epoch) after the warm-up
  (:func:`~.objective.band_update`), on the plain argmax: it steers the architecture weights themselves.
* **The network returned** (``genotype.json``, :meth:`SearchHook.derive_final`): with ``search.derive=budget``
  (default) the argmax priced by latency so that it meets every budget and lands in the band
  (:func:`~.objective.derive_within_budget`; the plain argmax when that is already in the band), with ``argmax``
  the plain one. ``search.derive_ops`` says who picks the ops: ``priced`` (weights and price together),
  ``weights`` (the weights' likeliest op; the price sets depth and widths) or ``perturb`` (as ``weights``, with the
  ops ranked by what a copy of the trained supernet loses without them, :mod:`.perturb`, at the last validation
  only; ``perturbation.json``). The log and report give both networks' predicted latency and the price ``mu``.
  ``segdistill derive RUN --budget P=MS`` derives again from a finished search, for any budget.
* **Outputs** in ``train.out_dir``: ``genotype.json``; ``arch_<iter>.png`` (alpha/beta/width heatmaps) per
  validation; ``search_log.jsonl`` (one record per band check and per validation: expected and predicted latency
  per platform, lambdas, E[GED], tau; at validations the derived network's exact GED to the teacher (networkx,
  ``search.ged_timeout`` seconds; an upper bound when the limit hits, flagged ``ged_exact: false``) and its
  fixed-correspondence GED); ``report.md`` after the last validation; ``lut_<platform>.json`` for tables measured
  here.
* **Resume.** alpha/beta are model parameters (``last.pt``'s model state), their Adam is listed in
  :meth:`optimizers`, and the hook state holds the lambdas, ``arch_pos`` and tau: a resumed search repeats the run
  never stopped.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler, default_collate

from ..engine import distributed as dist
from ..engine.hooks import register_hook
from ..engine.trainer import Hook
from ..errors import CheckpointError, ConfigError, DataError, SegDistillError
from ..models import build_model
from . import SPACES
from .ged import EditCosts
from .genotype import derive, genotype_netspec, op_preference, preference_line, save_genotype
from .objective import (
    band_update,
    check_budgets,
    derive_within_budget,
    latency_penalty,
    platform_availability,
    platform_predictors,
    soft_graph,
)
from .space_chain import ChainSupernet

SPACE_KEYS = SPACES["chain"]["options"]


def plot_search_latency(log, out_png, band=(0.9, 1.0)) -> Path:
    """A search's latency over time, one panel per platform, from its ``search_log.jsonl`` (a path or records):
    the soft network's expected latency, the plain argmax's prediction (what band control reads), the network the
    search returns at each validation (``search.derive``), the budget and its ``band`` (fractions of the budget),
    and lambda (log axis, right).
    A search whose argmax collapses while lambda is still large shows it here at once."""
    from ..viz import _read_jsonl, new_figure, save_figure

    records = _read_jsonl(Path(log)) if not isinstance(log, list) else log
    platforms = sorted({k.split("/", 1)[1] for r in records for k in r if k.startswith("budget_ms/")})
    if not platforms:
        raise ValueError(f"{log}: no latency records (a search without a budget has no latency to plot)")

    def series(events, key):
        pts = [(r["iter"], r[key]) for r in records if r.get("event") in events and key in r]
        return list(zip(*pts)) or [(), ()]

    lo, hi = band
    fig = new_figure(6.5, 3.8 * len(platforms), "the search's latency plot")
    for i, p in enumerate(platforms):
        ax = fig.add_subplot(len(platforms), 1, i + 1)
        budget = next(r[f"budget_ms/{p}"] for r in records if f"budget_ms/{p}" in r)
        ax.axhspan(lo * budget, hi * budget, color="tab:green", alpha=0.15, label=f"band [{lo:g}, {hi:g}] x budget")
        ax.axhline(budget, color="tab:green", lw=1)
        ax.plot(*series(("band", "validate"), f"expected_ms/{p}"), color="tab:blue", label="expected (soft network)")
        ax.plot(*series(("band",), f"predicted_ms/{p}"), color="tab:orange", marker=".", label="plain argmax, predicted")
        ax.plot(*series(("validate",), f"predicted_ms/{p}"), "s", color="tab:red", label="returned network, predicted")
        ax.set_ylabel(f"{p} (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0]
        lam = series(("band",), f"lambda/{p}")
        if lam[0]:
            ax2 = ax.twinx()
            handles += ax2.semilogy(*lam, color="tab:gray", ls="--", label="lambda (right axis)")
            ax2.set_ylabel("lambda", color="tab:gray")
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=7)
    ax.set_xlabel("iteration")
    fig.suptitle("search latency: expected, argmax and returned network against the budget", fontsize=9)
    return save_figure(fig, out_png)


def space_options(search) -> dict:
    """The supernet builder options (``model.arch``) of a ``search`` config section (its space's keys,
    :data:`segdistill.search.SPACES`; the chain space's when ``space`` is unset)."""
    return {k: (list(getattr(search, k)) if isinstance(getattr(search, k), (list, tuple)) else getattr(search, k))
            for k in SPACES[search.space or "chain"]["options"]}


class SearchHook(Hook):
    name = "search"

    def __init__(self, cfg):
        s = cfg.search
        if s.space not in SPACES:
            raise ConfigError(f"search.space={s.space!r}: known spaces are {', '.join(SPACES)}")
        check_budgets(s)
        if s.lambda_ged > 0 and not cfg.distill.teacher:
            raise ConfigError(f"search.lambda_ged={s.lambda_ged:g} needs a teacher for its structure: set "
                              "distill.teacher=PATH/best.pt, or search.lambda_ged=0")
        platform_availability(s)  # a platform with neither table nor local device: an error before any work
        m, supernet = cfg.model, SPACES[s.space]["model"]
        if m.name != supernet and dist.is_main() and m.name != type(m)().name:
            print(f"search: training the {s.space} supernet (search.*); model.name={m.name} is not used")
        m.name, m.arch, m.width_mult, m.output_stride, m.aux, m.pretrained = (
            supernet, space_options(s), 1.0, None, False, None)
        self.cfg, self.s = cfg, s
        self.lambdas = {p: float(s.lambda_lat) for p in s.budget}
        self.arch_pos = 0
        self.tau = float(s.tau_start)
        self.supernet: ChainSupernet | None = None
        self.arch_opt: torch.optim.Optimizer | None = None
        self.predictors: dict = {}
        self.teacher_graph = None
        self.ged_costs = EditCosts(family=self.s.ged_family_cost)
        self.distill = None
        self.last_values: dict = {}

    # ------------------------------------------------------------------ set-up
    def train_indices(self, trainer, n: int) -> list[int]:
        """The weight half of the train split (the other half: :attr:`arch_indices`)."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed)).tolist()
        cut = n - n // 2
        self.weight_indices, self.arch_indices = sorted(perm[:cut]), sorted(perm[cut:])
        bs, world = self.cfg.data.batch_size, dist.world_size()
        if len(self.arch_indices) // world < bs:
            raise DataError(f"search: the architecture half of split {self.cfg.data.train_split!r} has "
                            f"{len(self.arch_indices)} images, fewer than one batch of {bs} per process; lower "
                            "data.batch_size or use more training images")
        return self.weight_indices

    def wrap_model(self, trainer, model):
        if not hasattr(model, "arch_parameters") or getattr(model, "arch_spec", None) != space_options(self.s):
            model = build_model(SPACES[self.s.space]["model"], trainer.num_classes,
                                **space_options(self.s)).to(trainer.device)
        model.gumbel, model.hard, model.tau = bool(self.s.gumbel), bool(self.s.hard), self.tau
        model.aux_skip = self._aux_at(0)
        model.expectation = self.s.expectation
        self.supernet = model
        return model

    def setup(self, trainer):
        s, net = self.s, self.supernet
        self.trainer = trainer
        self.out_dir = Path(self.cfg.train.out_dir)
        self.arch_opt = torch.optim.Adam(net.arch_parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas),
                                         weight_decay=s.arch_weight_decay)
        names = [h.name for h in trainer.hooks]
        self.distill = trainer.hook("distill") if "distill" in names else None
        if self.distill is not None:
            from .graph import model_graph

            teacher = copy.deepcopy(self.distill.distiller.teacher).cpu().eval()
            self.teacher_graph = model_graph(teacher, tuple(s.input), stages=s.ged_stages)
            del teacher
        threads = self.cfg.train.threads or torch.get_num_threads()
        for building in (True, False):  # rank 0 measures what is missing, then the other ranks read its tables
            if dist.is_main() == building:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.predictors = platform_predictors(s, net.space, self.out_dir, threads, self.cfg.train.progress)
            if building:
                dist.barrier()
        self.unreachable = {}
        self.space_notes = {p: pred.table.space_note(s.space) for p, pred in self.predictors.items()}
        for p, pred in self.predictors.items():
            if dist.is_main():  # a figure from a table built elsewhere is never taken for this machine's
                print(f"search: {p} latency from {pred.table.path or 'a table measured here'}: {pred.table.device_note()}")
                if self.space_notes[p]:
                    print(f"search: WARNING: {self.space_notes[p]}")
            smallest = net.smallest_latency(pred)
            if s.budget[p] < smallest:
                raise ConfigError(f"search.budget.{p}={s.budget[p]:g} ms is below the smallest latency the space can "
                                  f"reach on {p}: {smallest:.3f} ms at {'x'.join(map(str, s.input))} (every layer "
                                  "removed, narrowest cheapest choices); raise the budget to at least that, or "
                                  "shrink the space (search.stem_widths, search.base_widths, search.width_ratios, "
                                  "search.head_channels, search.input)")
            largest = net.largest_latency(pred)
            self.unreachable[p] = largest if largest < s.band[0] * s.budget[p] else None
            if self.unreachable[p] is not None and dist.is_main():
                print(f"search: WARNING: search.budget.{p}={s.budget[p]:g} ms is out of reach: the dearest network "
                      f"the space can derive is predicted at {largest:.3f} ms on {p}, under the band's lower edge "
                      f"({s.band[0]:g} x budget). The search will return a network under the band; to use the budget, "
                      "widen the space (search.base_widths, search.width_ratios, search.layers) or lower the budget")
        self.arch_set = copy.copy(trainer.train_set)  # its own epoch (augmentation), same images
        self.band_interval = s.band_interval or trainer.iters_per_epoch
        if dist.is_main():
            budgets = ", ".join(f"{p} {b:g} ms" for p, b in s.budget.items()) or "none"
            print(f"search: {s.space} space, {len(self.weight_indices)} images for weights, {len(self.arch_indices)} "
                  f"for the architecture; budgets {budgets}; penalty {s.penalty}; lambda_kd {s.lambda_kd:g} "
                  f"({'teacher ' + self.distill.teacher_desc['weights'] if self.distill else 'no teacher'}), "
                  f"lambda_ged {s.lambda_ged:g}; expectations over the {s.expectation} network")

    def optimizers(self):
        return {"arch": self.arch_opt} if self.arch_opt is not None else {}

    # ------------------------------------------------------------------ per iteration
    def _progress(self, it: int) -> float:
        """0 until the warm-up ends, then linear to 1 at the last iteration."""
        span = max(1, self.cfg.train.iters - self.s.warmup_iters)
        return min(max((it - self.s.warmup_iters) / span, 0.0), 1.0)

    def _tau_at(self, it: int) -> float:
        s = self.s
        return float(s.tau_start * (s.tau_end / s.tau_start) ** self._progress(it))

    def _aux_at(self, it: int) -> float:
        """DARTS-' auxiliary skip weight: ``search.aux_skip`` until the warm-up ends, then linearly to 0."""
        return float(self.s.aux_skip * (1.0 - self._progress(it)))

    def after_step(self, trainer):
        s, it = self.s, trainer.state.iteration
        self.arch_opt.zero_grad(set_to_none=True)  # the weight step's backward reached alpha too
        values = {}
        if it > s.warmup_iters and (it - s.warmup_iters) % s.arch_interval == 0:
            values.update(self.arch_step(trainer))
        if it > s.warmup_iters and it % self.band_interval == 0 and self.predictors:
            values.update(self.band_check(trainer))
        self.tau = self._tau_at(it)
        self.supernet.tau = self.tau
        self.supernet.aux_skip = self._aux_at(it)
        return values

    def next_arch_batch(self) -> dict:
        """The next batch of the architecture half (module docstring); advances ``arch_pos``."""
        n, bs = len(self.arch_indices), self.cfg.data.batch_size
        sampler = DistributedSampler(range(n), num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True,
                                     seed=self.cfg.train.seed + 1, drop_last=False)
        per_epoch = len(sampler) // bs
        epoch, k = divmod(self.arch_pos, per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)[k * bs:(k + 1) * bs]
        self.arch_set.set_epoch(epoch)
        self.arch_pos += 1
        return default_collate([self.arch_set[self.arch_indices[i]] for i in order])

    def arch_batches(self, n: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, masks)`` of the next ``n`` architecture batches on ``device``, the search's position left where
        it was (``derive_ops=perturb`` scores on them; ``segdistill derive --ops perturb`` too)."""
        pos = self.arch_pos
        try:
            return [(b["image"].to(device), b["mask"].to(device)) for b in (self.next_arch_batch() for _ in range(n))]
        finally:
            self.arch_pos = pos

    @staticmethod
    def task_loss(trainer):
        """``loss(output, masks)``: the trainer's task criterion, summed over its terms and averaged over ranks (a
        detached scalar tensor, alike on every rank); what ``derive_ops=perturb`` scores ops by."""
        def loss(out, masks):
            v = sum(trainer.criterion(out, masks).values()).detach().float().reshape(1)
            return dist.all_reduce_sum(v) / dist.world_size()
        return loss

    def _kd(self, trainer, batch, images, masks, out) -> dict:
        saved = getattr(trainer, "batch", None)  # None outside train() (benchmarks/arch_gradient.py)
        trainer.batch = batch  # the distillation hook reads the batch's index/geom for its teacher cache
        try:
            return self.distill.losses(trainer, images, masks, out)
        finally:
            trainer.batch = saved

    def objective(self, trainer, batch) -> dict[str, torch.Tensor]:
        """The named terms of the architecture loss on ``batch`` (fp32; also used by tests)."""
        s, net = self.s, self.supernet
        images = batch["image"].to(trainer.device)
        masks = batch["mask"].to(trainer.device)
        net.train()
        out = net(images)
        terms = {"arch/ce": sum(trainer.criterion(out, masks).values())}
        if self.distill is not None and s.lambda_kd > 0:
            kd = self._kd(trainer, batch, images, masks, out)
            if kd:
                terms["arch/kd"] = s.lambda_kd * sum(kd.values())
        if s.lambda_ged > 0:
            terms["arch/ged"] = s.lambda_ged * self.expected_ged()
        for p, pred in self.predictors.items():
            e = net.expected_latency(pred).to(trainer.device)
            terms[f"arch/lat_{p}"] = self.lambdas[p] * latency_penalty(e, s.budget[p], s.penalty)
        return terms

    def expected_ged(self) -> torch.Tensor:
        from .ged import expected_ged

        return expected_ged(soft_graph(self.supernet), self.teacher_graph, costs=self.ged_costs)

    def arch_step(self, trainer) -> dict:
        terms = self.objective(trainer, self.next_arch_batch())
        total = sum(terms.values())
        self.arch_opt.zero_grad(set_to_none=True)
        total.backward()
        dist.average_gradients(self.supernet.arch_parameters())
        self.arch_opt.step()
        # the weights' gradients of this backward are cleared by the trainer before its next backward
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["arch/loss"] = float(total.detach())
        return out

    # ------------------------------------------------------------------ latency and band control
    def latency_status(self, genotype: dict) -> dict:
        """Expected (soft) and predicted (derived network) latency per platform, with budgets and lambdas."""
        rec = {}
        num_classes = self.supernet.num_classes
        for p, pred in self.predictors.items():
            with torch.no_grad():
                rec[f"expected_ms/{p}"] = float(self.supernet.expected_latency(pred))
            spec = genotype_netspec(genotype, tuple(self.s.input), num_classes)
            rec[f"predicted_ms/{p}"] = float(pred.predict(spec)["predicted_ms"])
            rec[f"budget_ms/{p}"] = float(self.s.budget[p])
            rec[f"lambda/{p}"] = self.lambdas[p]
        return rec

    def derive_final(self, trainer=None) -> tuple[dict, dict]:
        """``(genotype, info)``: the network the search returns now (``search.derive``: ``budget``, the priced argmax
        of :func:`~.objective.derive_within_budget`, its ops picked as ``search.derive_ops`` says, or the plain
        ``argmax``). ``info`` has ``derive_rule``, ``derive_mu`` and the plain argmax's predicted latency per
        platform (``argmax_ms/<p>``). ``derive_ops=perturb`` ranks the ops by perturbation (:meth:`perturbed`)
        when ``trainer`` is given (the last validation); before that its ops are the weights' pick."""
        if self.s.derive == "argmax" or not self.predictors:
            return derive(self.supernet), {"derive_rule": "argmax"}
        net, ops, extra = self.supernet, self.s.derive_ops, {}
        if ops == "perturb":
            ops = "weights"
            if trainer is not None:
                net, extra = self.perturbed(trainer)
        g, info = derive_within_budget(net, self.predictors, dict(self.s.budget), tuple(self.s.band), ops=ops)
        return g, {"derive_rule": info["rule"], "derive_mu": info["mu"], "derive_logp": info["logp"],
                   **({"derive_weights_ops": info["weights_ops"]} if info.get("weights_ops") else {}),
                   **{f"argmax_ms/{p}": v for p, v in info["argmax_ms"].items()}, **extra}

    def perturbed(self, trainer) -> tuple[torch.nn.Module, dict]:
        """``(a copy of the supernet with its logits reordered by perturbation, {"perturb": summary})``
        (:mod:`.perturb`) on the next ``search.perturb_batches`` architecture batches. The loss of each batch is
        averaged over ranks, so every rank ranks alike. The main process writes the scores to
        ``perturbation.json``."""
        from ..latency.standalone import write_json_atomic
        from .perturb import rank, summary_lines

        net = copy.deepcopy(self.supernet)
        batches = self.arch_batches(self.s.perturb_batches, trainer.device)
        record, summary = rank(net, batches, self.task_loss(trainer),
                               progress=self.cfg.train.progress and dist.is_main())
        if dist.is_main():
            write_json_atomic(record, self.out_dir / "perturbation.json")
            print("search: " + "\nsearch: ".join(summary_lines(summary, self.out_dir / "perturbation.json")))
        return net, {"perturb": {k: v for k, v in summary.items() if k != "picks"}}

    def band_check(self, trainer) -> dict:
        # band control steers the architecture weights themselves, so it reads the plain argmax
        rec = self.latency_status(derive(self.supernet))
        moves = {}
        for p in self.predictors:
            self.lambdas[p], moves[p] = band_update(self.lambdas[p], rec[f"predicted_ms/{p}"], self.s.budget[p],
                                                    tuple(self.s.band), self.s.band_factor)
            rec[f"lambda_next/{p}"] = self.lambdas[p]
        self._log({"iter": trainer.state.iteration, "event": "band", "tau": self.tau, **rec, "band_moves": moves})
        return {f"search/lambda_{p}": self.lambdas[p] for p in self.predictors} | {
            f"search/derived_ms_{p}": rec[f"predicted_ms/{p}"] for p in self.predictors}

    # ------------------------------------------------------------------ validation, outputs
    def _log(self, record: dict):
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "search_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def structure_status(self, genotype: dict) -> dict:
        """E[GED] of the supernet and the derived network's exact (or bounded) and correspondence GED to the
        teacher (normalised by the teacher graph's size); empty without a teacher."""
        if self.teacher_graph is None:
            return {}
        from .ged import correspondence_ged, exact_ged
        from .graph import model_graph

        with torch.no_grad():
            rec = {"expected_ged": float(self.expected_ged())}
        student = build_model("searched", self.supernet.num_classes, genotype=genotype).eval()
        g = model_graph(student, tuple(self.s.input))
        res = exact_ged(g, self.teacher_graph, timeout=self.s.ged_timeout, normalize=True, costs=self.ged_costs)
        rec.update(ged=res.value, ged_exact=res.exact, ged_seconds=round(res.seconds, 3),
                   correspondence_ged=correspondence_ged(g, self.teacher_graph, normalize=True, costs=self.ged_costs),
                   derived_nodes=g.number_of_nodes(), teacher_nodes=self.teacher_graph.number_of_nodes())
        return rec

    def on_validate(self, trainer, metrics):
        it = trainer.state.iteration
        g, info = self.derive_final(trainer if it >= self.cfg.train.iters else None)
        rec = {"iter": it, "event": "validate", "tau": self.tau, "val_miou": metrics.get("miou"),
               **self.latency_status(g), **info}
        if dist.is_main():
            rec.update(self.structure_status(g))
            save_genotype(g, self.out_dir / "genotype.json")
            self._heatmap(self.out_dir / f"arch_{it:06d}.png", it)
            self._log(rec)
            if self.predictors:
                try:
                    plot_search_latency(self.out_dir / "search_log.jsonl", self.out_dir / "latency.png",
                                        tuple(self.s.band))
                except SegDistillError as e:  # matplotlib missing: the search goes on without pictures
                    warnings.warn(str(e))
            if it >= self.cfg.train.iters:
                self._report(rec, g, metrics)
        for p in self.predictors:
            metrics[f"derived_ms_{p}"] = rec[f"predicted_ms/{p}"]
        return metrics

    def _heatmap(self, path: Path, it: int):
        """softmax(alpha) per stage (strided layer + layers x ops), softmax(beta) (layer x input node) and the
        width probabilities, as one PNG."""
        from ..viz import new_figure, save_figure

        try:
            fig = new_figure(11, 2.6 * 3, "the search's architecture heatmaps")
        except SegDistillError as e:  # matplotlib missing: the search goes on without pictures
            warnings.warn(str(e))
            return
        if hasattr(self.supernet, "draw_arch"):  # a space that draws its own (lgcnet)
            with torch.no_grad():
                self.supernet.draw_arch(fig, it)
            return save_figure(fig, path)
        sp = self.supernet.space
        with torch.no_grad():
            desc = self.supernet.describe()
        axes = fig.subplots(3, 2, gridspec_kw={"width_ratios": [3, 1]})
        ops = list(sp.layer_ops)
        for s, st in enumerate(desc):
            rows = [[float(st["down"]["probs"][st["down"]["ops"].index(o)]) if o in st["down"]["ops"] else math.nan
                     for o in ops]] + [[float(v) for v in layer["probs"]] for layer in st["layers"]]
            ax = axes[s][0]
            im = ax.imshow(rows, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_yticks(range(len(rows)), ["down"] + [f"layer{j + 1}" for j in range(len(st["layers"]))],
                          fontsize=7)
            ax.set_xticks(range(len(ops)), ops if s == 2 else [""] * len(ops), rotation=35, ha="right", fontsize=7)
            widths = ", ".join(f"{w}: {float(p):.2f}" for w, p in zip(st["widths"], st["width_probs"]))
            ax.set_title(f"{st['stage']} (stride {st['stride']}) alpha; width {widths}", fontsize=8)
            L = len(st["layers"])
            beta = [[float(layer["input_probs"][i]) if i < len(layer["input_probs"]) else math.nan for i in range(L)]
                    for layer in st["layers"]] or [[math.nan]]
            ax = axes[s][1]
            ax.imshow(beta, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_title("beta (layer <- node)", fontsize=8)
            ax.set_xticks(range(max(L, 1)), [str(i) for i in range(max(L, 1))], fontsize=7)
            ax.set_yticks(range(len(beta)), [f"layer{j + 1}" for j in range(len(beta))], fontsize=7)
        fig.colorbar(im, ax=[a[0] for a in axes], fraction=0.02)
        fig.suptitle(f"architecture weights at iteration {it}", fontsize=9)
        save_figure(fig, path)

    def _report(self, rec: dict, genotype: dict, metrics: dict):
        s = self.s
        lines = [f"# Search report: {self.out_dir}", "",
                 f"{s.space} space at {'x'.join(map(str, s.input))} (latency keys), {self.cfg.train.iters} iterations "
                 f"({s.warmup_iters} weights-only), penalty `{s.penalty}`, lambda_kd {s.lambda_kd:g}, lambda_ged "
                 f"{s.lambda_ged:g} (GED stages by {s.ged_stages}), terms' expectations over the `{s.expectation}` "
                 f"network, Gumbel {'on' if s.gumbel else 'off'}; supernet val mIoU "
                 f"{100 * float(metrics.get('miou', float('nan'))):.2f}.", "",
                 "## Latency of the derived network", "",
                 "| platform | budget (ms) | predicted (ms) | / budget | in band | plain argmax (ms) | expected, soft (ms) "
                 "| final lambda |", "|---|---|---|---|---|---|---|---|"]
        lo, hi = s.band
        for p in self.predictors:
            b, ms = s.budget[p], rec[f"predicted_ms/{p}"]
            ok = "yes" if lo * b <= ms <= hi * b else ("over budget" if ms > b else "under the band")
            plain = rec.get(f"argmax_ms/{p}", ms)
            lines.append(f"| {p} | {b:g} | {ms:.3f} | {ms / b:.2f} | {ok} | {plain:.3f} | "
                         f"{rec[f'expected_ms/{p}']:.3f} | {self.lambdas[p]:.3g} |")
        for p, largest in self.unreachable.items():
            if largest is not None:
                lines.append(f"\n**{p}: the budget is out of reach**: the dearest network of the space is predicted at "
                             f"{largest:.3f} ms, under the band; the result is the space's answer without that "
                             "constraint binding.")
        lines += [f"\n**{p}: {note}**" for p, note in self.space_notes.items() if note]
        if not self.predictors:
            lines.append("| (no budget) | | | | | | | |")
        else:
            rule = {"argmax": "the plain argmax of the architecture weights (it was in the band)",
                    "priced": f"the argmax priced by latency (mu = {rec.get('derive_mu', 0):.4g}: "
                              + ("slower blocks favoured to use the budget" if rec.get("derive_mu", 0) < 0 else
                                 "faster blocks favoured to meet the budget") + ")",
                    "priced-widths": f"the argmax priced by latency with the stage widths fixed, the likeliest "
                                     f"width combination that lands in the band (mu = {rec.get('derive_mu', 0):.4g})",
                    "unreachable": "the argmax priced by latency at the largest price tried: no price reached the "
                                   "band"}[rec.get("derive_rule", "argmax")]
            ops = {"weights": " Ops picked by the weights (`search.derive_ops=weights`): each layer's likeliest "
                              "non-skip op, each strided op's likeliest; the price set depth, inputs and widths only.",
                   "perturb": " Ops ranked by perturbation (`search.derive_ops=perturb`, `segdistill.search.perturb`): "
                              "each choice's op is the one the trained supernet loses most without; the price set "
                              "depth, inputs and widths only."}.get(s.derive_ops, "")
            if rec.get("perturb"):
                pt = rec["perturb"]
                ops += (f" On {pt['batches']} architecture batches the most important op differs from the weights' "
                        f"pick in {pt['changed']} of {pt['choices']} choices and leads the runner-up by more than 2 "
                        f"standard errors in {pt['decided']} of {pt['scored']} (scores in `perturbation.json`).")
            if rec.get("derive_weights_ops"):
                same, kept = rec["derive_weights_ops"]
                ops += (f" Of its {kept} ops (strided ones and kept layers), {same} are the weights' own pick (a "
                        f"layer's likeliest non-skip op); the price chose the other {kept - same}.")
            lines += ["", f"Derived by `search.derive={s.derive}`: {rule}.{ops} See "
                      "`segdistill.search.objective.derive_within_budget`."]
        lines += ["", f"Band: [{lo:g}, {hi:g}] x budget. Predictions from the tables "
                  + "; ".join(f"{p}: {pred.table.path or 'measured here'} ({pred.table.device_note()})"
                              for p, pred in self.predictors.items())
                  + ". Measure the retrained network with `segdistill profile` before quoting a latency.", "",
                  "![latency over the search](latency.png)" if self.predictors else "", "",
                  "## Structure", ""]
        if "ged" in rec:
            kind = "exact" if rec["ged_exact"] else f"upper bound (exact search stopped after {s.ged_timeout:g} s)"
            lines += [f"- GED of the derived network to the teacher (normalised by the teacher's {rec['teacher_nodes']} "
                      f"nodes + edges): {rec['ged']:.3f}, {kind}",
                      f"- fixed-correspondence GED: {rec['correspondence_ged']:.3f}; expected GED of the supernet: "
                      f"{rec['expected_ged']:.3f}"]
        else:
            lines.append("- no teacher: no structural term")
        lines += ["", "## Architecture weights", "", preference_line(op_preference(self.supernet)) + ". Where they "
                  "stay near uniform, the derived network is decided by the latency price, not by the search.",
                  "", "## Derived network (`genotype.json`)", ""]
        if genotype["space"] == "lgcnet":
            from .space_lgcnet import report_rows

            lines += report_rows(genotype)
        else:
            lines += ["| stage | width | strided op | layers |", "|---|---|---|---|"]
        for name, st in zip(("stride 8", "stride 16", "stride 32"), genotype.get("stages", [])):
            layers = ", ".join(f"{la['op']}<-{la['inputs']}" for la in st["layers"]) or "(none)"
            lines.append(f"| {name} | {st['width']} | {st['down']} | {layers} |")
        lines += ["", "Files: `genotype.json` (train it: `model.name=searched:genotype.json`), `search_log.jsonl`, "
                  "`arch_*.png`, `metrics.jsonl`, `best.pt`/`last.pt` (the supernet).", ""]
        (self.out_dir / "report.md").write_text("\n".join(lines))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"lambdas": dict(self.lambdas), "arch_pos": self.arch_pos, "tau": self.tau,
                "space": space_options(self.s), "weight_indices": list(self.weight_indices)}

    def load_state_dict(self, state: dict):
        if state.get("space") != space_options(self.s) or state.get("weight_indices") != self.weight_indices:
            raise CheckpointError("this run was a search of another space or data split (search.* or train.seed "
                                  "differ); resume with the config that started it, or use a new train.out_dir")
        if sorted(state["lambdas"]) != sorted(self.lambdas):
            raise CheckpointError(f"this search had budgets on {sorted(state['lambdas'])}, the config on "
                                  f"{sorted(self.lambdas)}; resume with the config that started it")
        self.lambdas = {p: float(v) for p, v in state["lambdas"].items()}
        self.arch_pos, self.tau = int(state["arch_pos"]), float(state["tau"])
        self.supernet.tau = self.tau
        it = self.trainer.state.iteration
        self.supernet.aux_skip = self._aux_at(it)
        log = self.out_dir / "search_log.jsonl"
        if dist.is_main() and log.exists():  # drop records written after the checkpoint
            keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln).get("iter", 0) <= it]
            log.write_text("".join(ln + "\n" for ln in keep))


@register_hook("search")
def _search(cfg):
    """Architecture search (:class:`SearchHook`) when ``search.space`` is set."""
    return SearchHook(cfg) if cfg.search.space else None
