"""The stage-wise fully connected, chain-structured search space (``search.space=chain``) and its supernet.

The space (seed 000, ``../shared/docs/methods.md`` "Structural KD with architecture search"), at a glance::

    image -> stem (fixed: conv3x3 s2 -> dwsep3x3 s2)                          stride 4   ("stem", "stage1")
          -> stage2 (stride 8)  -+                                                        ("stage2")
          -> stage3 (stride 16)  | each: searched strided first layer, then up to L        ("stage3")
          -> stage4 (stride 32) -+       fully connected searchable layers               ("stage4")
          -> head (fixed, FasterSeg/LR-ASPP-like): 1x1 conv on stage4, upsample to stride 8, add a 1x1 conv of
             stage2, ReLU, 3x3 conv ("pre_logits"), 1x1 classifier -> logits at stride 8

**Inside a stage** the nodes are numbered: node 0 is the output of the stage's first (strided, stride 2) layer; node
``j`` (1..L) is the output of searchable layer ``j``. Layer ``j`` reads ``sum_i softmax(beta_j)_i * node_i`` over
ALL earlier nodes ``i < j`` of its stage (fully connected), and applies a mixed op ``sum_o softmax(alpha_j)_o *
op_o(.)`` over :data:`LAYER_OPS`: skip, conv 3x3, depthwise-separable 3x3 / 5x5, MBConv k3/k5 x e3/e6, dilated conv
3x3 (d2), zoomed conv 3x3. The stage's output is node L (the last layer).

Choices made (and why):

* **Strided first layer: searched.** Every stage's first layer is a mixed op of its own (``alpha_down``) over
  :data:`DOWN_OPS` (the layer ops at stride 2 without skip, whose strided form is a 1x1 projection, and without the
  dilated conv, whose stride-2 form is not used by any zoo model): the downsampling op is as much a latency lever as
  the others and costs nothing extra to search.
* **Depth is searched through skip.** A layer whose skip op wins is removed from the derived network (its consumers
  read its inputs instead); layers that no longer reach the stage output are removed too (:mod:`genotype`).
* **Width: one choice per stage** among ``width_ratios`` (0.5, 0.75, 1.0) of the stage's base width (rounded to a
  multiple of 8), with its own logits ``width_logits``. Weights are shared by **channel masking** (FBNetV2): every
  candidate block is built once at the stage's largest width, and each node's output is multiplied by the expected
  mask ``sum_w p_w * [channel < c_w]``. Exact for the channels a narrow network has at block boundaries; inside a
  block (a depthwise conv's BN bias on masked channels, an MBConv's hidden width) it is an approximation, which is
  why the derived network is built narrow and trained from scratch. Blocks stay library blocks at one size, so no
  sliced convs are needed.
* **Latency** (:meth:`ChainSpace.expected_latency`): every candidate is a library block keyed at the real input
  shape of its layer, once per width option, so the expectation is exact under the product distribution: a
  searchable layer contributes ``sum_w sum_o p_w p_o t(op_o at width c_w)``, a strided first layer
  ``sum_w' sum_w sum_o p'_w' p_w p_o t(op_o from c'_w' to c_w)`` (``w'``: the previous stage's width), the head's
  two width-dependent 1x1 convs ``sum_w p_w t(.)``; the stem, the head's fixed blocks and the final resize of the
  logits to the input size are fixed parts. The joint probabilities are handed to
  :meth:`LatencyPredictor.expected` as log-probabilities (``softmax(log p) = p``), so the table's correction is
  applied by the one predictor. The mixed sums over predecessors (``beta``) cost nothing here: a derived network
  keeps one predecessor per layer by default (no ``add`` block); with ``top_k=2`` the ``add`` blocks are in the
  derived network's NetSpec but not in the expectation. Layers that end up unreachable are counted by the
  expectation (an upper bound for such networks).
* **Sizes**: the latency keys fix the input shape (``ChainSpace.input_shape``, the deployment size); the modules run
  at any size (zoomed convs take their sizes from their input, the head resizes to the stride-8 map), so the search
  can train on crops of another size.

Architecture parameters (``alpha_down``, ``alpha``, ``beta``, ``width_logits``) are kept apart from the weights:
:meth:`ChainSupernet.arch_parameters` / :meth:`ChainSupernet.weight_parameters`. With ``gumbel = True`` (and
``tau``, ``hard``), the forward pass samples Gumbel-softmax weights in training mode; the expected latency and
:meth:`ChainSupernet.describe` always use the plain softmax probabilities.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..latency import standalone as core
from ..latency.predictor import LatencyPredictor, apply_correction
from ..latency.standalone import BlockKey
from ..models.layers import init_weights, make_divisible
from ..models.output import SegOutput

#: Candidate ops by name: the library block kind and its fixed key fields. Activations follow ``mbv2-chain``.
OPS: dict[str, dict] = {
    "skip": dict(kind="skip"),
    "conv_3x3": dict(kind="conv", kernel=3, act="relu"),
    "dwsep_3x3": dict(kind="dwsep", kernel=3, act="relu"),
    "dwsep_5x5": dict(kind="dwsep", kernel=5, act="relu"),
    "mbconv_k3_e3": dict(kind="mbconv", kernel=3, expansion=3, act="relu6"),
    "mbconv_k3_e6": dict(kind="mbconv", kernel=3, expansion=6, act="relu6"),
    "mbconv_k5_e3": dict(kind="mbconv", kernel=5, expansion=3, act="relu6"),
    "mbconv_k5_e6": dict(kind="mbconv", kernel=5, expansion=6, act="relu6"),
    "dilconv_3x3_d2": dict(kind="dilconv", kernel=3, dilation=2, act="relu"),
    "zoomconv_3x3": dict(kind="zoomconv", kernel=3, act="relu"),
}
LAYER_OPS: tuple[str, ...] = tuple(OPS)
DOWN_OPS: tuple[str, ...] = tuple(n for n in OPS if n not in ("skip", "dilconv_3x3_d2"))
STAGE_NAMES = ("stage2", "stage3", "stage4")
#: ``search.expectation``: what a supernet's structural and latency terms take their expectation over: the network
#: ``derive`` builds from a draw of the architecture weights ("derived"), or the supernet's own wiring ("supernet",
#: every search before 2026-12-07). Supernets hold it as ``.expectation`` (the search hook sets it).
EXPECTATIONS = ("derived", "supernet")


def expectation_of(supernet, expectation: str | None = None) -> str:
    """``expectation``, or the supernet's own (``.expectation``, default "derived"), checked against EXPECTATIONS."""
    expectation = getattr(supernet, "expectation", "derived") if expectation is None else expectation
    if expectation not in EXPECTATIONS:
        raise ConfigError(f"search.expectation={expectation!r}: choose one of {', '.join(EXPECTATIONS)}")
    return expectation


STAGE_STRIDES = (8, 16, 32)


def stage_liveness(layers: list[dict]) -> dict:
    """Which of a stage's searchable layers the derived network keeps, in expectation (``expectation="derived"``):
    ``layers`` as :meth:`ChainSupernet.describe` gives them (``ops``, ``probs`` = softmax(alpha_j), ``input_probs``
    b_j = softmax(beta_j) over nodes 0 .. j-1; node 0 is the strided layer). Returns lists indexed by node 0 .. L:

    * ``P``: presence, 1 - the skip probability (1 for node 0, and for every layer when there is no skip op);
    * ``R``: ``R[i][m]`` = P(reading node i means reading node m | m present): ``R[m][m] = 1``,
      ``R[i][m] = (1 - P_i) sum_k b_i[k] R[k][m]`` (i > m): a removed layer's readers read its resolved input;
    * ``q``: ``q[j][m] = sum_i b_j[i] R[i][m]``, the probability that layer j's input edge comes from node m;
    * ``U``: ``U_m = 1 - (1 - R[L][m]) prod_(j > m) (1 - P_j U_j q[j][m])`` (U_0 = 1), the probability that present
      node m is read (by a kept later layer, or as the stage's output); a layer nobody reads is removed;
    * ``skip``: per layer, the index of its skip op (None without one).

    Exact at one-hot weights; in between the resolution and keeping events are taken as independent (they share some
    layers' skip events). Layer j is in the derived network with probability ``P_j U_j``."""
    L = len(layers)
    one = layers[0]["probs"].new_ones(()) if L else torch.ones(())
    skip = [lay["ops"].index("skip") if "skip" in lay["ops"] else None for lay in layers]
    P = [one] + [one if i is None else 1 - lay["probs"][i] for lay, i in zip(layers, skip)]
    b = [None] + [lay["input_probs"] for lay in layers]
    R = [[one if i == m else one * 0 for m in range(L + 1)] for i in range(L + 1)]
    for i in range(1, L + 1):
        for m in range(i):
            R[i][m] = (1 - P[i]) * sum(b[i][k] * R[k][m] for k in range(i))
    q = [[sum(b[j][i] * R[i][m] for i in range(j)) if m < j else None for m in range(L + 1)] for j in range(L + 1)]
    U = [one] * (L + 1)
    for m in range(L, 0, -1):
        unread = 1 - R[L][m]
        for j in range(m + 1, L + 1):
            unread = unread * (1 - P[j] * U[j] * q[j][m])
        U[m] = 1 - unread
    return {"P": P, "R": R, "q": q, "U": U, "skip": skip}


def op_key(op: str, cin: int, cout: int, h: int, w: int, stride: int = 1) -> BlockKey:
    """The library key of candidate ``op`` reading a (cin, h, w) map."""
    if op not in OPS:
        raise ConfigError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return BlockKey(cin=cin, cout=cout, h=h, w=w, stride=stride, **OPS[op])


def half(size: int) -> int:
    """Output size of a stride-2 'same' conv: ceil(size / 2)."""
    return core.conv_out(size, 3, 2)


class FlexZoomConv(core.ZoomConv):
    """The library's zoomed conv, taking its down/up sizes from the input instead of the key, so a network made of
    these runs at any input size (same layers, same cost key)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        s = self.conv[0].stride[0]
        x = F.interpolate(x, size=((h + 1) // 2, (w + 1) // 2), mode="bilinear", align_corners=False)
        return F.interpolate(self.conv(x), size=(-(-h // s), -(-w // s)), mode="bilinear", align_corners=False)


def build_op(key: BlockKey) -> nn.Module:
    """The library block of ``key`` in training mode (zoomed convs as :class:`FlexZoomConv`)."""
    if key.kind == "zoomconv":
        core.validate_key(key)
        return FlexZoomConv(key)
    return core.build_block(key).train()


def add_key(c: int, h: int, w: int, act: str = "none") -> BlockKey:
    return BlockKey("add", c, c, h, w, act=act)


def block_scorer(predictor: LatencyPredictor, keys, correction: dict | None = ...):
    """``(correction, score)``: every one of ``keys`` made present in the predictor's table, and ``score(key)``, a
    block's cost (ms) as it adds to a network's prediction: its share under an additive correction, its raw latency
    under ``none``/``power`` (monotone in the raw sum). What the cheapest/dearest networks and the priced derivation
    (:func:`segdistill.search.objective.derive_within_budget`) rank blocks by."""
    corr = predictor.table.correction if correction is ... else correction
    predictor.table.ensure(list(keys), measure=predictor.measure, progress=predictor.progress)
    additive = corr and corr.get("model") not in ("none", "power")
    empty = float(apply_correction(corr, predictor.features([]))) if additive else 0.0

    def score(key) -> float:
        if not additive:
            return predictor.table.latency(str(key))
        return float(apply_correction(corr, predictor.features([str(key)]))) - empty

    return corr, score


# ---------------------------------------------------------------------------- the space as keys
@dataclass
class ChainSpace:
    """The space as library keys at one input shape (no modules): what ``segdistill lut build --space chain``
    measures, the expected latency and the cheapest network. Defaults: stem 16/24 channels, stage base widths
    48/96/160 (strides 8/16/32), widths 0.5/0.75/1.0 of them, 4 searchable layers per stage, head 64 channels."""

    input_shape: tuple = (1, 3, 180, 240)
    num_classes: int = 11
    stem_widths: tuple = (16, 24)
    base_widths: tuple = (48, 96, 160)
    width_ratios: tuple = (0.5, 0.75, 1.0)
    layers: int = 4
    head_channels: int = 64
    layer_ops: tuple = LAYER_OPS
    down_ops: tuple = DOWN_OPS
    name: str = field(default="chain", init=False)

    def __post_init__(self):
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.stem_widths, self.base_widths = tuple(self.stem_widths), tuple(self.base_widths)
        self.width_ratios, self.layer_ops, self.down_ops = (tuple(self.width_ratios), tuple(self.layer_ops),
                                                            tuple(self.down_ops))
        problems = []
        if len(self.input_shape) != 4 or min(self.input_shape) < 1:
            problems.append(f"input_shape {self.input_shape} is not (1, C, H, W)")
        if len(self.stem_widths) != 2 or len(self.base_widths) != 3:
            problems.append("needs 2 stem widths and 3 stage base widths (strides 8, 16, 32)")
        if not self.width_ratios or not all(0 < r <= 1 for r in self.width_ratios):
            problems.append(f"width_ratios {self.width_ratios} must lie in (0, 1]")
        if self.layers < 0 or self.head_channels < 1 or self.num_classes < 1:
            problems.append("layers >= 0, head_channels >= 1 and num_classes >= 1 are required")
        unknown = sorted(set(self.layer_ops + self.down_ops) - set(OPS))
        if unknown or not self.layer_ops or not self.down_ops:
            problems.append(f"ops must be non-empty lists of {', '.join(OPS)} (unknown: {unknown})")
        if problems:
            raise ConfigError("chain search space: " + "; ".join(problems))

    # ------------------------------------------------------------------ sizes and widths
    def hw(self, stride: int) -> tuple[int, int]:
        """(h, w) of the maps at ``stride`` (1, 2, 4, ..., 32) for this input shape."""
        h, w = self.input_shape[2:]
        while stride > 1:
            h, w, stride = half(h), half(w), stride // 2
        return h, w

    def widths(self, s: int) -> list[int]:
        """Width options (channels) of stage ``s`` (0, 1, 2 = strides 8, 16, 32), in ``width_ratios`` order."""
        return [make_divisible(self.base_widths[s] * r) for r in self.width_ratios]

    def max_width(self, s: int) -> int:
        return max(self.widths(s))

    def in_widths(self, s: int) -> list[int]:
        """Width options of stage ``s``'s input (the stem's for the first stage)."""
        return [self.stem_widths[1]] if s == 0 else self.widths(s - 1)

    # ------------------------------------------------------------------ keys
    def stem_keys(self) -> list[BlockKey]:
        c, H, W = self.input_shape[1:]
        c0, c1 = self.stem_widths
        return [BlockKey("conv", c, c0, H, W, 3, 2, act="relu"),
                BlockKey("dwsep", c0, c1, *self.hw(2), 3, 2, act="relu")]

    def down_keys(self, s: int, cin: int, cout: int) -> list[BlockKey]:
        return [op_key(op, cin, cout, *self.hw(STAGE_STRIDES[s] // 2), stride=2) for op in self.down_ops]

    def layer_keys(self, s: int, c: int) -> list[BlockKey]:
        return [op_key(op, c, c, *self.hw(STAGE_STRIDES[s])) for op in self.layer_ops]

    def head_keys(self, c_low: int, c_high: int) -> dict[str, BlockKey]:
        """The fixed head's blocks for stage widths ``c_low`` (stride 8) and ``c_high`` (stride 32)."""
        ch, k = self.head_channels, self.num_classes
        (h8, w8), (h32, w32) = self.hw(8), self.hw(32)
        return {"high": BlockKey("conv", c_high, ch, h32, w32, 1, act="relu"),
                "up": BlockKey("resize", ch, ch, h32, w32, out_h=h8, out_w=w8),
                "low": BlockKey("conv", c_low, ch, h8, w8, 1, act="relu"),
                "fuse": add_key(ch, h8, w8, act="relu"),
                "refine": BlockKey("conv", ch, ch, h8, w8, 3, act="relu"),
                "classifier": BlockKey("conv", ch, k, h8, w8, 1, act="none"),
                "final": BlockKey("resize", k, k, h8, w8, out_h=self.input_shape[2], out_w=self.input_shape[3])}

    def fixed_keys(self) -> list[str]:
        """Keys whose cost does not depend on any choice: stem, head after its two 1x1 convs, final resize."""
        head = self.head_keys(1, 1)
        return [str(k) for k in self.stem_keys()] + [str(head[n]) for n in ("up", "fuse", "refine", "classifier",
                                                                             "final")]

    def _groups(self) -> list[tuple[str, list[str], tuple[int, ...]]]:
        """Every width-dependent choice as (what, keys, index shape): the keys are in C order over the index
        dimensions, e.g. (previous width, width, op) for a strided first layer."""
        groups = []
        for s in range(3):
            ins, outs = self.in_widths(s), self.widths(s)
            keys = [str(k) for ci in ins for co in outs for k in self.down_keys(s, ci, co)]
            groups.append((f"{STAGE_NAMES[s]}.down", keys, (len(ins), len(outs), len(self.down_ops))))
            layer = [str(k) for c in outs for k in self.layer_keys(s, c)]
            for j in range(self.layers):
                groups.append((f"{STAGE_NAMES[s]}.layer{j + 1}", layer, (len(outs), len(self.layer_ops))))
        for part, s in (("high", 2), ("low", 0)):
            keys = [str(self.head_keys(c, c)[part]) for c in self.widths(s)]
            groups.append((f"head.{part}", keys, (len(keys),)))
        return groups

    def keys(self, input_shape=None) -> list[str]:
        """Every key the space can use (each once), at ``input_shape`` (default: the space's)."""
        if input_shape is not None and tuple(input_shape) != self.input_shape:
            return dataclasses.replace(self, input_shape=tuple(input_shape)).keys()
        return list(dict.fromkeys(self.fixed_keys() + [k for _, keys, _ in self._groups() for k in keys]))

    # ------------------------------------------------------------------ latency
    def expected_latency(self, predictor: LatencyPredictor, width_logp, down_logp, layer_logp,
                         correction: dict | None = ..., layer_live=None) -> torch.Tensor:
        """Expected latency (ms, differentiable) under log-probabilities: ``width_logp[s]`` over width options,
        ``down_logp[s]`` over :attr:`down_ops`, ``layer_logp[s][j]`` over :attr:`layer_ops`; the table's correction
        (or ``correction``) applied by :meth:`LatencyPredictor.expected`. ``layer_live[s][j]`` (default 1): the
        probability that the layer is read at all (:func:`stage_liveness`' U); an unread layer costs nothing."""
        zero = torch.zeros(1)
        joint = []
        for s in range(3):
            prev = width_logp[s - 1] if s else zero
            joint.append((prev[:, None, None] + width_logp[s][None, :, None] + down_logp[s][None, None, :]).flatten())
            joint += [(width_logp[s][:, None] + a[None, :]).flatten() for a in layer_logp[s]]
        joint += [width_logp[2], width_logp[0]]  # head.high, head.low
        groups = self._groups()
        live = None
        if layer_live is not None:  # in _groups' order: per stage the strided layer, then its layers; the head
            live = [w for s in range(3) for w in [1.0, *layer_live[s]]] + [1.0, 1.0]
        return predictor.expected([keys for _, keys, _ in groups], joint, fixed=self.fixed_keys(),
                                  correction=correction, layer_weights=live)

    def _block_score(self, predictor: LatencyPredictor, correction: dict | None = ...):
        """:func:`block_scorer` over this space's keys: what :meth:`smallest` and :meth:`largest` rank blocks by."""
        return block_scorer(predictor, self.keys(), correction)

    def smallest(self, predictor: LatencyPredictor, correction: dict | None = ...) -> tuple[float, dict]:
        """The cheapest derived network's predicted latency (ms) and its choices ``{"widths", "down"}``: every
        searchable layer removed (skip), the cheapest strided op per stage, the width combination minimising the
        prediction (all combinations tried; per combination the strided ops are picked by their cost under the
        correction, exact when the correction is additive over blocks, as every linear one is, and by raw latency
        under ``power``, which is monotone in it)."""
        corr, score = self._block_score(predictor, correction)
        best = (float("inf"), {})
        fixed = self.fixed_keys()
        for combo in itertools.product(*[range(len(self.width_ratios))] * 3):
            widths = [self.widths(s)[i] for s, i in enumerate(combo)]
            keys, down = list(fixed), []
            for s in range(3):
                cin = self.stem_widths[1] if s == 0 else widths[s - 1]
                cands = self.down_keys(s, cin, widths[s])
                i = min(range(len(cands)), key=lambda o: score(cands[o]))
                down.append(self.down_ops[i])
                keys.append(str(cands[i]))
            head = self.head_keys(widths[0], widths[2])
            keys += [str(head["high"]), str(head["low"])]
            ms = float(apply_correction(corr, predictor.features(keys)))
            if ms < best[0]:
                best = (ms, {"widths": widths, "down": down})
        return best

    def largest(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        """The dearest derived network's predicted latency (ms): every layer kept with its dearest op, the dearest
        strided op per stage, the width combination maximising the prediction (all combinations tried; exact under
        the additive corrections and ``power``, as :meth:`smallest`). A budget whose band lies above it cannot be
        reached: the search then returns a network under the band."""
        corr, score = self._block_score(predictor, correction)
        best, fixed = 0.0, self.fixed_keys()
        for combo in itertools.product(*[range(len(self.width_ratios))] * 3):
            widths = [self.widths(s)[i] for s, i in enumerate(combo)]
            keys = list(fixed)
            for s in range(3):
                cin = self.stem_widths[1] if s == 0 else widths[s - 1]
                keys.append(max(self.down_keys(s, cin, widths[s]), key=score))
                keys += [max(self.layer_keys(s, widths[s]), key=score)] * self.layers
            head = self.head_keys(widths[0], widths[2])
            keys += [head["high"], head["low"]]
            best = max(best, float(apply_correction(corr, predictor.features([str(k) for k in keys]))))
        return best


# ---------------------------------------------------------------------------- modules shared with the derived net
class ChainHead(nn.Module):
    """The fixed light head (FasterSeg / LR-ASPP-like), from library blocks: 1x1 conv-BN-ReLU on the stride-32 map,
    bilinear upsampling to the stride-8 map, plus a 1x1 conv-BN-ReLU of the stride-8 map, ReLU, a 3x3 conv-BN-ReLU
    (``pre_logits``) and a 1x1 conv-BN classifier. Returns ``(logits at stride 8, pre_logits)``."""

    def __init__(self, keys: dict[str, BlockKey]):
        super().__init__()
        self.high, self.low = build_op(keys["high"]), build_op(keys["low"])
        self.fuse, self.refine = build_op(keys["fuse"]), build_op(keys["refine"])
        self.classifier = build_op(keys["classifier"])
        self.channels = keys["refine"].cout

    def forward(self, low: torch.Tensor, high: torch.Tensor):
        up = F.interpolate(self.high(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        pre = self.refine(self.fuse(up, self.low(low)))
        return self.classifier(pre), pre


def feature_layout(stem_widths, stage_widths, head_channels) -> tuple[dict, dict]:
    """``feature_channels`` and ``feature_strides`` of a chain network (supernet: the largest widths)."""
    names = ("stem", "stage1") + STAGE_NAMES + ("pre_logits",)
    channels = dict(zip(names, list(stem_widths) + list(stage_widths) + [head_channels]))
    return channels, dict(zip(names, (2, 4) + STAGE_STRIDES + (8,)))


# ---------------------------------------------------------------------------- the supernet
class MixedOp(nn.Module):
    """``sum_o w_o * op_o(x)`` over candidate library blocks."""

    def __init__(self, keys: list[BlockKey]):
        super().__init__()
        self.ops = nn.ModuleList(build_op(k) for k in keys)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SupernetStage(nn.Module):
    """One stage at its largest width: a strided mixed op (node 0), then fully connected mixed layers; every node's
    output is multiplied by the expected channel mask of the stage's width choice."""

    def __init__(self, space: ChainSpace, s: int, cin: int):
        super().__init__()
        c = space.max_width(s)
        self.down = MixedOp(space.down_keys(s, cin, c))
        self.layers = nn.ModuleList(MixedOp(space.layer_keys(s, c)) for _ in range(space.layers))
        masks = torch.tensor([[1.0 if i < w else 0.0 for i in range(c)] for w in space.widths(s)])
        self.register_buffer("masks", masks, persistent=False)

    def forward(self, x, width_w, down_w, alpha_w, beta_w, aux_skip: float = 0.0):
        """``aux_skip``: DARTS-' auxiliary skip weight, ``aux_skip * input`` added beside each searchable layer."""
        mask = (width_w[:, None] * self.masks).sum(0).view(1, -1, 1, 1)
        nodes = [self.down(x, down_w) * mask]
        for layer, a, b in zip(self.layers, alpha_w, beta_w):
            inp = sum(bi * n for bi, n in zip(b, nodes))
            out = layer(inp, a)
            nodes.append((out + aux_skip * inp if aux_skip else out) * mask)
        return nodes[-1]


class ChainSupernet(nn.Module):
    """The supernet of a :class:`ChainSpace`. ``forward(x)`` returns ``SegOutput(logits at stride 8, features
    {stem, stage1, stage2, stage3, stage4, pre_logits})`` (stage maps at their largest width, masked).

    Architecture parameters (all ``nn.Parameter``, kept apart by :meth:`arch_parameters`):
    ``alpha_down[s]`` (strided ops of stage s), ``alpha[s * L + j]`` (ops of layer j+1), ``beta[s * L + j]`` (its
    j+1 predecessors: node 0 .. node j), ``width_logits[s]``. Sampling: ``gumbel`` (bool), ``tau``, ``hard``.
    """

    def __init__(self, space: ChainSpace):
        super().__init__()
        self.space = space
        self.num_classes = space.num_classes
        self.stem = nn.ModuleList(build_op(k) for k in space.stem_keys())
        cins = [space.stem_widths[1], space.max_width(0), space.max_width(1)]
        self.stages = nn.ModuleList(SupernetStage(space, s, cins[s]) for s in range(3))
        self.head = ChainHead(space.head_keys(space.max_width(0), space.max_width(2)))
        self.apply(init_weights)
        L, n_ops, n_down, n_w = space.layers, len(space.layer_ops), len(space.down_ops), len(space.width_ratios)
        small = lambda n: nn.Parameter(1e-3 * torch.randn(n))  # noqa: E731  (DARTS' initialisation)
        self.alpha_down = nn.ParameterList(small(n_down) for _ in range(3))
        self.alpha = nn.ParameterList(small(n_ops) for _ in range(3 * L))
        self.beta = nn.ParameterList(small(j + 1) for _ in range(3) for j in range(L))
        self.width_logits = nn.ParameterList(small(n_w) for _ in range(3))
        self.gumbel, self.tau, self.hard = False, 1.0, False
        self.aux_skip = 0.0  # DARTS-' auxiliary skip weight (search.aux_skip; the search hook decays it to 0)
        self.expectation = "derived"  # EXPECTATIONS; only the structural term's graph depends on it here
        self.feature_channels, self.feature_strides = feature_layout(
            space.stem_widths, [space.max_width(s) for s in range(3)], space.head_channels)
        self.logits_stride, self.output_stride = 8, 32
        self.train()

    # ------------------------------------------------------------------ parameters
    def named_arch_parameters(self):
        for name in ("alpha_down", "alpha", "beta", "width_logits"):
            for i, p in enumerate(getattr(self, name)):
                yield f"{name}.{i}", p

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits (the search's second optimizer)."""
        return [p for _, p in self.named_arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (the blocks' weights)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def stage_logits(self, s: int) -> dict:
        """Stage ``s``'s logits: ``width``, ``down``, ``alpha`` (per layer), ``beta`` (per layer)."""
        L = self.space.layers
        return {"width": self.width_logits[s], "down": self.alpha_down[s],
                "alpha": list(self.alpha[s * L:(s + 1) * L]), "beta": list(self.beta[s * L:(s + 1) * L])}

    def _weights(self, logits):
        if self.gumbel and self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=self.hard)
        return torch.softmax(logits, dim=0)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> SegOutput:
        feats = {"stem": self.stem[0](x)}
        feats["stage1"] = x = self.stem[1](feats["stem"])
        for s, stage in enumerate(self.stages):
            lg = self.stage_logits(s)
            w = self._weights
            x = stage(x, w(lg["width"]), w(lg["down"]), [w(a) for a in lg["alpha"]], [w(b) for b in lg["beta"]],
                      self.aux_skip)
            feats[STAGE_NAMES[s]] = x
        logits, feats["pre_logits"] = self.head(feats["stage2"], feats["stage4"])
        return SegOutput(logits=logits, features=feats)

    # ------------------------------------------------------------------ latency and description
    def keys(self, input_shape=None) -> list[str]:
        """Every candidate's table key at ``input_shape`` (default: the space's), for ``segdistill lut build``."""
        return self.space.keys(input_shape)

    def expected_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> torch.Tensor:
        """Differentiable expected latency (ms) under the softmax of the architecture logits (see the module doc).
        Under ``expectation="derived"`` a layer counts only with the probability that the derived network keeps it
        (:func:`stage_liveness`: present and read), so beta has a price too; ``"supernet"`` counts every present
        layer (an upper bound: the derived network drops the layers nobody reads)."""
        lg = [self.stage_logits(s) for s in range(3)]
        ls = lambda t: torch.log_softmax(t, dim=0)  # noqa: E731
        live = None
        if expectation_of(self) == "derived":
            live = [stage_liveness(st["layers"])["U"][1:] for st in self.describe()]
        return self.space.expected_latency(predictor, [ls(g["width"]) for g in lg], [ls(g["down"]) for g in lg],
                                           [[ls(a) for a in g["alpha"]] for g in lg], correction, layer_live=live)

    def smallest_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        """Predicted latency (ms) of the cheapest network the space can derive (:meth:`ChainSpace.smallest`)."""
        return self.space.smallest(predictor, correction)[0]

    def largest_latency(self, predictor: LatencyPredictor, correction: dict | None = ...) -> float:
        """Predicted latency (ms) of the dearest network the space can derive (:meth:`ChainSpace.largest`)."""
        return self.space.largest(predictor, correction)

    def describe(self) -> list[dict]:
        """The architecture distribution, per stage, for the structural (GED) term: ``stage``, ``stride``,
        ``widths`` + ``width_probs``, ``down`` and ``layers`` (each ``{"ops", "kinds", "probs"}``; layers also
        ``inputs`` (node indices: 0 = the strided layer's output, j = layer j's) and ``input_probs``). Probabilities
        are softmax tensors (differentiable, never Gumbel samples)."""
        sp = self.space
        kinds = lambda ops: [OPS[o]["kind"] for o in ops]  # noqa: E731
        out = []
        for s in range(3):
            lg = self.stage_logits(s)
            layers = [{"ops": list(sp.layer_ops), "kinds": kinds(sp.layer_ops), "probs": torch.softmax(a, 0),
                       "inputs": list(range(len(b))), "input_probs": torch.softmax(b, 0)}
                      for a, b in zip(lg["alpha"], lg["beta"])]
            out.append({"stage": STAGE_NAMES[s], "stride": STAGE_STRIDES[s], "widths": sp.widths(s),
                        "width_probs": torch.softmax(lg["width"], 0),
                        "down": {"ops": list(sp.down_ops), "kinds": kinds(sp.down_ops),
                                 "probs": torch.softmax(lg["down"], 0)},
                        "layers": layers})
        return out


def build_supernet(num_classes: int = 11, input_shape=(1, 3, 180, 240), **space_options) -> ChainSupernet:
    """``ChainSupernet(ChainSpace(input_shape, num_classes, **space_options))``."""
    return ChainSupernet(ChainSpace(tuple(input_shape), num_classes, **space_options))
