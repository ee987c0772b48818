"""The pieces of the search objective (``segdistill/search/hook.py``) that need no trainer.

``L_arch = CE + lambda_kd * KD + lambda_ged * E[GED] + sum_p lambda_p * penalty_p`` (seed 000,
``../shared/docs/methods.md`` "Structural KD with architecture search"):

* :func:`soft_graph`: the supernet's architecture distribution (:meth:`ChainSupernet.describe`) as a
  :class:`~segdistill.search.graph.SoftGraph` at fixed positions, for :func:`~segdistill.search.ged.expected_ged`.
* :func:`latency_penalty`: per platform p with budget B_p and expected latency E_p (ms, differentiable):

  - ``proxyless`` (default, ProxylessNAS's additive form): ``E_p / B_p``. It always pulls towards faster ops, with
    a strength lambda_p that band control tunes, so the search neither overshoots nor wastes the budget.
  - ``hinge``: ``max(0, E_p / B_p - 1)``: no pull at all while the expectation is within budget.

* :func:`band_update`: FasterSeg's rule. Every band check the argmax network is derived and its latency predicted
  (``P_p``); ``lambda_p`` is multiplied by ``factor`` when ``P_p > hi * B_p`` (too slow: pull harder), divided by it
  when ``P_p < lo * B_p`` (budget left unused: let the task loss buy accuracy), kept inside the band
  (default [0.9, 1.0] x budget), and clamped to [1e-6, 1e6].
* :func:`derive_within_budget`: the network the search returns. The plain argmax of the architecture weights can
  land far from the budget even when the soft expectation sits on it (a layer whose skip wins by a hair is removed
  although most of its probability mass was on convolutions), and band control cannot fix that from below: lambda
  only pulls towards *faster* ops. So the final network is the priced argmax: each choice maximises
  ``log p(choice) - mu * sum_p cost_p(block) / B_p`` (cost_p: the block's share of platform p's prediction), a
  Lagrangian relaxation of "most likely network within the budgets". ``mu = 0`` (the argmax) when that lands in the
  band; else the ``mu`` closest to 0 that brings it into the band, found by bisection on the predicted latency
  (``mu > 0`` when the argmax is over budget, ``mu < 0`` when it leaves budget unused). Every platform's budget is
  met; the one that binds lands in the band. Where a step of ``mu`` jumps over the band (a stage's width changing),
  the chain space bisects again per width combination and keeps the likeliest network in the band.
* :func:`platform_predictors`: one latency predictor per budgeted platform: ``search.lut.<p>`` when given, else a
  new table measured here (only when the platform runs on this machine; otherwise a ConfigError naming it). Every
  key of the space is made present before the search starts (tables measured here are saved as
  ``<out_dir>/lut_<platform>.json`` and reused on resume, so a resumed search sees the same numbers).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from ..errors import ConfigError, LatencyError
from ..latency import standalone as core
from ..latency.lut import LatencyTable
from ..latency.predictor import LatencyPredictor
from .graph import ABSENT, SoftGraph, channel_bucket, slot_depth
from .space_chain import ChainSpace, ChainSupernet, block_scorer, expectation_of, stage_liveness

PENALTIES = ("proxyless", "hinge")
LAMBDA_RANGE = (1e-6, 1e6)


# ---------------------------------------------------------------------------- structure
def soft_graph(supernet: ChainSupernet, expectation: str | None = None) -> SoftGraph:
    """The supernet as a :class:`SoftGraph` (gradients flow to alpha, beta and the width logits).

    Nodes in the order a traced derived network runs them: stem (conv-k3 at stride 2, dw-conv at stride 4), per
    stage the strided layer and the L searchable layers (skip = absent; widths with their probabilities), then the
    head: conv-k1 on stride 32, resize to stride 8, conv-k1 on the stride-8 stage, merge, conv-k3 (refine), conv-k1
    (classifier). Relative depths count every node a stage can hold (the head's stride-8 nodes join stage 1, its
    stride-32 conv stage 3), as :func:`model_graph` counts them in a network where every layer is present.

    ``expectation`` (default: the supernet's ``.expectation``, ``search.expectation``) says what the edges (and
    presences) are the distribution of:

    * ``"derived"`` (default): the graph of the network :func:`~segdistill.search.genotype.derive` builds (one input
      per layer). A layer whose skip wins is removed and its readers read its own (resolved) input; a layer nobody
      reads is removed; an MBConv layer (stride 1, same width) is ``mbconv -> merge`` with its input's edge into the
      merge, and its readers read the merge. See :func:`_derived_stage`; at one-hot architecture weights
      :meth:`SoftGraph.to_graph` is the traced derived network's graph (same nodes, labels, strides, buckets and
      edges; tested).
    * ``"supernet"``: the supernet's own wiring, edge i -> j with probability softmax(beta_j)_i between present
      layers, no merges, no removal of unread layers. A removed layer takes its readers' edges with it, so removing
      layers looks cheaper in edges than it is (the search runs up to 2026-12-06 used it).

    A supernet with its own ``soft_graph(expectation)`` (lgcnet) gives that."""
    expectation = expectation_of(supernet, expectation)
    if hasattr(supernet, "soft_graph"):
        return supernet.soft_graph(expectation)
    derived = expectation == "derived"
    sp = supernet.space
    desc = supernet.describe()
    L = sp.layers
    per = 2 if derived else 1  # slots per searchable layer (the layer, and its residual merge)
    counts = {1: 1 + per * L + 5, 2: 1 + per * L, 3: 1 + per * L + 1}  # slots per graph stage (strides 8, 16, 32)
    sg = SoftGraph()
    stem = sg.add_fixed("conv-k3", stride=2, channels=sp.stem_widths[0], depth=slot_depth(0, 2), name="stem")
    prev = {sg.add_fixed("dw-conv", stride=4, channels=sp.stem_widths[1], depth=slot_depth(1, 2), name="stage1"): 1.0}
    sg.add_edge(stem, next(iter(prev)))
    outs = []
    for s, st in enumerate(desc):
        n, name = counts[s + 1], st["stage"]
        down = sg.add_layer(st["down"]["ops"], st["down"]["probs"], stride=st["stride"], channels=st["widths"],
                            width_probs=st["width_probs"], depth=slot_depth(0, n), name=f"{name}.down")
        for u, p in prev.items():
            sg.add_edge(u, down, p)
        if derived:
            prev = _derived_stage(sg, st, down, n)
        else:
            ids = [down]
            for j, layer in enumerate(st["layers"], start=1):
                ids.append(sg.add_layer(layer["ops"], layer["probs"], stride=st["stride"], channels=st["widths"],
                                        width_probs=st["width_probs"], depth=slot_depth(j, n), name=f"{name}.layer{j}"))
                for i, p in zip(layer["inputs"], layer["input_probs"]):
                    sg.add_edge(ids[i], ids[j], p)
            prev = {ids[-1]: 1.0}
        outs.append(prev)
    ch, k = sp.head_channels, sp.num_classes
    high = sg.add_fixed("conv-k1", stride=32, channels=ch, depth=slot_depth(1 + per * L, counts[3]), name="head.high")
    up = sg.add_fixed("resize", stride=8, channels=ch, depth=slot_depth(1 + per * L, counts[1]), name="head.up")
    low = sg.add_fixed("conv-k1", stride=8, channels=ch, depth=slot_depth(2 + per * L, counts[1]), name="head.low")
    fuse = sg.add_fixed("merge", stride=8, channels=ch, depth=slot_depth(3 + per * L, counts[1]), name="head.fuse")
    refine = sg.add_fixed("conv-k3", stride=8, channels=ch, depth=slot_depth(4 + per * L, counts[1]),
                          name="head.refine")
    cls = sg.add_fixed("conv-k1", stride=8, channels=k, depth=slot_depth(5 + per * L, counts[1]),
                       name="head.classifier")
    for src, v in ((outs[2], high), ({high: 1.0}, up), (outs[0], low), ({up: 1.0}, fuse), ({low: 1.0}, fuse),
                   ({fuse: 1.0}, refine), ({refine: 1.0}, cls)):
        for u, p in src.items():
            sg.add_edge(u, v, p)
    return sg


def _derived_stage(sg: SoftGraph, st: dict, down: int, n: int) -> dict:
    """Add one stage's searchable layers as the distribution of the derived network's graph (``expectation="derived"``
    of :func:`soft_graph`); returns ``{graph node: probability that the stage's output is that node, given it is
    present}`` for the stage's readers.

    Layer j is present with probability P_j (1 - its skip probability), reads node m with probability q[j][m] and is
    kept when read (U_j), as :func:`~.space_chain.stage_liveness` computes them; the node's presence becomes P_j U_j
    (the skip candidate takes the rest). An MBConv layer has a ``merge`` node (present with p_mbconv(m) U_m):
    ``m -> merge``, its input's edge into the merge as well, and readers of m read the merge, so the edge from m itself
    exists with probability q (1 - p_mbconv(m) / P_m) and the one from the merge with q.

    Exact at one-hot weights; in between it treats the resolution and keeping events as independent of each other
    and of the ends' presence (they share some layers' skip events)."""
    layers, stride, widths, wp = st["layers"], st["stride"], st["widths"], st["width_probs"]
    L = len(layers)
    live = stage_liveness(layers)
    P, R, q, U, skip = live["P"], live["R"], live["q"], live["U"], live["skip"]
    if None in skip:
        raise ConfigError("search.expectation=derived: the chain space's structural term needs the skip op among "
                          "its layer ops (skip stands for a removed layer); add skip to layer_ops or set "
                          "search.expectation=supernet")
    mb = [P[0] * 0] + [lay["probs"][[c for c, kd in enumerate(lay["kinds"]) if kd == "mbconv"]].sum() for lay in layers]
    node, merge = {0: down}, {}
    for j, lay in enumerate(layers, start=1):
        probs = lay["probs"] * U[j]
        probs = probs + torch.nn.functional.one_hot(torch.tensor(skip[j - 1]), len(probs)).to(probs) * (1 - U[j])
        node[j] = sg.add_layer(lay["ops"], probs, stride=stride, channels=widths, width_probs=wp,
                               depth=slot_depth(2 * j - 1, n), name=f"{st['stage']}.layer{j}")
        has = mb[j] * U[j]
        merge[j] = sg.add_node(["merge"] * len(widths) + [ABSENT], torch.cat([has * wp, (1 - has).reshape(1)]),
                               strides=stride, buckets=[channel_bucket(c) for c in widths] + [0],
                               depth=slot_depth(2 * j, n), name=f"{st['stage']}.layer{j}.merge")
        sg.add_edge(node[j], merge[j])

    def sources(m: int, p) -> dict:  # {graph node: edge probability} of "reads resolved node m" (probability p)
        if m == 0:
            return {node[0]: p}
        return {node[m]: p * (1 - mb[m] / P[m].clamp_min(1e-12)), merge[m]: p}

    for j in range(1, L + 1):
        for m in range(j):
            for u, p in sources(m, q[j][m]).items():
                sg.add_edge(u, node[j], p)
                sg.add_edge(u, merge[j], p)
    out: dict = {}
    for m in range(L + 1):
        out.update(sources(m, R[L][m]))
    return out


# ---------------------------------------------------------------------------- latency
def latency_penalty(expected: torch.Tensor, budget: float, form: str = "proxyless") -> torch.Tensor:
    """The latency term of one platform before its lambda (see the module docstring)."""
    ratio = expected / float(budget)
    if form == "proxyless":
        return ratio
    if form == "hinge":
        return torch.clamp(ratio - 1.0, min=0.0)
    raise ConfigError(f"search.penalty={form!r} is not a latency penalty; choose one of {', '.join(PENALTIES)}")


def band_update(lam: float, predicted: float, budget: float, band=(0.9, 1.0), factor: float = 2.0) -> tuple[float, str]:
    """FasterSeg's band control: ``(new lambda, "up" | "down" | "in")`` for a derived network predicted at
    ``predicted`` ms against ``budget`` ms and the target band ``[lo, hi] x budget``."""
    lo, hi = band
    if predicted > hi * budget:
        lam, move = lam * factor, "up"
    elif predicted < lo * budget:
        lam, move = lam / factor, "down"
    else:
        move = "in"
    return float(min(max(lam, LAMBDA_RANGE[0]), LAMBDA_RANGE[1])), move


def check_budgets(search) -> None:
    """Budgets are positive numbers, every table belongs to a budgeted platform, the band is ordered."""
    for p, b in search.budget.items():
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
            raise ConfigError(f"search.budget.{p}={b!r} is not allowed: a budget is a latency in ms, > 0")
    extra = sorted(set(search.lut) - set(search.budget))
    if extra:
        raise ConfigError(f"search.lut names {extra} but search.budget has no budget for them; add "
                          f"search.budget.{extra[0]}=MS or drop the table")
    if len(search.band) != 2 or search.band[0] > search.band[1]:
        raise ConfigError(f"search.band={search.band} must be [lo, hi] with lo <= hi (fractions of the budget)")
    if len(search.input) != 4 or search.input[0] != 1:
        raise ConfigError(f"search.input={search.input} must be the deployment shape [1, 3, H, W]")


def _table_for(platform: str, lut: str | None, copy: Path, threads: int) -> LatencyTable:
    if copy.is_file():
        return LatencyTable.load(copy)
    if lut:
        table = LatencyTable.load(lut)
        if table.platform != platform:
            raise ConfigError(f"search.lut.{platform}={lut} is a table of platform {table.platform!r}, not "
                              f"{platform!r}; give that platform's table")
        return table
    plat = core.PLATFORMS.get(platform)
    why = "it is not a known platform (known: " + ", ".join(core.PLATFORMS) + ")" if plat is None else plat.available()
    if why:
        raise ConfigError(f"search.budget.{platform}: platform {platform!r} has no latency table (search.lut."
                          f"{platform}) and cannot be measured here: {why}. Build a table on that device "
                          f"(`segdistill lut build --space chain ... --platform {platform}` there, or "
                          f"`segdistill lut blocks` + standalone.py) and set search.lut.{platform}=PATH")
    return LatencyTable.new(platform, threads)


def platform_availability(search) -> None:
    """Raise the ConfigError of a platform that has neither a table nor a local device (cheap: no measuring)."""
    for p in search.budget:
        if p not in search.lut:
            _table_for(p, None, Path("/nonexistent-segdistill-table"), 1)


def platform_predictors(search, space: ChainSpace, out_dir: Path, threads: int,
                        progress: bool = False) -> dict[str, LatencyPredictor]:
    """``{platform: LatencyPredictor}`` with every key of ``space`` present (module docstring)."""
    preds = {}
    keys = space.keys()
    for p in search.budget:
        copy = Path(out_dir) / f"lut_{p}.json"
        table = _table_for(p, search.lut.get(p), copy, threads)
        try:
            measured = table.ensure(keys, measure=True, progress=progress)
        except LatencyError as e:
            raise ConfigError(f"search.lut.{p}: {e}") from None
        if measured:
            table.save(copy)
        preds[p] = LatencyPredictor(table, measure=True, progress=False)
    return preds


def derive_within_budget(supernet, predictors: dict[str, LatencyPredictor], budgets: dict[str, float],
                         band=(0.9, 1.0), top_k: int | None = None, steps: int = 30,
                         ops: str = "priced") -> tuple[dict, dict]:
    """``(genotype, info)``: the priced argmax of ``supernet`` for ``budgets`` (module docstring). ``info``:
    ``rule`` (``argmax``: the plain argmax was in the band; ``priced``; ``priced-widths``: see below;
    ``unreachable``: no price reaches the band, the network at the largest price tried), ``mu``, ``logp`` (the
    kept choices' log-probability less the argmax's; chain space only, else None), ``predicted_ms`` and
    ``argmax_ms`` per platform, ``weights_ops`` (chain, else None: :func:`derive`'s ``[kept ops the weights picked,
    kept ops]``).

    Chain space: when a step of ``mu`` jumps over the band (typically a stage's width changing), the bisection is
    run again with the widths fixed, for every width combination, and the in-band network of highest ``logp`` is
    taken (``priced-widths``); when none lands in the band, the network just under it stays. The LGCNet space has
    fixed widths and no such fallback: a jump leaves its network under the band. ``ops``: :func:`derive`'s (chain:
    ``weights`` keeps the weights' op choices, and the price sets depth, inputs and widths only)."""
    from .genotype import derive, genotype_netspec

    shape, nc = tuple(supernet.space.input_shape), supernet.num_classes
    keys = supernet.keys()
    cost: dict[str, float] = {}
    for p, pred in predictors.items():
        _, score = block_scorer(pred, keys)
        for k in keys:
            cost[k] = cost.get(k, 0.0) + score(k) / float(budgets[p])
    ratio = lambda ms: max((ms[p] / float(budgets[p]) for p in ms), default=1.0)  # noqa: E731
    lo, hi = band

    seen: dict = {}  # (mu, widths) -> result: the bisection and the per-width passes revisit the same points
    weights_ops: dict = {}  # id(genotype) -> derive's stats["weights_ops"]

    def at(mu: float, **kw) -> tuple[dict, dict[str, float], float]:
        memo = (mu, tuple(kw.get("widths") or ()))
        if memo not in seen:
            stats = {}
            g = derive(supernet, top_k, price=(lambda key: mu * cost[str(key)]) if mu else None, stats=stats, ops=ops,
                       **kw)
            spec = genotype_netspec(g, shape, nc)
            seen[memo] = (g, {p: float(pred.predict(spec)["predicted_ms"]) for p, pred in predictors.items()},
                          stats.get("logp"))
            weights_ops[id(g)] = stats.get("weights_ops")
        return seen[memo]

    def solve(**kw) -> tuple[dict, dict, float, float, str]:
        """(genotype, ms, logp, mu, rule) by bisection on mu (with ``kw`` passed to derive)."""
        g, ms, lp = at(0.0, **kw)
        if lo <= ratio(ms) <= hi:
            return g, ms, lp, 0.0, "argmax"
        over = ratio(ms) > hi
        sign = 1.0 if over else -1.0
        reached = (lambda r: r <= hi) if over else (lambda r: r >= lo)  # noqa: E731
        a, b, m = 0.0, None, 1e-3
        while m <= 1e5:  # bracket: a fails, b reaches
            g, ms, lp = at(sign * m, **kw)
            if reached(ratio(ms)):
                b = m
                break
            a, m = m, m * 2
        if b is None:  # over: impossible after the set-up check on the smallest network; under: the space's top
            return g, ms, lp, sign * a, "unreachable"
        for _ in range(steps):
            mid = (a + b) / 2 if a == 0 else (a * b) ** 0.5
            if reached(ratio(at(sign * mid, **kw)[1])):
                b = mid
            else:
                a = mid
        g, ms, lp = at(sign * b, **kw)
        if not over and ratio(ms) > hi:  # the step from under the band jumped over it: the network just under
            (g, ms, lp), b = at(sign * a, **kw), a
        return g, ms, lp, sign * b, "priced"

    plain = at(0.0)[1]
    g, ms, lp, mu, rule = solve() if predictors else (*at(0.0), 0.0, "argmax")
    if predictors and not lo <= ratio(ms) <= hi and isinstance(supernet, ChainSupernet):
        sp = supernet.space
        found = []
        for widths in itertools.product(*[sp.widths(s) for s in range(3)]):
            cand = solve(widths=list(widths))
            if lo <= ratio(cand[1]) <= hi:
                found.append(cand)
        if found:
            g, ms, lp, mu, _ = max(found, key=lambda c: c[2])
            rule = "priced-widths"
    return g, {"rule": rule, "mu": mu, "logp": lp, "predicted_ms": ms, "argmax_ms": plain,
               "weights_ops": weights_ops.get(id(g))}
