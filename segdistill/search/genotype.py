"""Genotypes of the chain space: a small versioned JSON description of one derived network.

Format (``format`` = ``segdistill-genotype``, ``version`` = 1)::

    {
      "format": "segdistill-genotype", "version": 1, "space": "chain",
      "input": [1, 3, 180, 240],          # the input shape the search's latency keys used (informational)
      "stem_widths": [16, 24],            # fixed stem: conv3x3 s2 -> dwsep3x3 s2
      "base_widths": [48, 96, 160],       # the space's stage base widths (informational)
      "head_channels": 64,                # fixed head width
      "top_k": 1,                         # predecessors kept per layer when derived (informational)
      "stages": [                         # strides 8, 16, 32
        {"width": 40, "down": "mbconv_k3_e6",
         "layers": [{"op": "dwsep_3x3", "inputs": [0]}, {"op": "mbconv_k5_e3", "inputs": [0, 1]}],
         "output": [2]},
        ...
      ]
    }

Nodes of a stage: 0 is the strided first layer's output (op ``down``, stride 2, from the previous stage's output),
``j`` (1-based) is ``layers[j-1]``'s output. A layer reads the sum of its ``inputs`` (earlier nodes; more than one
are summed by library ``add`` blocks), the stage's output is the sum of its ``output`` nodes. Op names are those of
:data:`segdistill.search.space_chain.OPS`.

:func:`derive` turns a supernet into a genotype: the argmax width, strided op and layer ops; per layer the ``top_k``
(default 1) predecessors of largest beta. Then depth: a layer whose skip wins is removed and its consumers read its
(resolved) inputs instead; duplicate inputs are merged (a sum of one map with itself is that map up to scale, which
the next BN absorbs); layers that no longer reach the stage output are removed. Top-1 adds no ``add`` block, so the
derived network's predicted latency is what the supernet's expectation gives at one-hot weights (less, when layers
were removed as unreachable: the expectation counts every layer).

:func:`stage_plan` lists a stage's blocks (keys at an input shape) once, for both the runnable model
(``segdistill/models/searched.py``) and :func:`genotype_netspec`, the network as blocks for the latency predictor.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Mapping

import torch

from ..errors import ConfigError
from ..latency.network import NetSpec, Node
from ..latency.standalone import BlockKey, write_json_atomic
from .space_chain import OPS, STAGE_STRIDES, ChainSpace, ChainSupernet, add_key, op_key

FORMAT = "segdistill-genotype"
VERSION = 1

#: The genotype ``build_model("searched", K)`` uses when none is given (so `segdistill models` and the latency zoo
#: can list the family): a hand-written reference network of the default space, not a search result.
DEFAULT_GENOTYPE = {
    "format": FORMAT, "version": VERSION, "space": "chain", "input": [1, 3, 180, 240], "stem_widths": [16, 24],
    "base_widths": [48, 96, 160], "head_channels": 64, "top_k": 1,
    "stages": [
        {"width": 40, "down": "mbconv_k3_e6", "layers": [{"op": "mbconv_k3_e3", "inputs": [0]}], "output": [1]},
        {"width": 72, "down": "mbconv_k3_e6",
         "layers": [{"op": "mbconv_k3_e3", "inputs": [0]}, {"op": "mbconv_k5_e3", "inputs": [1]}], "output": [2]},
        {"width": 120, "down": "mbconv_k5_e6", "layers": [{"op": "dwsep_5x5", "inputs": [0]}], "output": [1]},
    ],
}


# ---------------------------------------------------------------------------- derive
def _resolve_stage(ops: list[str], inputs: list[list[int]], kept_out: list | None = None) -> tuple[list[dict], list[int]]:
    """Remove skip-won and unreachable layers of one stage. ``ops[j-1]``, ``inputs[j-1]`` describe raw node j.
    Returns (layers with renumbered inputs, output node indices); ``kept_out`` receives the kept raw nodes j."""
    alias: dict[int, list[int]] = {0: [0]}  # raw node -> the raw nodes it stands for in the derived network
    reads: dict[int, list[int]] = {}
    for j, (op, ins) in enumerate(zip(ops, inputs), start=1):
        resolved = sorted({r for i in ins for r in alias[i]})
        if op == "skip":
            alias[j] = resolved
        else:
            alias[j], reads[j] = [j], resolved
    last = len(ops)
    live, todo = set(), list(alias[last])
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo += reads.get(n, [])
    kept = [j for j in sorted(reads) if j in live]
    if kept_out is not None:
        kept_out += kept
    new = {0: 0, **{j: k for k, j in enumerate(kept, start=1)}}
    layers = [{"op": ops[j - 1], "inputs": [new[i] for i in reads[j]]} for j in kept]
    return layers, [new[i] for i in alias[last]]


DERIVE_OPS = ("priced", "weights")


def derive(supernet: ChainSupernet, top_k: int | None = None, price=None, widths=None, stats: dict | None = None,
           ops: str = "priced") -> dict:
    """The genotype of the most likely network of ``supernet`` (see the module docstring; ``top_k`` default 1).

    ``price`` (a function of a block's :class:`BlockKey`, in nats) turns the argmax into a priced one: every choice
    maximises ``log p(choice) - price(its block)``, the width of each stage jointly with its ops (all width
    combinations tried); :func:`segdistill.search.objective.derive_within_budget` sets the price so that the network
    meets its budgets. Without a price (or a zero one) it is the plain argmax. ``widths`` (chain: 3 channel counts)
    fixes the stages' widths; ``stats`` (a dict) receives ``logp``, the log-probability of the kept choices less the
    argmax's (0 for the argmax, < 0 otherwise), and (chain) ``weights_ops``: ``[kept ops that are the weights'
    own pick, kept ops]`` over the strided ops and the kept layers (a layer's pick: its likeliest non-skip op), which
    says how much of the network the price chose against the weights. ``ops`` (chain): ``priced`` lets the price pick any op of a layer
    and any strided op; ``weights`` lets the weights alone pick them (each layer's op is its likeliest non-skip op,
    each strided op its likeliest), so that the price decides only depth (that op or skip), inputs and widths
    (LGCNet: each edge's and fusion level's op, the price deciding which are kept). Supernets of other spaces derive
    themselves
    (``supernet.derive(top_k, price=...)``, their own default ``top_k``)."""
    if ops not in DERIVE_OPS:
        raise ConfigError(f"derive ops={ops!r}: choose one of {', '.join(DERIVE_OPS)}")
    if not isinstance(supernet, ChainSupernet):
        kw = ({} if price is None else {"price": price}) | ({} if ops == "priced" else {"ops": ops})
        return supernet.derive(**kw) if top_k is None else supernet.derive(top_k, **kw)
    top_k = 1 if top_k is None else top_k
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    sp = supernet.space
    with torch.no_grad():
        lgs = [supernet.stage_logits(s) for s in range(3)]
        logp, widths, downs, stage_layers = _choose(sp, lgs, price or (lambda key: 0.0), top_k, widths, ops)
        stages, agree, total = [], 0, 0
        skip = _skip_index(sp)
        for s in range(3):
            kept: list[int] = []
            layers, output = _resolve_stage(*stage_layers[s], kept_out=kept)
            stages.append({"width": widths[s], "down": downs[s], "layers": layers, "output": output})
            if stats is not None:  # how many kept ops are the weights' own pick
                picks = [sp.layer_ops[weights_choice(a.tolist(), skip)] for a in lgs[s]["alpha"]]
                agree += (downs[s] == sp.down_ops[weights_choice(lgs[s]["down"].tolist())]) + sum(
                    stage_layers[s][0][j - 1] == picks[j - 1] for j in kept)
                total += 1 + len(kept)
        if stats is not None:
            stats["logp"], stats["weights_ops"] = logp, [int(agree), total]
    return {"format": FORMAT, "version": VERSION, "space": "chain", "input": list(sp.input_shape),
            "stem_widths": list(sp.stem_widths), "base_widths": list(sp.base_widths),
            "head_channels": sp.head_channels, "top_k": top_k, "stages": stages}


def op_preference(supernet) -> dict:
    """How decided the architecture weights are: every op choice of ``supernet.describe()`` (chain: each layer's and
    strided op; LGCNet: each edge's and fusion's), its probabilities times the number of candidates (1.0 = uniform).
    Returns ``{"ops": {op: mean ratio over the choices offering it}, "max_ratio": the largest single ratio, "choices":
    count, "decided": share of choices whose favourite has at least twice the uniform probability}``."""
    sums: dict[str, list[float]] = {}
    rows: list[list[float]] = []

    def walk(node):
        if isinstance(node, dict):
            if "ops" in node and "probs" in node:
                probs = node["probs"].detach().float()
                for row in probs.reshape(-1, probs.shape[-1]).tolist():
                    ratio = [p * len(row) for p in row]
                    rows.append(ratio)
                    for op, r in zip(node["ops"], ratio):
                        sums.setdefault(op, []).append(r)
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(supernet.describe())
    return {"ops": {op: sum(v) / len(v) for op, v in sums.items()},
            "max_ratio": max((max(r) for r in rows), default=1.0), "choices": len(rows),
            "decided": sum(max(r) >= 2.0 for r in rows) / max(len(rows), 1)}


def preference_line(pref: dict) -> str:
    """One line of :func:`op_preference` for logs and reports."""
    ops = sorted(pref["ops"].items(), key=lambda kv: -kv[1])
    return (f"architecture weights, probability x candidates (1 = uniform), mean over {pref['choices']} choices: "
            + ", ".join(f"{op} {r:.2f}" for op, r in ops)
            + f"; largest {pref['max_ratio']:.2f}; {100 * pref['decided']:.0f}% of choices favour one op at >= 2x uniform")


def first_argmax(scores: list[float]) -> int:
    """The index of the first maximum of a list (as torch.argmax picks it)."""
    return max(range(len(scores)), key=scores.__getitem__)


def _stage_layers(la: list[list[float]], lb: list[list[float]], keys: list[BlockKey], ops: tuple, price,
                  top_k: int) -> tuple[float, float, list[str], list[list[int]]]:
    """One stage's layers at one width: ``(score, logp, ops, inputs)``, the score (priced) and the log-probability
    (unpriced) of the kept choices, each relative to the plain argmax.

    Top-1: the derived stage is the path its last layer reaches through each layer's input; layers off it are
    removed, so their choices cost nothing and keep the argmax. A dynamic programme over the path maximises the
    sum over its layers of ``log p(op) - price(op) + log p(input)``, each less its argmax value (so that a zero
    price gives the plain argmax). Top-k > 1: every layer keeps its k likeliest inputs, ops priced one by one."""
    best_ops, regret, loss = [], [], []
    for a in la:
        scores = [v - price(k) for v, k in zip(a, keys)]
        o = first_argmax(scores)
        best_ops.append(o)
        regret.append(scores[o] - max(a))
        loss.append(a[o] - max(a))
    plain_in = [sorted(sorted(range(len(b)), key=lambda i: -b[i])[:top_k]) for b in lb]
    if top_k > 1 or not la:
        return sum(regret), sum(loss), [ops[o] for o in best_ops], plain_in
    f, back = [0.0], [None]
    for j, b in enumerate(lb, start=1):
        i = first_argmax([f[i] + b[i] for i in range(j)])
        f.append(regret[j - 1] + f[i] + b[i] - max(b))
        back.append(i)
    path, j = set(), len(la)
    while j:
        path.add(j)
        j = back[j]
    chosen = [best_ops[j - 1] if j in path else first_argmax(la[j - 1]) for j in range(1, len(la) + 1)]
    inputs = [[back[j]] if j in path else [first_argmax(lb[j - 1])] for j in range(1, len(la) + 1)]
    logp = sum(loss[j - 1] + lb[j - 1][back[j]] - max(lb[j - 1]) for j in path)
    return f[-1], logp, [ops[o] for o in chosen], inputs


def weights_choice(values: list[float], but: int | None = None) -> int:
    """The weights' own pick: the index of the first largest of ``values`` other than ``but`` (e.g. skip)."""
    return max((i for i in range(len(values)) if i != but), key=values.__getitem__)


def weights_pick(logp: list[float], keep: int | None = None) -> list[float]:
    """``logp`` with every entry but the weights' own pick (and ``keep``, e.g. skip or none) set to -inf: a choice no
    price can change (``derive(ops="weights")``)."""
    best = weights_choice(logp, keep)
    return [v if i in (best, keep) else -math.inf for i, v in enumerate(logp)]


def _skip_index(sp: ChainSpace) -> int | None:
    return sp.layer_ops.index("skip") if "skip" in sp.layer_ops else None


def _choose(sp: ChainSpace, lgs: list[dict], price, top_k: int, fixed_widths=None, ops: str = "priced"):
    """``(logp, widths, strided ops, per stage (layer ops, layer inputs))`` maximising the sum of ``log p - price``
    over the choices the derived network keeps (:func:`_stage_layers`; ``logp``: their unpriced log-probability
    less the argmax's). Ops depend on the widths only through their price, so each width combination picks its ops
    independently; all combinations are tried, or only ``fixed_widths`` (the first maximum on ties: the plain argmax
    when the price is zero)."""
    lp = lambda t: torch.log_softmax(t.detach().float(), 0).tolist()  # noqa: E731
    lw, ld = [lp(lg["width"]) for lg in lgs], [lp(lg["down"]) for lg in lgs]
    la, lb = [[lp(a) for a in lg["alpha"]] for lg in lgs], [[lp(b) for b in lg["beta"]] for lg in lgs]
    if ops == "weights":
        la = [[weights_pick(a, _skip_index(sp)) for a in stage] for stage in la]
        ld = [weights_pick(d) for d in ld]
    layer_best = {(s, i): _stage_layers(la[s], lb[s], sp.layer_keys(s, c), sp.layer_ops, price, top_k)
                  for s in range(3) for i, c in enumerate(sp.widths(s))}
    combos = itertools.product(*[range(len(sp.width_ratios))] * 3)
    if fixed_widths is not None:
        if len(fixed_widths) != 3 or any(w not in sp.widths(s) for s, w in enumerate(fixed_widths)):
            raise ConfigError(f"widths {fixed_widths} are not one per stage of {[sp.widths(s) for s in range(3)]}")
        combos = [tuple(sp.widths(s).index(w) for s, w in enumerate(fixed_widths))]
    best = None
    for combo in combos:
        widths = [sp.widths(s)[i] for s, i in enumerate(combo)]
        head = sp.head_keys(widths[0], widths[2])
        logp = sum(lw[s][i] - max(lw[s]) for s, i in enumerate(combo))
        score = logp - price(head["high"]) - price(head["low"])
        downs = []
        for s, i in enumerate(combo):
            keys = sp.down_keys(s, sp.in_widths(s)[0] if s == 0 else widths[s - 1], widths[s])
            scores = [v - price(k) for v, k in zip(ld[s], keys)]
            o = first_argmax(scores)
            score += scores[o] + layer_best[s, i][0]
            logp += ld[s][o] - max(ld[s]) + layer_best[s, i][1]
            downs.append(sp.down_ops[o])
        if best is None or score > best[0]:
            best = (score, logp, widths, downs, [layer_best[s, i][2:] for s, i in enumerate(combo)])
    return best[1:]


# ---------------------------------------------------------------------------- files and checks
def _int_list(v, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n) and v != []
            and all(isinstance(i, int) and not isinstance(i, bool) for i in v))


def check_genotype(g, source: str = "genotype") -> dict:
    """Validate a loaded genotype; returns it as plain JSON types. Each problem is a ConfigError naming ``source``."""
    redo = "derive it again (segdistill.search.genotype.derive) or fix it by hand"
    if not isinstance(g, Mapping) or g.get("format") != FORMAT:
        fmt = g.get("format") if isinstance(g, Mapping) else type(g).__name__
        raise ConfigError(f"{source} is not a segdistill genotype (format {fmt!r}, expected {FORMAT!r}); {redo}")
    if g.get("version") != VERSION:
        raise ConfigError(f"{source} has genotype version {g.get('version')!r}; this segdistill reads version "
                          f"{VERSION} (upgrade segdistill or {redo})")
    if g.get("space") == "lgcnet":
        from .space_lgcnet import check_lgcnet

        return check_lgcnet(g, source)
    if g.get("space") != "chain":
        raise ConfigError(f"{source} is a genotype of space {g.get('space')!r}; known: 'chain', 'lgcnet'")
    problems = []
    if not _int_list(g.get("stem_widths"), 2) or min(g["stem_widths"]) < 1:
        problems.append("stem_widths must be 2 positive integers")
    if not isinstance(g.get("head_channels"), int) or g["head_channels"] < 1:
        problems.append("head_channels must be a positive integer")
    if not _int_list(g.get("input"), 4) or min(g["input"]) < 1:
        problems.append("input must be [1, C, H, W]")
    stages = g.get("stages")
    if not isinstance(stages, list) or len(stages) != 3:
        problems.append("stages must be a list of 3 stages (strides 8, 16, 32)")
        stages = []
    for s, st in enumerate(stages, start=1):
        where = f"stage {s}"
        if not isinstance(st, Mapping):
            problems.append(f"{where} is not a mapping")
            continue
        if not isinstance(st.get("width"), int) or st["width"] < 1:
            problems.append(f"{where}: width must be a positive integer")
        if st.get("down") not in OPS:
            problems.append(f"{where}: unknown op {st.get('down')!r} (known: {', '.join(OPS)})")
        layers = st.get("layers")
        if not isinstance(layers, list):
            problems.append(f"{where}: layers must be a list")
            layers = []
        for j, layer in enumerate(layers, start=1):
            if not isinstance(layer, Mapping):
                problems.append(f"{where} layer {j} is not a mapping")
                continue
            if layer.get("op") not in OPS:
                problems.append(f"{where} layer {j}: unknown op {layer.get('op')!r} (known: {', '.join(OPS)})")
            if not _int_list(layer.get("inputs")) or not all(0 <= i < j for i in layer["inputs"]):
                problems.append(f"{where} layer {j}: inputs must be a non-empty list of earlier nodes 0..{j - 1}")
        out = st.get("output")
        if not _int_list(out) or not all(0 <= i <= len(layers) for i in out):
            problems.append(f"{where}: output must be a non-empty list of nodes 0..{len(layers)}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return json.loads(json.dumps(g))  # plain dicts/lists: equal after a checkpoint round trip


def save_genotype(genotype: Mapping, path) -> Path:
    """Check and write ``genotype`` as JSON (atomically)."""
    path = Path(path)
    write_json_atomic(check_genotype(genotype, str(path)), path)
    return path


def load_genotype(path) -> dict:
    """Read and check a genotype file; a missing file, bad JSON or a bad genotype is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"genotype file {path} does not exist; write one with segdistill.search.genotype."
                          "save_genotype (a search run saves genotype.json in its run folder)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"genotype file {path} is not valid JSON ({e})") from None
    return check_genotype(data, f"genotype file {path}")


def as_genotype(genotype) -> dict:
    """A genotype from a path (str / Path), a mapping, or None (:data:`DEFAULT_GENOTYPE`), checked."""
    if genotype is None:
        return check_genotype(DEFAULT_GENOTYPE, "the default genotype")
    if isinstance(genotype, Mapping):
        return check_genotype(genotype, "genotype mapping")
    if isinstance(genotype, (str, Path)):
        return load_genotype(genotype)
    raise ConfigError(f"genotype must be a file path or a mapping, not {type(genotype).__name__}")


# ---------------------------------------------------------------------------- the derived network as blocks
def genotype_space(genotype: Mapping, input_shape=None, num_classes: int = 11) -> ChainSpace:
    """The :class:`ChainSpace` whose key functions build ``genotype``'s blocks at ``input_shape`` (default: the
    genotype's ``input``)."""
    return ChainSpace(tuple(input_shape or genotype["input"]), num_classes, stem_widths=tuple(genotype["stem_widths"]),
                      head_channels=genotype["head_channels"])


def stage_plan(space: ChainSpace, s: int, stage: Mapping, cin: int) -> tuple[list[tuple[BlockKey, tuple]], int]:
    """Stage ``s``'s blocks as ``[(key, input indices)]`` (-1 = the stage input, i = the i-th block) and the index
    of the block giving the stage's output: the strided layer, then per layer the ``add`` blocks summing its inputs
    and its op, then the ``add`` blocks summing the output nodes."""
    c = stage["width"]
    h, w = space.hw(STAGE_STRIDES[s])
    blocks = [(op_key(stage["down"], cin, c, *space.hw(STAGE_STRIDES[s] // 2), stride=2), (-1,))]
    node = {0: 0}

    def merged(nodes: list[int]) -> int:
        cur = node[nodes[0]]
        for n in nodes[1:]:
            blocks.append((add_key(c, h, w), (cur, node[n])))
            cur = len(blocks) - 1
        return cur

    for j, layer in enumerate(stage["layers"], start=1):
        src = merged(layer["inputs"])
        blocks.append((op_key(layer["op"], c, c, h, w), (src,)))
        node[j] = len(blocks) - 1
    return blocks, merged(stage["output"])


def genotype_netspec(genotype, input_shape=(1, 3, 180, 240), num_classes: int = 11) -> NetSpec:
    """The derived network of ``genotype`` (path or mapping) as library blocks at ``input_shape``, for
    :meth:`LatencyPredictor.predict`: stem, stages, head, and the final resize of the logits to the input size."""
    g = as_genotype(genotype)
    if g["space"] == "lgcnet":
        from .space_lgcnet import genotype_netspec as lgcnet_netspec

        return lgcnet_netspec(g, input_shape, num_classes)
    space = genotype_space(g, input_shape, num_classes)
    nodes = [Node(str(k), (i - 1,)) for i, k in enumerate(space.stem_keys())]
    taps, cin = [], space.stem_widths[1]
    for s, stage in enumerate(g["stages"]):
        start, src = len(nodes), len(nodes) - 1
        blocks, out = stage_plan(space, s, stage, cin)
        nodes += [Node(str(k), tuple(src if i < 0 else start + i for i in ins)) for k, ins in blocks]
        taps.append(start + out)
        cin = stage["width"]
    head = space.head_keys(g["stages"][0]["width"], g["stages"][2]["width"])
    n = len(nodes)
    nodes += [Node(str(head["high"]), (taps[2],)), Node(str(head["up"]), (n,)), Node(str(head["low"]), (taps[0],)),
              Node(str(head["fuse"]), (n + 1, n + 2)), Node(str(head["refine"]), (n + 3,)),
              Node(str(head["classifier"]), (n + 4,)), Node(str(head["final"]), (n + 5,))]
    size = "x".join(map(str, space.input_shape[1:]))
    spec = NetSpec(f"searched@{size}", space.input_shape, nodes, "space", {"genotype": g})
    spec.check()
    return spec


# ---------------------------------------------------------------------------- random networks of a space
def random_genotype(supernet, generator: torch.Generator, price=None) -> dict:
    """The plain argmax of ``supernet`` under standard-normal architecture logits drawn from ``generator``: every
    argmax choice (width, op, predecessor) is uniform; with a ``price`` (see :func:`derive`), the priced argmax.
    The supernet's logits are overwritten."""
    with torch.no_grad():
        for p in supernet.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return derive(supernet, price=price)


def space_networks(space: str, n: int, input_shape=(1, 3, 180, 240), seed: int = 0, num_classes: int = 11,
                   predictor=None, price_span: float = 0.0, **options) -> list[NetSpec]:
    """``n`` random networks of search space ``space`` (``search.space``: chain or lgcnet) with its ``options``
    (``search.*`` keys such as ``base_widths``), as blocks: the networks a search of that space derives, for fitting
    a latency table's correction on them (``segdistill latency fit --space``). Deterministic per seed.

    Each network is the argmax of standard-normal architecture logits: every choice uniform, so the networks sit
    in the middle of the space's costs. A search that fills a budget derives with a price on latency, and its
    networks sit at the dear end (on the Intel Xeon's chain tables: raw block sums 12-22 ms against the plain
    draws' 2.5-9.5), where a correction fitted on the plain draws extrapolates. ``price_span`` > 0 (with a
    ``predictor`` of the table) derives network i with the priced rule at the price
    ``mu_i * block ms / largest network ms``, ``mu_i`` evenly from ``-price_span`` (dearest) to ``+price_span``
    (cheapest) nats, so that the networks span the space's costs (64: raw 2.5-19 ms on that table)."""
    from ..models import build_model
    from . import SPACES

    if space not in SPACES:
        raise ConfigError(f"unknown search space {space!r}; known: {', '.join(SPACES)}")
    if price_span and predictor is None:
        raise ConfigError("price_span needs the predictor of a latency table (the blocks' prices)")
    net = build_model(SPACES[space]["model"], num_classes, input=list(input_shape), **options)
    gen = torch.Generator().manual_seed(seed)
    size = "x".join(map(str, input_shape[1:]))
    score, largest = None, 1.0
    if price_span:
        from .space_chain import block_scorer

        _, score = block_scorer(predictor, net.keys())
        largest = float(net.largest_latency(predictor))
    out = []
    for i in range(n):
        mu = price_span * (2 * i / (n - 1) - 1) if price_span and n > 1 else 0.0
        price = (lambda key, mu=mu: mu * score(str(key)) / largest) if mu else None
        spec = genotype_netspec(random_genotype(net, gen, price), tuple(input_shape), num_classes)
        spec.name, spec.kind = f"{space}{i:03d}@{size}", "space"
        if price_span:
            spec.meta["price_nats"] = mu
        out.append(spec)
    return out
