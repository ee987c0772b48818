"""The LGCNet space (``search.space=lgcnet``; seed 001, ``../shared/docs/methods.md`` "Local-to-global communication
search"): cell-independent DARTS-style cells, the GCN-guided module between them, a dense-connected fusion cell.
The classes here default to LGCNet as published; the ``search.*`` config defaults switch the three parts off
(``share_cells=true``, ``ggm_gamma=0``, ``fusion=false``): none helped beyond the seed spread on CamVid, and the
fusion cell, whose derived head kept stride 32 only, cost about 3 mIoU (benchmarks/RESULTS.md, 2026-12-07).

Layout::

    image -> stem (fixed: conv3x3 s2 ("stem") -> dwsep3x3 s2 ("stage1"))                         stride 4
          -> cell 1 (stride 8, "stage2") -> cell 2 (stride 16, "stage3") -> cell 3 (stride 32, "stage4")
          -> fusion cell: one searched edge from each of stage1..stage4 to stride 8, summed
             -> 3x3 conv ("pre_logits") -> 1x1 classifier -> logits at stride 8
             (``fusion=False``: the chain space's fixed head on stage2 + stage4 instead)

**A cell** (``nodes`` = N intermediate nodes, default 3) reads two inputs at half its resolution: ``x1`` the previous
cell's output (the stem's stride-4 map for cell 1) and ``x0`` the one before it (the stride-2 stem map for cell 1),
brought to ``x1``'s size and width by a fixed 1x1 conv stride 2 (``pre``). Node i (0-based) sums one mixed op per
input over ``x0, x1, node 0 .. node i-1``: the edges from ``x0``/``x1`` are strided (stride 2, the cell's
reduction, as GAS's reduction cells), the others stride 1. Every edge chooses among :data:`CELL_OPS`, ``none``
included (the DARTS zero op: no edge). The cell's output is the **sum** of its nodes (library ``add`` blocks: the
width stays the cell's, no concat + 1x1). Edges in a cell, in order: node 0's (x0, x1), node 1's (x0, x1, node 0),
...: E = 2N + N(N-1)/2 (9 for N = 3), every cell the same E x O shape.

**Architecture weights**: ``alpha[k]`` (E x O) per cell (cell-independent), or one shared (``share_cells``: the
DARTS cell-sharing baseline; every cell here is a reduction cell, so one cell type), ``alpha_fusion`` (4 x O_f).
With ``ggm_gamma > 0`` the GGM (:mod:`.ggm`) turns them into ``alpha'_k = alpha_k + gamma GCN(alpha_{k-1}, alpha_k)``
for k = 2, 3; everything (mixing, expected latency, the structural term, derive) uses the updated ``alpha'``. The
GGM's weights are architecture parameters (stepped by the architecture Adam; :mod:`.ggm` says why).

**Derive** (DARTS' rule): per node the ``top_k`` (2) input edges of largest strength (the largest non-``none``
probability of the edge), each with its argmax non-``none`` op; the fusion cell keeps every level whose argmax is
not ``none`` (at least the strongest one), each with its argmax non-``none`` op. No GGM in a genotype. The cells
after the deepest kept fusion level are never read, so the derived network leaves them out (:func:`live_cells`):
the fusion cell also chooses how deep the network is.

**Latency** (:meth:`LgcSpace.expected_latency`): every candidate is a library block keyed at its real shape
(``none`` is the free ``zero`` block): ``sum_cells sum_edges sum_o p_o t(o)`` + for each fusion level
``sum_o p_o t(o)`` + ``(1 - p_none) t(resize to stride 8)`` for levels 16 and 32, + fixed parts (stem, ``pre``
convs, the ``add`` blocks of a top-2 derived cell: 2N - 1 per cell, head). At one-hot weights with two non-``none``
inputs per node it is exactly the derived network's sum of blocks. In between, ``p`` is :meth:`LgcSupernet.edge_probs`:
with ``search.expectation=derived`` (default) an edge counts with its probability of being one of its node's 2 kept
inputs, so a cell always pays for 2 inputs per node, as its derived network does; with ``supernet`` (the searches
before 2026-12-07) the ``none`` mass is the expected edge absence, which made ``none`` look like a saving the derived
network never has (those cells collapsed onto ``none``). Left out: the fusion's ``add`` blocks (kept levels - 1).
Keys fix the input shape (``input_shape``); the modules run at any size.

**Structural term** (:meth:`LgcSupernet.soft_graph`): under ``derived`` the soft graph is the derived network's graph
in expectation (kept edges, MBConv residual merges, identities as edges, the fusion's strides, resizes and chained
sums, cells that no kept fusion level reads left out); at one-hot weights it is the traced derived network's graph
(tested).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..latency.network import NetSpec, Node
from ..latency.predictor import LatencyPredictor, apply_correction
from ..latency.standalone import BlockKey
from ..models.heads import FCNHead
from ..models.layers import init_weights
from ..models.output import SegOutput
from .genotype import FORMAT, VERSION, first_argmax, weights_pick
from .ggm import GCNGuidedModule
from .graph import ABSENT, SoftGraph, channel_bucket, slot_depth
from .space_chain import OPS, ChainHead, ChainSpace, add_key, build_op, expectation_of, op_key

CELL_OPS: tuple[str, ...] = ("none", "skip", "conv_3x3", "dwsep_3x3", "dwsep_5x5", "mbconv_k3_e3", "mbconv_k3_e6",
                             "mbconv_k5_e3", "dilconv_3x3_d2", "zoomconv_3x3")
FUSION_OPS: tuple[str, ...] = ("none", "skip", "conv_3x3", "dwsep_3x3", "dwsep_5x5", "zoomconv_3x3")
LEVELS = ("stage1", "stage2", "stage3", "stage4")
LEVEL_STRIDES = (4, 8, 16, 32)
CELL_NAMES, CELL_STRIDES = LEVELS[1:], LEVEL_STRIDES[1:]


def cand_key(op: str, cin: int, cout: int, h: int, w: int, stride: int = 1) -> BlockKey:
    """The library key of candidate ``op`` (``none``: the free ``zero`` block) reading a (cin, h, w) map."""
    if op == "none":
        return BlockKey("zero", cin, cout, h, w, stride=stride)
    return op_key(op, cin, cout, h, w, stride)


def kept_probs(strength: torch.Tensor, k: int) -> torch.Tensor:
    """P(edge in the top ``k`` of its node) for every edge of one node, by ``strength`` (n,): the inclusion
    probabilities of ``k`` draws without replacement, each edge drawn in proportion to its strength (Plackett-Luce;
    k = 1: s_e / S; k = 2: s_e / S + sum_(f != e) s_f / S * s_e / (S - s_f)). They sum to min(k, n), each is <= 1,
    and where exactly k strengths are non-zero they are the top k's indicator (the derived network's edges)."""
    n = strength.numel()
    if k >= n:
        return torch.ones_like(strength)
    total = strength.sum().clamp_min(1e-12)
    first = strength / total
    if k == 1:
        return first
    if k == 2:
        rest = (total - strength).clamp_min(1e-12)  # S - s_f for each f
        second = (first[:, None] * strength[None, :] / rest[:, None]).sum(0) - first * strength / rest
        return first + second
    raise ConfigError(f"lgcnet: the kept-edge expectation knows top_k 1 and 2, not {k}")


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """The edges of a cell as (node, source): sources 0 = x0, 1 = x1, 2 + i = node i."""
    return [(i, j) for i in range(nodes) for j in range(i + 2)]


# ---------------------------------------------------------------------------- the space as keys
@dataclass
class LgcSpace:
    """The space as library keys at one input shape: what ``segdistill lut build --space lgcnet`` measures, the
    expected latency and the cheapest network. Defaults: stem 16/24, cells 48/96/160 channels (strides 8/16/32),
    3 nodes per cell, fusion/head 64 channels."""

    input_shape: tuple = (1, 3, 180, 240)
    num_classes: int = 11
    stem_widths: tuple = (16, 24)
    base_widths: tuple = (48, 96, 160)
    nodes: int = 3
    head_channels: int = 64
    fusion: bool = True
    cell_ops: tuple = CELL_OPS
    fusion_ops: tuple = FUSION_OPS
    name: str = field(default="lgcnet", init=False)

    def __post_init__(self):
        self.input_shape, self.base_widths = tuple(int(s) for s in self.input_shape), tuple(self.base_widths)
        self.stem_widths, self.cell_ops, self.fusion_ops = (tuple(self.stem_widths), tuple(self.cell_ops),
                                                            tuple(self.fusion_ops))
        problems = []
        if len(self.base_widths) != 3 or min(self.base_widths, default=0) < 1:
            problems.append("needs 3 positive cell widths (strides 8, 16, 32)")
        if self.nodes < 1:
            problems.append(f"nodes={self.nodes}: a cell needs at least 1 node")
        for what, ops in (("cell_ops", self.cell_ops), ("fusion_ops", self.fusion_ops)):
            unknown = sorted(set(ops) - set(OPS) - {"none"})
            if unknown or not set(ops) - {"none"}:
                problems.append(f"{what} must hold at least one op of {', '.join(OPS)} (unknown: {unknown})")
        if problems:
            raise ConfigError("lgcnet search space: " + "; ".join(problems))
        # stem, sizes and the fixed head come from the chain space (same checks on shape and widths)
        self.chain = ChainSpace(self.input_shape, self.num_classes, stem_widths=self.stem_widths,
                                head_channels=self.head_channels)

    def hw(self, stride: int) -> tuple[int, int]:
        return self.chain.hw(stride)

    def stem_keys(self) -> list[BlockKey]:
        return self.chain.stem_keys()

    def level_widths(self, widths=None) -> list[int]:
        """Channels of stage1 .. stage4."""
        return [self.stem_widths[1], *(widths or self.base_widths)]

    # ------------------------------------------------------------------ keys
    def cell_io(self, k: int, widths=None) -> tuple[int, int, int]:
        """(channels of x0 before ``pre``, of x1, of the cell) for cell ``k`` (0, 1, 2)."""
        lv = [self.stem_widths[0], *self.level_widths(widths)]
        return lv[k], lv[k + 1], lv[k + 2]

    def pre_key(self, k: int, widths=None) -> BlockKey:
        c_pp, c_prev, _ = self.cell_io(k, widths)
        return BlockKey("conv", c_pp, c_prev, *self.hw(CELL_STRIDES[k] // 4), 1, 2, act="relu")

    def edge_key(self, k: int, src: int, op: str, widths=None) -> BlockKey:
        _, c_prev, c = self.cell_io(k, widths)
        if src < 2:
            return cand_key(op, c_prev, c, *self.hw(CELL_STRIDES[k] // 2), stride=2)
        return cand_key(op, c, c, *self.hw(CELL_STRIDES[k]))

    def node_add_key(self, k: int, c: int | None = None) -> BlockKey:
        return add_key(c or self.base_widths[k], *self.hw(CELL_STRIDES[k]))

    def fusion_key(self, level: int, op: str, widths=None) -> BlockKey:
        cin, s = self.level_widths(widths)[level], LEVEL_STRIDES[level]
        return cand_key(op, cin, self.head_channels, *self.hw(s), stride=2 if s == 4 else 1)

    def fusion_resize_key(self, level: int) -> BlockKey:
        ch = self.head_channels
        return BlockKey("resize", ch, ch, *self.hw(LEVEL_STRIDES[level]), out_h=self.hw(8)[0], out_w=self.hw(8)[1])

    def head_keys(self, widths=None) -> dict[str, BlockKey]:
        """The blocks after the searched parts: the fusion cell's ``add``/``refine``/``classifier`` + ``final``, or
        (``fusion=False``) the chain space's head on stage2 + stage4."""
        widths = widths or self.base_widths
        chain = self.chain.head_keys(widths[0], widths[2])
        if not self.fusion:
            return chain
        return {n: chain[n] for n in ("refine", "classifier", "final")} | {"add": add_key(self.head_channels,
                                                                                           *self.hw(8))}

    def fixed_keys(self) -> list[str]:
        """Keys whose cost does not depend on any choice (module docstring)."""
        return [key for key, _ in self.fixed_parts()]

    def fixed_parts(self) -> list[tuple[str, int | None]]:
        """:meth:`fixed_keys` with the cell each block belongs to (its ``pre`` and ``add`` blocks; None: stem and
        head), for weighting a cell's blocks by the probability that it is computed."""
        parts = [(str(k), None) for k in self.stem_keys()]
        for k in range(3):
            parts += [(str(key), k) for key in [self.pre_key(k)] + [self.node_add_key(k)] * (2 * self.nodes - 1)]
        head = self.head_keys()
        return parts + [(str(head[n]), None) for n in head if n != "add"]

    def groups(self) -> list[list[str]]:
        """Every choice's candidate keys: per cell per edge (``cell_ops``), per fusion level (``fusion_ops``) and
        the presence of its resize (levels 16, 32: ``[zero, resize]``)."""
        out = [[str(self.edge_key(k, src, op)) for op in self.cell_ops]
               for k in range(3) for _, src in cell_edges(self.nodes)]
        if self.fusion:
            out += [[str(self.fusion_key(lv, op)) for op in self.fusion_ops] for lv in range(4)]
            for lv in (2, 3):
                r = self.fusion_resize_key(lv)
                out.append([str(cand_key("none", r.cin, r.cout, r.h, r.w)), str(r)])
        return out

    def keys(self, input_shape=None) -> list[str]:
        """Every key the space can use (each once), at ``input_shape`` (default: the space's)."""
        if input_shape is not None and tuple(input_shape) != self.input_shape:
            return dataclasses.replace(self, input_shape=tuple(input_shape)).keys()
        extra = [str(self.head_keys()["add"])] if self.fusion else []
        return list(dict.fromkeys(self.fixed_keys() + extra + [k for g in self.groups() for k in g]))

    # ------------------------------------------------------------------ latency
    def expected_latency(self, predictor: LatencyPredictor, cell_logp, fusion_logp=None,
                         correction: dict | None = ..., cell_live=None) -> torch.Tensor:
        """Expected latency (ms, differentiable) under log-probabilities ``cell_logp[k]`` (E x O) and
        ``fusion_logp`` (4 x O_f; needed with ``fusion``); the table's correction applied by the predictor.
        ``cell_live[k]`` (default 1): the probability that cell k is computed, which weights its fixed blocks
        (``pre`` and ``add``s; its edges' share is in ``cell_logp``)."""
        joint = [row for lp in cell_logp for row in lp]
        if self.fusion:
            joint += list(fusion_logp)
            none = self.fusion_ops.index("none") if "none" in self.fusion_ops else None
            for lv in (2, 3):
                p_none = fusion_logp[lv][none].exp() if none is not None else fusion_logp[lv].sum() * 0
                joint.append(torch.log(torch.stack([p_none, 1 - p_none]).clamp_min(1e-12)))
        parts = self.fixed_parts()
        weights = None if cell_live is None else [1.0 if k is None else cell_live[k] for _, k in parts]
        return predictor.expected(self.groups(), joint, fixed=[key for key, _ in parts], correction=correction,
                                  fixed_weights=weights)

    def smallest(self, predictor: LatencyPredictor, correction: dict | None = ...) -> tuple[float, dict]:
        """The predicted latency (ms) of a cheap derived network and its genotype: per node the two cheapest input
        edges (by table latency, each with its cheapest op), the single fusion edge that is cheapest together with
        the cells it needs (:func:`live_cells`). Exact as the minimum for raw sums; under a correction a close lower
        estimate of the space's fastest network."""
        _, cells = self._extreme_cells(predictor, dear=False)
        if not self.fusion:
            g = make_genotype(self, cells, [])
            return self._predict(g, predictor, correction), g
        fops = [o for o in self.fusion_ops if o != "none"]  # one level; the cells after it are not computed
        options = [make_genotype(self, cells, [{"level": LEVELS[lv], "op": o}]) for lv in range(4) for o in fops]
        return min(((self._predict(g, predictor, correction), g) for g in options), key=lambda x: x[0])

    def largest(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        """The predicted latency (ms) of a dear derived network: per node the two dearest input edges (by table
        latency, each with its dearest op), every fusion level with its dearest op. Exact as the maximum for raw
        sums; under a correction a close estimate of the space's slowest network (as :meth:`smallest`)."""
        t, cells = self._extreme_cells(predictor, dear=True)
        fusion = []
        if self.fusion:
            fops = [o for o in self.fusion_ops if o != "none"]
            fusion = [{"level": LEVELS[lv], "op": max(fops, key=lambda o: t(self.fusion_key(lv, o)))} for lv in range(4)]
        return self._predict(make_genotype(self, cells, fusion), predictor, correction)

    def _extreme_cells(self, predictor: LatencyPredictor, dear: bool):
        """``(t, cells)``: the table's latency lookup (every key made present) and the cells of :meth:`smallest`
        (``dear`` false: per node the two cheapest input edges, each with its cheapest op) or :meth:`largest`
        (the two dearest, each with its dearest op)."""
        predictor.table.ensure(self.keys(), measure=predictor.measure, progress=predictor.progress)
        t = lambda key: predictor.table.latency(str(key))  # noqa: E731
        pick = max if dear else min
        ops = [o for o in self.cell_ops if o != "none"]
        cells = []
        for k in range(3):
            nodes = []
            for i in range(self.nodes):
                ranked = sorted((pick((t(self.edge_key(k, j, o)), o) for o in ops) + (j,)) for j in range(i + 2))
                chosen = sorted(ranked[-2:] if dear else ranked[:2], key=lambda b: b[2])
                nodes.append({"inputs": [b[2] for b in chosen], "ops": [b[1] for b in chosen]})
            cells.append({"nodes": nodes})
        return t, cells

    def _predict(self, genotype: dict, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        """Predicted latency (ms) of ``genotype`` under the table's correction (or ``correction``)."""
        spec = genotype_netspec(genotype, self.input_shape, self.num_classes)
        corr = predictor.table.correction if correction is ... else correction
        return float(apply_correction(corr, predictor.features([n.key for n in spec.nodes])))


# ---------------------------------------------------------------------------- genotypes
def make_genotype(space: LgcSpace, cells: list, fusion: list, top_k: int = 2) -> dict:
    return {"format": FORMAT, "version": VERSION, "space": "lgcnet", "input": list(space.input_shape),
            "stem_widths": list(space.stem_widths), "widths": list(space.base_widths), "head_channels":
            space.head_channels, "fusion": bool(space.fusion), "top_k": top_k, "cells": cells,
            "fusion_edges": fusion}


def live_cells(genotype: Mapping) -> int:
    """How many cells (from the first) the derived network computes: the fusion cell reads the levels of its kept
    edges, and cell k (level k + 1) reads the cells before it, so the cells after the deepest kept level are never
    read and are left out (their blocks, parameters and latency); without fusion, the chain head reads stage4: 3."""
    if not genotype["fusion"]:
        return 3
    return max(LEVELS.index(e["level"]) for e in genotype["fusion_edges"])


def _ints(v, n: int | None = None, lo: int = 0) -> bool:
    return (isinstance(v, list) and v != [] and (n is None or len(v) == n)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= lo for i in v))


def check_lgcnet(g: Mapping, source: str) -> dict:
    """Validate an lgcnet genotype (format and version already checked); each problem names ``source``."""
    problems = []
    if not _ints(g.get("stem_widths"), 2, 1) or not _ints(g.get("widths"), 3, 1):
        problems.append("stem_widths must be 2 and widths 3 positive integers")
    if not isinstance(g.get("head_channels"), int) or g["head_channels"] < 1:
        problems.append("head_channels must be a positive integer")
    if not _ints(g.get("input"), 4, 1):
        problems.append("input must be [1, C, H, W]")
    if not isinstance(g.get("fusion"), bool):
        problems.append("fusion must be true or false")
    ops, fops = [o for o in CELL_OPS if o != "none"], [o for o in FUSION_OPS if o != "none"]
    cells = g.get("cells")
    if not isinstance(cells, list) or len(cells) != 3:
        problems.append("cells must be a list of 3 cells (strides 8, 16, 32)")
        cells = []
    for c, cell in enumerate(cells, start=1):
        nodes = cell.get("nodes") if isinstance(cell, Mapping) else None
        if not isinstance(nodes, list) or not nodes:
            problems.append(f"cell {c}: nodes must be a non-empty list")
            continue
        for i, node in enumerate(nodes):
            where = f"cell {c} node {i}"
            if not isinstance(node, Mapping):
                problems.append(f"{where} is not a mapping")
                continue
            ins, nops = node.get("inputs"), node.get("ops")
            if not _ints(ins) or max(ins) > i + 1 or len(set(ins)) != len(ins):
                problems.append(f"{where}: inputs must be distinct sources 0..{i + 1} (0 = x0, 1 = x1, 2+j = node j)")
            if not isinstance(nops, list) or not isinstance(ins, list) or len(nops) != len(ins) \
                    or any(o not in ops for o in nops):
                problems.append(f"{where}: ops must be one per input, each one of {', '.join(ops)}")
    edges = g.get("fusion_edges")
    if not isinstance(edges, list) or (g.get("fusion") is True and not edges) or (g.get("fusion") is False and edges):
        problems.append("fusion_edges must be a non-empty list with fusion true, empty with fusion false")
        edges = []
    for e in edges:
        if not isinstance(e, Mapping) or e.get("level") not in LEVELS or e.get("op") not in fops:
            problems.append(f"fusion edge {e!r}: needs level in {LEVELS} and op in {', '.join(fops)}")
    if len({e.get("level") for e in edges if isinstance(e, Mapping)}) != len(edges):
        problems.append("fusion_edges: one edge per level at most")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return json.loads(json.dumps(g))


def genotype_space(g: Mapping, input_shape=None, num_classes: int = 11) -> LgcSpace:
    """The :class:`LgcSpace` whose key functions build genotype ``g``'s blocks at ``input_shape``."""
    nodes = max(len(c["nodes"]) for c in g["cells"])
    return LgcSpace(tuple(input_shape or g["input"]), num_classes, stem_widths=tuple(g["stem_widths"]),
                    base_widths=tuple(g["widths"]), nodes=nodes, head_channels=g["head_channels"],
                    fusion=g["fusion"])


def cell_plan(space: LgcSpace, k: int, cell: Mapping, widths) -> tuple[list[tuple[BlockKey, tuple]], int]:
    """Cell ``k``'s blocks as ``[(key, input indices)]`` (-2 = x0 before ``pre``, -1 = x1, i = the i-th block) and
    the index of its output block: ``pre``, per node its edge ops then ``add`` blocks, then the nodes' sum."""
    blocks = [(space.pre_key(k, widths), (-2,))]
    src = {0: 0, 1: -1}
    c = widths[k]

    def summed(items: list[int]) -> int:
        cur = items[0]
        for n in items[1:]:
            blocks.append((space.node_add_key(k, c), (cur, n)))
            cur = len(blocks) - 1
        return cur

    for i, node in enumerate(cell["nodes"]):
        outs = []
        for j, op in zip(node["inputs"], node["ops"]):
            blocks.append((space.edge_key(k, min(j, 2), op, widths), (src[j],)))
            outs.append(len(blocks) - 1)
        src[2 + i] = summed(outs)
    return blocks, summed([src[2 + i] for i in range(len(cell["nodes"]))])


def genotype_netspec(genotype: Mapping, input_shape=(1, 3, 180, 240), num_classes: int = 11) -> NetSpec:
    """The derived network of an lgcnet genotype as library blocks at ``input_shape`` (latency predictor); cells
    after :func:`live_cells` are not in it."""
    g = genotype
    space = genotype_space(g, input_shape, num_classes)
    nodes = [Node(str(k), (i - 1,)) for i, k in enumerate(space.stem_keys())]
    taps = [0, 1]  # stem, stage1, then the cells' outputs
    for k, cell in enumerate(g["cells"][:live_cells(g)]):
        start = len(nodes)
        blocks, out = cell_plan(space, k, cell, g["widths"])
        ref = {-2: taps[k], -1: taps[k + 1]}
        nodes += [Node(str(key), tuple(ref.get(i, start + i) for i in ins)) for key, ins in blocks]
        taps.append(start + out)
    head = space.head_keys(g["widths"])
    if g["fusion"]:
        outs = []
        for e in g["fusion_edges"]:
            lv = LEVELS.index(e["level"])
            nodes.append(Node(str(space.fusion_key(lv, e["op"], g["widths"])), (taps[lv + 1],)))
            if lv > 1:
                nodes.append(Node(str(space.fusion_resize_key(lv)), (len(nodes) - 1,)))
            outs.append(len(nodes) - 1)
        cur = outs[0]
        for o in outs[1:]:
            nodes.append(Node(str(head["add"]), (cur, o)))
            cur = len(nodes) - 1
        names, first = ("refine", "classifier", "final"), (cur,)
    else:
        n = len(nodes)
        nodes += [Node(str(head["high"]), (taps[4],)), Node(str(head["up"]), (n,)),
                  Node(str(head["low"]), (taps[2],)), Node(str(head["fuse"]), (n + 1, n + 2))]
        names, first = ("refine", "classifier", "final"), (n + 3,)
    for name in names:
        nodes.append(Node(str(head[name]), first))
        first = (len(nodes) - 1,)
    size = "x".join(map(str, space.input_shape[1:]))
    spec = NetSpec(f"searched-lgcnet@{size}", space.input_shape, nodes, "space", {"genotype": dict(g)})
    spec.check()
    return spec


# ---------------------------------------------------------------------------- modules
class FusionHead(nn.Module):
    """The fusion cell's fixed end: sum of the edge outputs at stride 8, 3x3 conv (``pre_logits``), classifier."""

    def __init__(self, keys: dict[str, BlockKey]):
        super().__init__()
        self.refine, self.classifier = build_op(keys["refine"]), build_op(keys["classifier"])

    def forward(self, parts: list[torch.Tensor]):
        pre = self.refine(sum(parts))
        return self.classifier(pre), pre


def to_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def layout(space: LgcSpace, widths) -> tuple[dict, dict]:
    """``feature_channels`` / ``feature_strides`` of a network of the space with cell widths ``widths``."""
    names = ("stem", "stage1") + CELL_NAMES + ("pre_logits",)
    chans = [space.stem_widths[0], space.stem_widths[1], *widths, space.head_channels]
    return dict(zip(names, chans)), dict(zip(names, (2, 4) + CELL_STRIDES + (8,)))


class LgcBase(nn.Module):
    """What the supernet and a derived network share: stem, feature layout, the head's forward."""

    def _init_common(self, space: LgcSpace, widths):
        self.space, self.num_classes = space, space.num_classes
        self.stem = nn.ModuleList(build_op(k) for k in space.stem_keys())
        self.head = (FusionHead if space.fusion else ChainHead)(space.head_keys(widths))
        self.feature_channels, self.feature_strides = layout(space, widths)
        self.logits_stride, self.output_stride = 8, 32

    def _stem(self, x) -> dict:
        feats = {"stem": self.stem[0](x)}
        feats["stage1"] = self.stem[1](feats["stem"])
        return feats

    def _head(self, feats: dict, fusion_parts) -> SegOutput:
        if self.space.fusion:
            ref = feats.get("stage2", fusion_parts[0])  # no stage2: the only part is stage1's, at stride 8
            logits, feats["pre_logits"] = self.head([to_size(p, ref) for p in fusion_parts])
        else:
            logits, feats["pre_logits"] = self.head(feats["stage2"], feats["stage4"])
        return logits


class MixedEdge(nn.Module):
    """``sum_o w_o op_o(x)`` over library blocks; ``none`` contributes nothing (its weight still takes its share)."""

    def __init__(self, ops: tuple, keys: list[BlockKey]):
        super().__init__()
        self.live = [i for i, o in enumerate(ops) if o != "none"]
        self.ops = nn.ModuleList(build_op(keys[i]) for i in self.live)

    def forward(self, x, weights):
        return sum(weights[i] * op(x) for i, op in zip(self.live, self.ops))


class SupernetCell(nn.Module):
    def __init__(self, space: LgcSpace, k: int):
        super().__init__()
        self.edges_io = cell_edges(space.nodes)
        self.pre = build_op(space.pre_key(k))
        self.edges = nn.ModuleList(MixedEdge(space.cell_ops, [space.edge_key(k, src, o) for o in space.cell_ops])
                                   for _, src in self.edges_io)
        self.nodes = space.nodes

    def forward(self, x0, x1, weights, aux_skip: float = 0.0):
        """``aux_skip``: DARTS-' auxiliary skip weight, ``aux_skip * input`` added beside each edge between
        intermediate nodes (the cell inputs' edges change stride and width, so they have none)."""
        states = [self.pre(x0), x1]
        for i in range(self.nodes):
            states.append(sum(edge(states[src], weights[e]) + (aux_skip * states[src] if aux_skip and src >= 2 else 0)
                              for e, ((node, src), edge) in enumerate(zip(self.edges_io, self.edges)) if node == i))
        return sum(states[2:])


class LgcSupernet(LgcBase):
    """The supernet of an :class:`LgcSpace`. ``forward(x)`` returns ``SegOutput(logits at stride 8, features
    {stem, stage1, stage2, stage3, stage4, pre_logits})``.

    Architecture parameters (:meth:`arch_parameters`): ``alpha.<k>`` (E x O per cell; one with ``share_cells``),
    ``alpha_fusion`` (4 x O_f, with fusion) and the GGM links' weights ``ggm.<k>.*`` (``ggm_gamma > 0``).
    Sampling: ``gumbel`` (bool), ``tau``, ``hard``; :meth:`cell_alphas` gives the GGM-updated logits."""

    def __init__(self, space: LgcSpace, share_cells: bool = False, ggm_gamma: float = 0.5, ggm_hidden: int = 16):
        super().__init__()
        if share_cells and ggm_gamma:
            raise ConfigError(f"lgcnet: share_cells=true gives all cells one alpha, so the GCN-guided module "
                              f"(ggm_gamma={ggm_gamma:g}) has no neighbouring cell to pass between; set "
                              "search.ggm_gamma=0 with search.share_cells=true")
        self._init_common(space, space.base_widths)
        self.cells = nn.ModuleList(SupernetCell(space, k) for k in range(3))
        self.fusion_edges = nn.ModuleList(
            MixedEdge(space.fusion_ops, [space.fusion_key(lv, o) for o in space.fusion_ops]) for lv in range(4)
        ) if space.fusion else None
        self.apply(init_weights)
        n_edges, n_ops = len(cell_edges(space.nodes)), len(space.cell_ops)
        self.share_cells, self.ggm_gamma = bool(share_cells), float(ggm_gamma)
        self.alpha = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
                                      for _ in range(1 if share_cells else 3))
        self.alpha_fusion = nn.Parameter(1e-3 * torch.randn(4, len(space.fusion_ops))) if space.fusion else None
        self.ggm = nn.ModuleList(GCNGuidedModule(n_ops, ggm_hidden, ggm_gamma) for _ in range(2)) if ggm_gamma else None
        self.gumbel, self.tau, self.hard = False, 1.0, False
        self.aux_skip = 0.0  # DARTS-' auxiliary skip weight (search.aux_skip; the search hook decays it to 0)
        self.expectation = "derived"  # EXPECTATIONS: see edge_probs
        self.train()

    # ------------------------------------------------------------------ parameters
    def named_arch_parameters(self):
        for i, p in enumerate(self.alpha):
            yield f"alpha.{i}", p
        if self.alpha_fusion is not None:
            yield "alpha_fusion", self.alpha_fusion
        if self.ggm is not None:
            for n, p in self.ggm.named_parameters():
                yield f"ggm.{n}", p

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture logits and the GGM's weights (the search's second optimizer)."""
        return [p for _, p in self.named_arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def cell_alphas(self) -> list[torch.Tensor]:
        """Per cell the logits the search uses: ``alpha'_k = alpha_k + gamma GCN(alpha_{k-1}, alpha_k)``."""
        if self.share_cells:
            return [self.alpha[0]] * 3
        a = list(self.alpha)
        if self.ggm is None:
            return a
        return [a[0]] + [link(a[k - 1], a[k]) for k, link in enumerate(self.ggm, start=1)]

    def fold_ggm(self) -> None:
        """Write the GGM-updated logits ``alpha'`` into ``alpha`` and drop the GGM: the forward, description and
        derivation stay exactly as they were, with logits that are plain parameters (``--ops perturb`` masks and
        reorders them after the GGM this way). A no-op without a GGM."""
        if self.ggm is None:
            return
        with torch.no_grad():
            updated = [a.detach().clone() for a in self.cell_alphas()]
            for p, a in zip(self.alpha, updated):
                p.copy_(a)
        self.ggm, self.ggm_gamma = None, 0.0

    def _weights(self, logits):
        if self.gumbel and self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=self.hard, dim=-1)
        return torch.softmax(logits, dim=-1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> SegOutput:
        feats = self._stem(x)
        prev = [feats["stem"], feats["stage1"]]
        for k, (cell, a) in enumerate(zip(self.cells, self.cell_alphas())):
            feats[CELL_NAMES[k]] = cell(prev[-2], prev[-1], self._weights(a), self.aux_skip)
            prev.append(feats[CELL_NAMES[k]])
        parts = None
        if self.fusion_edges is not None:
            w = self._weights(self.alpha_fusion)
            parts = [edge(feats[name], w[lv]) for lv, (name, edge) in enumerate(zip(LEVELS, self.fusion_edges))]
        return SegOutput(logits=self._head(feats, parts), features=feats)

    # ------------------------------------------------------------------ latency, description, derive
    def keys(self, input_shape=None) -> list[str]:
        return self.space.keys(input_shape)

    def edge_probs(self, expectation: str | None = None) -> list[torch.Tensor]:
        """Per cell (E x O) the probability that each edge of the network holds each op (``none``: no edge), under
        ``expectation`` (default ``self.expectation``):

        * ``"supernet"``: softmax(alpha'): all E edges of a cell, each absent with its ``none`` probability. A
          derived cell has 2 edges per node, never a ``none``, so a latency or structural term under it is paid
          for edges the network will not have, and moving mass to ``none`` looks like a saving (the searches before
          2026-12-07, where the cells collapsed onto ``none``).
        * ``"derived"``: the network ``derive`` builds (DARTS' rule: per node the 2 inputs of largest strength,
          strength = the largest non-``none`` probability, each with its argmax non-``none`` op). Edge e is kept with
          ``K_e`` = :func:`kept_probs` (strengths of its node's edges, k = 2) and then holds op o with
          softmax(alpha' without ``none``)_o; ``none`` gets 1 - K_e. Per node the kept mass is exactly 2, so only
          *which* edges and ops a cell has can change, not how many. At one-hot weights with 2 non-``none`` inputs
          per node both are the derived network."""
        expectation = expectation_of(self, expectation)
        alphas, live = self.cell_alphas(), self.cell_live(expectation)
        if expectation == "supernet":
            return [torch.softmax(a, -1) for a in alphas]
        ops = self.space.cell_ops
        if "none" not in ops:
            raise ConfigError("lgcnet: search.expectation=derived needs the none op among the cell ops (it marks "
                              "the edges a derived cell leaves out); add it or use search.expectation=supernet")
        none = ops.index("none")
        real = [i for i in range(len(ops)) if i != none]
        edges = cell_edges(self.space.nodes)
        out = []
        for a in alphas:
            p = torch.softmax(a, -1)
            strength = p[:, real].max(-1).values
            kept = torch.zeros_like(strength)
            for i in range(self.space.nodes):
                rows = [e for e, (node, _) in enumerate(edges) if node == i]
                kept[rows] = kept_probs(strength[rows], 2)
            kept = kept * live[len(out)]  # a cell no kept fusion level reads is not computed
            q = torch.zeros_like(p)
            q[:, real] = kept[:, None] * torch.softmax(a[:, real], -1)
            q[:, none] = 1 - kept
            out.append(q)
        return out

    def cell_live(self, expectation: str | None = None) -> list[torch.Tensor]:
        """Per cell the probability that the derived network computes it (:func:`live_cells`): cell k when some
        fusion level after it is kept, 1 - prod_(lv > k) p_none(lv). Ones without fusion or under ``supernet``."""
        expectation = expectation_of(self, expectation)
        one = torch.ones((), device=self.alpha[0].device)
        if expectation == "supernet" or self.alpha_fusion is None or "none" not in self.space.fusion_ops:
            return [one] * 3
        p_none = torch.softmax(self.alpha_fusion, -1)[:, self.space.fusion_ops.index("none")]
        return [1 - p_none[k + 1:].prod() for k in range(3)]

    def expected_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> torch.Tensor:
        """Differentiable expected latency (ms) under :meth:`edge_probs` (cells) and the softmax of the fusion
        logits."""
        fusion = torch.log_softmax(self.alpha_fusion, -1) if self.alpha_fusion is not None else None
        if self.expectation == "supernet":
            cells = [torch.log_softmax(a, -1) for a in self.cell_alphas()]
            return self.space.expected_latency(predictor, cells, fusion, correction)
        cells = [torch.log(q.clamp_min(1e-12)) for q in self.edge_probs()]
        return self.space.expected_latency(predictor, cells, fusion, correction, cell_live=self.cell_live())

    def smallest_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        return self.space.smallest(predictor, correction)[0]

    def largest_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        return self.space.largest(predictor, correction)

    def describe(self) -> dict:
        """Softmax probabilities (differentiable): ``cells`` (per cell ``{"name", "stride", "edges": [(node,
        source)], "ops", "probs": E x O}``) and ``fusion`` (``{"levels", "ops", "probs": 4 x O_f}`` or None)."""
        sp = self.space
        cells = [{"name": CELL_NAMES[k], "stride": CELL_STRIDES[k], "edges": cell_edges(sp.nodes),
                  "ops": list(sp.cell_ops), "probs": torch.softmax(a, -1)} for k, a in enumerate(self.cell_alphas())]
        fusion = None if self.alpha_fusion is None else {
            "levels": list(LEVELS), "ops": list(sp.fusion_ops), "probs": torch.softmax(self.alpha_fusion, -1)}
        return {"cells": cells, "fusion": fusion}

    def soft_graph(self, expectation: str | None = None) -> SoftGraph:
        """The supernet as a :class:`SoftGraph` for the structural term: stem; per cell ``pre`` (conv-k1), one
        searchable node per edge (``none`` = absent, skip = absent or a 1x1 projection where it strides or
        widens), one ``merge`` per node and the output merge; then the fusion edges (+ resize), merge, refine,
        classifier (or the chain head's nodes). Depths are slots within the stride group. Edge nodes take their
        probabilities from :meth:`edge_probs` (``expectation``: default ``self.expectation``)."""
        sp, desc = self.space, self.describe()
        expectation = expectation_of(self, expectation)
        for cell, q in zip(desc["cells"], self.edge_probs(expectation)):
            cell["probs"] = q
        sg = SoftGraph()
        ids = {"stem": sg.add_fixed("conv-k3", stride=2, channels=sp.stem_widths[0], depth=0.25, name="stem")}
        ids["stage1"] = sg.add_fixed("dw-conv", stride=4, channels=sp.stem_widths[1], depth=0.75, name="stage1")
        sg.add_edge(ids["stem"], ids["stage1"])
        prev = [ids["stem"], ids["stage1"]]
        E, N = len(cell_edges(sp.nodes)), sp.nodes
        derived = expectation == "derived"
        slots = 1 + E + 2 * N + 3 + (E - 2 * N if derived else 0)  # derived: a residual merge per stride-1 edge
        mbconv = [i for i, o in enumerate(sp.cell_ops) if OPS.get(o, {}).get("kind") == "mbconv"]
        live = self.cell_live(expectation)  # derived with fusion: cell k is computed when a level after it is kept

        def fixed_in(k: int, label: str, **kw) -> int:  # a cell's fixed node, present when the cell is live
            return sg.add_node([label, ABSENT], torch.stack([live[k], 1 - live[k]]), strides=kw.pop("stride"),
                               buckets=channel_bucket(kw.pop("channels")), **kw)

        for k, cell in enumerate(desc["cells"]):
            s, c, name = cell["stride"], sp.base_widths[k], cell["name"]  # (edge probs include the liveness)
            pre = fixed_in(k, "conv-k1", stride=s // 2, channels=sp.cell_io(k)[1], depth=slot_depth(0, slots),
                           stage=_stage(s), name=f"{name}.pre")
            sg.add_edge(prev[-2], pre)
            states, slot = [pre, prev[-1]], 1
            for i in range(N):
                edge_ids = []
                for e, (node, src) in enumerate(cell["edges"]):
                    if node != i:
                        continue
                    q = cell["probs"][e]
                    ops = ["conv_1x1" if o == "skip" and src < 2 else o for o in cell["ops"]]  # strided: projects
                    v = sg.add_layer(ops, q, stride=s, channels=c, depth=slot_depth(slot, slots),
                                     stage=_stage(s), name=f"{name}.edge{e}")
                    slot += 1
                    sg.add_edge(states[src], v)
                    outs = {v: 1.0}
                    if derived and src >= 2:  # stride 1, same width: an MBConv adds its input, a skip is an edge
                        mb = q[mbconv].sum()  # (includes the cell's liveness)
                        mm = sg.add_node(["merge", ABSENT], torch.stack([mb, 1 - mb]), strides=s,
                                         buckets=channel_bucket(c), depth=slot_depth(slot, slots), stage=_stage(s),
                                         name=f"{name}.edge{e}.merge")
                        slot += 1
                        sg.add_edge(v, mm)
                        sg.add_edge(states[src], mm)
                        present = (1 - q[sp.cell_ops.index("none")] - q[sp.cell_ops.index("skip")]).clamp_min(1e-12)
                        outs = {v: 1 - mb / present, mm: 1.0, states[src]: q[sp.cell_ops.index("skip")]}
                    edge_ids.append(outs)
                m = fixed_in(k, "merge", stride=s, channels=c, depth=slot_depth(slot, slots), stage=_stage(s),
                             name=f"{name}.node{i}")
                slot += 1
                for outs in edge_ids:
                    for u, p in outs.items():
                        sg.add_edge(u, m, p)
                states.append(m)
            out = fixed_in(k, "merge", stride=s, channels=c, depth=slot_depth(slot, slots), stage=_stage(s),
                           name=f"{name}.out")
            for m in states[2:]:
                sg.add_edge(m, out)
            prev.append(out)
        ch, K = sp.head_channels, sp.num_classes
        fixed = lambda label, c, d, n: sg.add_fixed(label, stride=8, channels=c, depth=d, stage=1, name=n)  # noqa
        if desc["fusion"] is not None and derived:
            last = self._derived_fusion(sg, desc["fusion"], prev[1:], fixed)
        elif desc["fusion"] is not None:
            f = desc["fusion"]
            merge = fixed("merge", ch, 0.94, "fusion.merge")
            for lv, name in enumerate(f["levels"]):
                v = sg.add_layer(["conv_1x1" if o == "skip" else o for o in f["ops"]], f["probs"][lv], stride=8,
                                 channels=ch, depth=0.9, stage=1, name=f"fusion.{name}")
                sg.add_edge(prev[lv + 1], v)
                sg.add_edge(v, merge)
            last = merge
        else:
            high = sg.add_fixed("conv-k1", stride=32, channels=ch, depth=0.99, name="head.high")
            up, low = fixed("resize", ch, 0.92, "head.up"), fixed("conv-k1", ch, 0.93, "head.low")
            last = fixed("merge", ch, 0.94, "head.fuse")
            for u, v in ((prev[4], high), (high, up), (prev[2], low), (up, last), (low, last)):
                sg.add_edge(u, v)
        refine = fixed("conv-k3", ch, 0.96, "head.refine")
        cls = fixed("conv-k1", K, 0.98, "head.classifier")
        for u, p in (last.items() if isinstance(last, dict) else ((last, 1.0),)):
            sg.add_edge(u, refine, p)
        sg.add_edge(refine, cls)
        return sg

    def _derived_fusion(self, sg: SoftGraph, f: dict, levels: list[int], fixed) -> dict:
        """The derived fusion cell's graph (``expectation="derived"``): level lv is kept with k_lv = 1 - p_none
        (the derived rule keeps every level whose argmax is not ``none``); its op runs at the level's stride (a skip
        is a 1x1 projection where it strides or widens, else an edge), levels at strides 16 and 32 are resized,
        and the kept parts are summed left to right: merge M_lv (lv >= 1) is there when lv and an earlier level are
        kept, and reads part lv and the latest merge before it (or the first kept part). Returns ``{node:
        probability that it feeds the refine conv, given it is present}``."""
        sp, ch, L = self.space, self.space.head_channels, len(f["levels"])
        none = f["ops"].index("none") if "none" in f["ops"] else None
        keep = [1 - f["probs"][lv][none] if none is not None else f["probs"][lv].sum() for lv in range(L)]

        def absent_between(lo: int, hi: int, but: int | None = None):  # P(no level in (lo, hi) kept), lo < hi
            out = torch.ones((), dtype=keep[0].dtype)
            for j in range(lo + 1, hi):
                out = out * (1 - keep[j]) if j != but else out
            return out

        parts = []
        for lv, name in enumerate(f["levels"]):
            stride, cin = LEVEL_STRIDES[lv], sp.level_widths()[lv]
            projects = stride == 4 or cin != ch
            ops = ["conv_1x1" if o == "skip" and projects else o for o in f["ops"]]
            v = sg.add_layer(ops, f["probs"][lv], stride=stride * (2 if stride == 4 else 1), channels=ch,
                             depth=0.9, stage=_stage(max(stride, 8)), name=f"fusion.{name}")
            sg.add_edge(levels[lv], v)
            ident = f["probs"][lv][f["ops"].index("skip")] if "skip" in f["ops"] and not projects else None
            part = {v: torch.ones(())} if ident is None else {v: torch.ones(()), levels[lv]: ident}
            if stride > 8:
                r = sg.add_node(["resize", ABSENT], torch.stack([keep[lv], 1 - keep[lv]]), strides=8,
                                buckets=channel_bucket(ch), depth=0.92, stage=1, name=f"fusion.{name}.resize")
                for u, p in part.items():
                    sg.add_edge(u, r, p / keep[lv].clamp_min(1e-12) if u == levels[lv] else p)
                part = {r: torch.ones(())}
            parts.append(part)
        merges = {}
        for lv in range(1, L):
            earlier = 1 - absent_between(-1, lv)
            merges[lv] = sg.add_node(["merge", ABSENT], torch.stack([keep[lv] * earlier, 1 - keep[lv] * earlier]),
                                     strides=8, buckets=channel_bucket(ch), depth=0.93 + 0.003 * lv, stage=1,
                                     name=f"fusion.merge{lv}")
            for u, p in parts[lv].items():  # given the merge: lv is kept
                sg.add_edge(u, merges[lv], p)
            for m in range(1, lv):  # the latest merge before lv
                sg.add_edge(merges[m], merges[lv], absent_between(m, lv))
            for first in range(lv):  # the first kept part, when no merge came before lv
                for u, p in parts[first].items():
                    sg.add_edge(u, merges[lv], p * absent_between(-1, lv, but=first))
        last = {}
        for m in range(1, L):
            last[merges[m]] = absent_between(m, L)
        for only in range(L):
            for u, p in parts[only].items():
                last[u] = last.get(u, 0) + p * absent_between(-1, L, but=only)
        return last

    def derive(self, top_k: int = 2, price=None, ops: str = "priced") -> dict:
        """The genotype of the most likely network (module docstring: DARTS' rule). With ``price`` (a function of a
        block's key, in nats; :func:`segdistill.search.genotype.derive`) every strength and argmax is of
        ``log p - price`` instead: an edge's op and strength include its block's price, a fusion level's include
        its resize, and ``none`` is free.

        The fusion cell's levels are chosen jointly with the depth they imply (:func:`live_cells`): for each deepest
        kept level d, the score is its best op's, plus per shallower level the better of ``none`` and its best op,
        plus ``none`` for the deeper ones, less the price of the cells d makes the network compute (their chosen
        blocks); the best d wins. Without a price this is DARTS' rule (keep each level whose argmax is not
        ``none``); with one, keeping a deeper level pays (or, under a negative price, earns) its cells too.

        ``ops="weights"``: every edge's and fusion level's op is its likeliest non-``none`` op whatever the price,
        which then sets only which edges and levels are kept (their strengths include the op's price)."""
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        sp, pr = self.space, price or (lambda key: 0.0)
        with torch.no_grad():
            desc = self.describe()

            def weights(rows: list[list[float]], names: tuple) -> list[list[float]]:  # ops="weights": op choices fixed
                none = names.index("none") if "none" in names else None
                return [weights_pick(r, none) for r in rows] if ops == "weights" else rows

            cells = []
            for k, cell in enumerate(desc["cells"]):
                logp = weights(torch.log(cell["probs"].detach().float()).tolist(), sp.cell_ops)
                nodes = []
                for i in range(sp.nodes):
                    picked = sorted((_best([v - pr(sp.edge_key(k, src, o)) for v, o in zip(logp[e], sp.cell_ops)],
                                           sp.cell_ops) + (src,)
                                     for e, (node, src) in enumerate(cell["edges"]) if node == i),
                                    key=lambda t: -t[0])[:top_k]
                    picked.sort(key=lambda t: t[2])
                    nodes.append({"inputs": [t[2] for t in picked], "ops": [t[1] for t in picked]})
                cells.append({"nodes": nodes})
            fusion = []
            if desc["fusion"] is not None:
                logp = weights(torch.log(desc["fusion"]["probs"].detach().float()).tolist(), sp.fusion_ops)

                def score(lv: int, o: str, v: float) -> float:
                    if o == "none":
                        return v
                    return v - pr(sp.fusion_key(lv, o)) - (pr(sp.fusion_resize_key(lv)) if lv > 1 else 0.0)

                scores = [[score(lv, o, v) for o, v in zip(sp.fusion_ops, logp[lv])] for lv in range(4)]
                best = [_best(scores[lv], sp.fusion_ops) for lv in range(4)]
                none = [sc[sp.fusion_ops.index("none")] if "none" in sp.fusion_ops else float("-inf") for sc in scores]
                keep = [sp.fusion_ops[first_argmax(sc)] != "none" for sc in scores]
                cell_price = [sum(pr(key) for key, _ in cell_plan(sp, k, cells[k], sp.base_widths)[0])
                              for k in range(3)]

                def total(d: int) -> float:  # level d the deepest kept: cells 0 .. d-1 computed
                    return (best[d][0] + sum(max(none[lv], best[lv][0]) for lv in range(d))
                            + sum(none[d + 1:]) - sum(cell_price[:d]))

                deepest = max(range(4), key=lambda d: (total(d), -d))  # ties: the shallower network
                kept = [lv for lv in range(deepest) if keep[lv]] + [deepest]
                fusion = [{"level": LEVELS[lv], "op": best[lv][1]} for lv in kept]
        return make_genotype(sp, cells, fusion, top_k)

    def draw_arch(self, fig, it: int) -> None:
        """softmax(alpha') per cell (edges x ops) and the fusion cell's (levels x ops) into matplotlib ``fig``."""
        desc = self.describe()
        mats = [(c["name"], c["probs"], [f"n{n}<-{_src(s)}" for n, s in c["edges"]], c["ops"]) for c in desc["cells"]]
        if desc["fusion"] is not None:
            mats.append(("fusion", desc["fusion"]["probs"], desc["fusion"]["levels"], desc["fusion"]["ops"]))
        axes = fig.subplots(1, len(mats))
        for ax, (name, probs, rows, cols) in zip(axes, mats):
            im = ax.imshow(probs.detach().cpu().numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_yticks(range(len(rows)), rows, fontsize=6)
            ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=6)
            ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=list(axes), fraction=0.02)
        fig.suptitle(f"architecture weights (after the GGM) at iteration {it}", fontsize=9)


def _stage(stride: int) -> int:
    return {4: 0, 8: 1, 16: 2, 32: 3}[stride]


def _src(s: int) -> str:
    return ("x0", "x1")[s] if s < 2 else f"n{s - 2}"


def _best(scores, ops: tuple) -> tuple[float, str]:
    """(strength, op): the largest non-``none`` score (a probability, or a log-probability less a price) and its op."""
    p, o = max((float(p), o) for p, o in zip(scores, ops) if o != "none")
    return p, o


def report_rows(genotype: Mapping) -> list[str]:
    """Markdown lines describing a derived lgcnet network (the search report)."""
    lines = ["| cell | width | nodes (inputs <- ops) |", "|---|---|---|"]
    for name, w, cell in zip(CELL_NAMES, genotype["widths"], genotype["cells"]):
        nodes = "; ".join(", ".join(f"{_src(j)}:{o}" for j, o in zip(n["inputs"], n["ops"])) for n in cell["nodes"])
        lines.append(f"| {name} | {w} | {nodes} |")
    fusion = ", ".join(f"{e['level']}:{e['op']}" for e in genotype["fusion_edges"]) or "off (fixed head)"
    lines += ["", f"Fusion cell: {fusion}."]
    levels = [LEVELS.index(e["level"]) for e in genotype["fusion_edges"]]
    if levels and min(levels) > LEVELS.index("stage2"):
        lines[-1] += (f" **The head reads nothing finer than stride {LEVEL_STRIDES[min(levels)]}**: no high-resolution "
                      "input, which the fixed head (`search.fusion=false`, stride 8 + 32) always has. On CamVid such "
                      "fusion cells cost about 3 mIoU against it (benchmarks/RESULTS.md, 2026-12-07).")
    return lines


# ---------------------------------------------------------------------------- the derived network
class PlanCell(nn.Module):
    def __init__(self, blocks, out: int):
        super().__init__()
        self.blocks = nn.ModuleList(build_op(k) for k, _ in blocks)
        self.inputs, self.out = [tuple(ins) for _, ins in blocks], out

    def forward(self, x0, x1):
        outs = {-2: x0, -1: x1}
        for i, (block, ins) in enumerate(zip(self.blocks, self.inputs)):
            outs[i] = block(*[outs[j] for j in ins])
        return outs[self.out]


class LgcNet(LgcBase):
    """The derived network of an lgcnet genotype: stem, the cells' kept edges, the fusion cell's kept edges (or
    the fixed head). No GGM. Cells no kept fusion level reads (:func:`live_cells`) are not built. ``aux=True`` adds
    an FCN head on ``stage3`` (training only; it builds cell 2 when the fusion cell does not read it, computed in
    training only)."""

    def __init__(self, genotype: Mapping, num_classes: int, aux: bool = False):
        super().__init__()
        space = genotype_space(genotype, num_classes=num_classes)
        widths = genotype["widths"]
        self._init_common(space, widths)
        self.n_live = live_cells(genotype)
        built = max(self.n_live, 2) if aux else self.n_live
        self.cells = nn.ModuleList(PlanCell(*cell_plan(space, k, c, widths))
                                   for k, c in enumerate(genotype["cells"][:built]))
        for name in CELL_NAMES[built:]:
            del self.feature_channels[name], self.feature_strides[name]
        self.levels = [LEVELS.index(e["level"]) for e in genotype["fusion_edges"]]
        self.fusion_edges = nn.ModuleList(build_op(space.fusion_key(lv, e["op"], widths))
                                          for lv, e in zip(self.levels, genotype["fusion_edges"]))
        self.aux_head = FCNHead(widths[1], num_classes, in_key="stage3") if aux else None
        self.apply(init_weights)
        self.train()

    def latency_netspec(self, input_shape):
        return genotype_netspec(self.arch_spec["genotype"], tuple(input_shape), self.num_classes)

    def forward(self, x: torch.Tensor) -> SegOutput:
        feats = self._stem(x)
        prev = [feats["stem"], feats["stage1"]]
        for k, cell in enumerate(self.cells[:len(self.cells) if self.training else self.n_live]):
            feats[CELL_NAMES[k]] = cell(prev[-2], prev[-1])
            prev.append(feats[CELL_NAMES[k]])
        parts = [edge(feats[LEVELS[lv]]) for lv, edge in zip(self.levels, self.fusion_edges)]
        logits = self._head(feats, parts)
        aux = self.aux_head(feats)[0] if self.aux_head is not None and self.training else None
        return SegOutput(logits=logits, features=feats, aux_logits=aux)


def build_supernet(num_classes: int = 11, input_shape=(1, 3, 180, 240), share_cells: bool = False,
                   ggm_gamma: float = 0.5, **space_options) -> LgcSupernet:
    """``LgcSupernet(LgcSpace(input_shape, num_classes, **space_options), share_cells, ggm_gamma)``."""
    space = LgcSpace(tuple(input_shape), num_classes,
                     **{k: tuple(v) if isinstance(v, list) else v for k, v in space_options.items()})
    net = LgcSupernet(space, share_cells=share_cells, ggm_gamma=ggm_gamma)
    net.arch_spec = {"input": list(space.input_shape), "nodes": space.nodes, "base_widths": list(space.base_widths),
                     "stem_widths": list(space.stem_widths), "head_channels": space.head_channels,
                     "fusion": space.fusion, "share_cells": net.share_cells, "ggm_gamma": net.ggm_gamma}
    return net

