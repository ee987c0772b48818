"""The transformation module: any segmentation ``nn.Module`` -> a small labelled directed graph of blocks.

Seed 000 (``../shared/docs/methods.md``, "Structural KD with architecture search") compares teacher and student
*architectures* by graph edit distance (:mod:`segdistill.search.ged`). This module makes the graphs.

How a model becomes a graph (:func:`model_graph`)
--------------------------------------------------
The model runs once, in eval mode and without gradients, on a zero input of ``input_shape`` under a
``torch.overrides.TorchFunctionMode`` that sees every top-level torch call (``F.conv2d``, ``F.linear``,
``torch.cat``, ``Tensor.__add__``, ``F.interpolate`` ...) with its real arguments and outputs; forward hooks on every
module only keep a stack of module names, for naming nodes. We chose this "dry-run tracing" over ``torch.fx``
because fx cannot trace code that unpacks shapes or branches on them (the MiT encoder does ``B, N, C = x.shape``),
and over plain leaf-module hooks because those miss functional ops (the residual ``+``, ``torch.cat``,
``F.interpolate``) that carry the data flow. No per-model lists: the graph comes from the ops the model executes.

Each tracked tensor remembers which op produced it (its *producer*), its stride w.r.t. the input and its channel
count. Ops fall into three groups:

* **compute ops** become primitive nodes: convolutions, linears, pooling, resizes, attention
  (``F.scaled_dot_product_attention``, or a matmul of two activations), and **merges** (any op reading two or more
  different producers: ``+``, ``*``, ``torch.cat`` ...);
* **transparent ops** are folded into the producer of their input: norms, activations, dropout, identities, views,
  reshapes, permutes, ``expand``, indexing, arithmetic with constants, parameters or buffers. This is how a
  conv + BN + activation becomes one node ("norm-act folded into the conv");
* ops that read no activation (constants, ``x.shape``) are ignored.

Nodes that do not lead to the model's output (``SegOutput.logits``; a plain tensor; every tensor of a tuple/dict)
are dropped. Then blocks are collapsed, in this order, each rule only along single-consumer chains:

1. **zoomed conv**: resize (down) -> conv -> resize (up) = the conv node (FasterSeg's zoomed conv);
2. **depthwise blocks**: [1x1 expand ->] depthwise conv [-> 1x1 projection] = one ``mbconv`` node (with the expand)
   or one ``dw-conv`` node (depthwise-separable, or a lone depthwise conv);
3. **attention**: the attention op absorbs its input projections (linears, 1x1 convs, attention ops and strided
   spatial-reduction convs whose only consumer it is) and a single output linear;
4. **MLP**: linear -> linear, or linear -> ``dw-conv`` -> linear (SegFormer's Mix-FFN) = one ``mlp`` node.

Residual blocks stay their convs plus a ``merge`` node (the shortcut is the edge from the block input to the merge),
so a ResNet basic block is conv-k3 -> conv-k3 -> merge and a MobileNetV2 residual block is mbconv -> merge.
The result is deterministic: node ids are 0..n-1 in a topological order that follows execution order.

Label vocabulary (:data:`LABELS`)
---------------------------------
``conv-k1``, ``conv-k3`` (kernel 2-3), ``conv-k5+`` (kernel >= 4), ``dilated`` (a dense conv with dilation > 1),
``dw-conv`` (depthwise / depthwise-separable), ``mbconv`` (inverted residual: expand + depthwise + projection),
``pooling`` (max / average / adaptive / global mean), ``resize`` (interpolate, pixel shuffle), ``merge`` (add, mul,
concat ...), ``attention``, ``linear``, ``mlp``. The absent candidate of a soft node is :data:`ABSENT` (``"none"``).
An identity ("skip") is never a node: in a real network it is an edge.

Node attributes: ``label``, ``stride`` (a power of two, from the real output shape; a map pooled to fixed bins
keeps the stride of the map it was pooled from, and so does what is computed on it until it is resized back),
``channels``, ``bucket`` (:func:`channel_bucket`, floor(log2(channels))), ``stage`` and ``depth``
(:func:`assign_positions`), ``name`` (the common module-name prefix of the node's ops), ``ops`` (one line per op),
``pooled``, ``dilation`` (the largest convolution dilation among the node's ops, 1 without one).

Positions (stage, relative depth)
---------------------------------
The fixed node correspondence of :mod:`.ged` pairs nodes by position. The stage of a node is
:func:`stage_of` its stride: the first of ``STAGE_STRIDES = (4, 8, 16, 32)`` that is >= the stride (strides 1 and 2
fall in stage 0, anything past 32 in stage 3). Its relative depth is :func:`slot_depth` (``(k + 0.5) / n``) of its
position k among the n nodes of its stage in topological order. With ``stages="nominal"`` (``search.ged_stages``) the
stage comes from :func:`nominal_strides` instead: stride x the dilation that replaced striding, so that the dilated
last stage of an output-stride-16 teacher (DeepLab) sits in stage 3 (stride 32), where a student's strided stage is,
rather than in stage 2 beside its stride-16 stage.

The soft side: :class:`SoftGraph`
---------------------------------
A supernet at fixed node positions: each :class:`SoftNode` has a stage, a relative depth and candidates (label,
stride, channel bucket) with a probability tensor over them (``"none"`` = the node is removed); each
:class:`SoftEdge` ``(u, v, prob)`` holds the probability that the edge exists *when both end nodes are present*
(an edge never exists with an absent end). How the chain search space fills one from its alpha / beta::

    sg = SoftGraph()
    stem = sg.add_fixed("conv-k3", stride=2, channels=16, depth=slot_depth(0, 2))
    prev = sg.add_fixed("dw-conv", stride=4, channels=24, depth=slot_depth(1, 2))
    sg.add_edge(stem, prev)
    for s, stride in enumerate((8, 16, 32)):            # one stage: first layer + L searchable layers
        n = 1 + L
        ids = [sg.add_layer(DOWN_OPS, softmax(alpha_down[s]), stride=stride, channels=widths[s],
                            width_probs=softmax(width_logits[s]), depth=slot_depth(0, n))]
        sg.add_edge(prev, ids[0])
        for j in range(1, n):
            ids.append(sg.add_layer(LAYER_OPS, softmax(alpha[s][j - 1]), stride=stride, channels=widths[s],
                                    width_probs=softmax(width_logits[s]), depth=slot_depth(j, n)))
            for i, p in enumerate(softmax(beta[s][j - 1])):          # fully connected inside the stage
                sg.add_edge(ids[i], ids[j], p)
        prev = ids[-1]
    # ... then the fixed head nodes with add_fixed / add_edge (probability 1).

Op names map to labels with :func:`op_label` (``skip`` -> ``"none"`` because a layer whose skip wins is removed;
``conv_3x3`` -> ``conv-k3``; ``dwsep_*`` -> ``dw-conv``; ``mbconv_*`` -> ``mbconv``; ``dilconv_*`` -> ``dilated``;
``zoomconv_KxK`` -> the conv label of kernel K, as the zoomed-conv rule above collapses its resizes).
:meth:`SoftGraph.to_graph` gives the discrete graph of a choice (argmax by default) with the same positions.
Graphs of the derived network traced by :func:`model_graph` may differ from it (a removed layer's consumers read its
inputs there; positions are recounted), so the search should use one of the two consistently.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import networkx as nx
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

LABELS: tuple[str, ...] = ("conv-k1", "conv-k3", "conv-k5+", "dilated", "dw-conv", "mbconv", "pooling", "resize",
                           "merge", "attention", "linear", "mlp")
#: The candidate label meaning "this node is not in the network".
ABSENT = "none"
STAGE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)

#: Colours of :func:`draw_graph`, one per label.
LABEL_COLORS = {
    "conv-k1": "#9ecae1", "conv-k3": "#3182bd", "conv-k5+": "#08519c", "dilated": "#756bb1", "dw-conv": "#74c476",
    "mbconv": "#238b45", "pooling": "#fd8d3c", "resize": "#fdd0a2", "merge": "#bdbdbd", "attention": "#e6550d",
    "linear": "#fcbba1", "mlp": "#de2d26",
}


# ---------------------------------------------------------------------------- labels and positions
def channel_bucket(channels: int) -> int:
    """Channel bucket b = floor(log2(channels)): bucket b holds 2^b <= C < 2^(b+1) (16..31 -> 4, 64..127 -> 6)."""
    return int(math.floor(math.log2(max(1, int(channels)))))


def stage_of(stride: float, stage_strides: Sequence[int] = STAGE_STRIDES) -> int:
    """Stage index of a stride: the first of ``stage_strides`` that is >= it (the last stage beyond them)."""
    for i, s in enumerate(stage_strides):
        if stride <= s:
            return i
    return len(stage_strides) - 1


def slot_depth(k: int, n: int) -> float:
    """Relative depth in [0, 1] of the k-th (0-based) of n nodes of a stage: the centre of its slot, (k + 0.5) / n."""
    return (k + 0.5) / n


def conv_label(kernel: int, groups: int = 1, in_channels: int | None = None, dilation: int = 1) -> str:
    """Label of one convolution: depthwise (groups == in_channels > 1) -> ``dw-conv``; else dilation > 1 ->
    ``dilated``; else by kernel: 1 -> ``conv-k1``, 2-3 -> ``conv-k3``, >= 4 -> ``conv-k5+``."""
    if groups > 1 and in_channels is not None and groups == in_channels:
        return "dw-conv"
    if dilation > 1:
        return "dilated"
    return "conv-k1" if kernel <= 1 else "conv-k3" if kernel <= 3 else "conv-k5+"


def op_label(op_name: str, projects: bool = False) -> str:
    """Graph label of a search-space op name (both ``conv_3x3`` and ``conv3x3`` spellings).

    * ``skip`` / ``identity`` -> :data:`ABSENT` (a layer whose skip wins is removed from the derived network; an
      identity is an edge, never a node), or ``conv-k1`` with ``projects=True`` (a skip that strides or widens is a
      1x1 projection);
    * ``none`` / ``zero`` -> :data:`ABSENT`;
    * ``conv_KxK`` -> ``conv-k1`` / ``conv-k3`` / ``conv-k5+`` by K; ``zoomconv_KxK`` -> the same (zoomed convs
      collapse to their conv);
    * ``dwsep_*`` / ``sep_conv_*`` -> ``dw-conv``; ``mbconv_*`` -> ``mbconv``; ``dilconv_*`` / ``dil_conv_*`` ->
      ``dilated``;
    * any label of :data:`LABELS` maps to itself.
    """
    name = op_name.strip().lower()
    if name in LABELS:
        return name
    if name in ("skip", "identity", "skip_connect"):
        return "conv-k1" if projects else ABSENT
    if name in ("none", "zero", ABSENT):
        return ABSENT
    m = re.search(r"(\d+)x\d+", name) or re.search(r"_k(\d+)", name)
    kernel = int(m.group(1)) if m else 3
    if name.startswith(("mbconv", "inverted")):
        return "mbconv"
    if name.startswith(("dwsep", "sep_conv", "dw_conv", "dwconv")):
        return "dw-conv"
    if name.startswith(("dilconv", "dil_conv", "dilated")):
        return "dilated"
    if name.startswith(("zoomconv", "zoom_conv", "conv")):
        return conv_label(kernel)
    raise ValueError(f"op_label: unknown op name {op_name!r}; known kinds: skip, none, conv_KxK, zoomconv_KxK, "
                     f"dwsep_*, mbconv_*, dilconv_* and the labels {', '.join(LABELS)}")


def node_key(n):
    return (0, n, "") if isinstance(n, (int, float)) else (1, 0, str(n))


def topological_order(g: nx.DiGraph) -> list:
    """Nodes in topological order, ties broken by node id (ints first); sorted ids when the graph has a cycle."""
    try:
        return list(nx.lexicographical_topological_sort(g, key=node_key))
    except nx.NetworkXUnfeasible:
        return sorted(g.nodes, key=node_key)


STAGE_RULES = ("stride", "nominal")


def nominal_strides(g: nx.DiGraph) -> dict:
    """``{node: nominal stride}``: the stride a node would have if dilation had not replaced striding. A dilated
    backbone (DeepLab's output stride 16 or 8) keeps its last stages at stride 16 (or 8) with dilation 2 (and 4)
    where a plain one would stride to 32: nominal = ``stride`` x the largest ``dilation`` (node attribute, default 1)
    on the node or inherited from a predecessor whose stride is <= the node's (an upsampling resets it). Plain
    networks: nominal = stride."""
    dil: dict = {}
    for n in topological_order(g):
        s = int(g.nodes[n].get("stride", 1))
        inherited = [dil[p] for p in g.predecessors(n) if p in dil and int(g.nodes[p].get("stride", 1)) <= s]
        dil[n] = max([int(g.nodes[n].get("dilation", 1)), *inherited])
    return {n: int(g.nodes[n].get("stride", 1)) * dil[n] for n in dil}


def node_positions(g: nx.DiGraph, stage_strides: Sequence[int] = STAGE_STRIDES, stages: str = "stride") -> dict:
    """``{node: (stage, depth)}``: the nodes' own ``stage`` / ``depth`` attributes when every node has both (graphs
    from :func:`model_graph` and :meth:`SoftGraph.to_graph`), else computed: stage = :func:`stage_of` the node's
    ``stride`` (1 when missing; ``stages="nominal"``: its :func:`nominal_strides`, so that a dilated teacher's last
    stages sit where a strided student's are), depth = :func:`slot_depth` of its rank among its stage's nodes in
    :func:`topological_order`. Does not change ``g``."""
    if stages not in STAGE_RULES:
        raise ValueError(f"stages must be one of {STAGE_RULES}, got {stages!r}")
    if all("stage" in d and "depth" in d for _, d in g.nodes(data=True)):
        return {n: (int(d["stage"]), float(d["depth"])) for n, d in g.nodes(data=True)}
    where = nominal_strides(g) if stages == "nominal" else {n: g.nodes[n].get("stride", 1) for n in g.nodes}
    by_stage: dict[int, list] = {}
    for n in topological_order(g):
        by_stage.setdefault(stage_of(where[n], stage_strides), []).append(n)
    return {n: (st, slot_depth(k, len(nodes))) for st, nodes in by_stage.items() for k, n in enumerate(nodes)}


def assign_positions(g: nx.DiGraph, stage_strides: Sequence[int] = STAGE_STRIDES, overwrite: bool = False,
                     stages: str = "stride") -> nx.DiGraph:
    """Store :func:`node_positions` (``stages``: its rule) as node attributes ``stage`` and ``depth``
    (recomputed for all nodes when ``overwrite`` or when some node lacks them). Returns ``g``."""
    if overwrite:
        for _, d in g.nodes(data=True):
            d.pop("stage", None)
            d.pop("depth", None)
    for n, (st, depth) in node_positions(g, stage_strides, stages).items():
        g.nodes[n]["stage"], g.nodes[n]["depth"] = st, depth
    return g


# ---------------------------------------------------------------------------- dry-run tracing
_CONV = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool2d",
         "max_pool2d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
         "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_RESIZE = {"interpolate", "upsample", "upsample_bilinear", "upsample_nearest", "pixel_shuffle", "pixel_unshuffle",
           "grid_sample"}
_ATTN = {"scaled_dot_product_attention", "multi_head_attention_forward"}
_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "einsum"}


@dataclass
class _Meta:
    producer: int  # index of the primitive op, -1 = the model input
    stride: int
    pooled: bool
    channels: int


@dataclass
class _Prim:
    kind: str  # conv, linear, pool, resize, attention, merge
    label: str
    meta: _Meta
    name: str
    info: str
    inputs: list[int]
    depthwise: bool = False
    dilation: int = 1


def _flat_tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flat_tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_tensors(o, out)
    return out


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _first(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _pow2(ratio: float) -> int:
    return max(1, 2 ** int(round(math.log2(max(ratio, 1e-9)))))


class _Recorder(TorchFunctionMode):
    """Records compute ops (see the module docstring) and tracks every activation's producer, stride and width."""

    def __init__(self, image_hw: tuple[int, int], names: list[str]):
        super().__init__()
        self.image_hw = image_hw
        self.names = names  # the module-name stack, filled by forward hooks
        self.prims: list[_Prim] = []
        self._table: dict[int, tuple[weakref.ref, _Meta]] = {}

    # -- tensor bookkeeping
    def track(self, t: torch.Tensor, meta: _Meta) -> None:
        self._table[id(t)] = (weakref.ref(t), meta)

    def meta(self, t: torch.Tensor) -> _Meta | None:
        entry = self._table.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _shape_stride(self, t: torch.Tensor) -> int:
        h, w = t.shape[-2], t.shape[-1]
        return _pow2(math.sqrt(self.image_hw[0] / max(1, h) * self.image_hw[1] / max(1, w)))

    # -- the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        name = getattr(func, "__name__", "")
        outs = _flat_tensors(out, [])
        if name == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            outs = [args[0]]
        if not outs:
            return
        ins = [(t, m) for t in _flat_tensors((args, kwargs), []) if (m := self.meta(t)) is not None]
        if not ins:
            return
        metas = [m for _, m in ins]
        producers = list(dict.fromkeys(m.producer for m in metas))
        x, m0 = ins[0]
        inherit = self._inherit(metas)
        prim = None
        if name in _CONV:
            weight = _arg(args, kwargs, 1, "weight")
            groups = _first(_arg(args, kwargs, 6, "groups", 1))
            dilation = _first(_arg(args, kwargs, 5 if "transpose" not in name else 7, "dilation", 1))
            stride = _first(_arg(args, kwargs, 3, "stride", 1))
            kernel = max(weight.shape[2:]) if weight.dim() > 2 else 1
            cout = weight.shape[0] if "transpose" not in name else weight.shape[1] * groups
            label = conv_label(kernel, groups, x.shape[1], dilation)
            meta = _Meta(0, m0.stride, True, cout) if m0.pooled else _Meta(0, self._shape_stride(outs[0]), False, cout)
            prim = _Prim("conv", label, meta, "", f"{name} k{kernel} s{stride} d{dilation} g{groups} -> {cout}", [],
                         depthwise=label == "dw-conv", dilation=dilation)
        elif name == "linear" or (name in _MATMUL and len(producers) == 1):
            cout = int(outs[0].shape[-1])
            prim = _Prim("linear", "linear", _Meta(0, inherit.stride, inherit.pooled, cout), "", f"{name} -> {cout}", [])
        elif name in _ATTN or name in _MATMUL:
            ch = m0.channels
            prim = _Prim("attention", "attention", _Meta(0, inherit.stride, inherit.pooled, ch), "", name, [])
        elif name in _POOL or (name in _REDUCE and x.dim() == 4 and self._spatial_reduce(args, kwargs)):
            adaptive = name.startswith("adaptive") or name in _REDUCE
            if adaptive or m0.pooled:
                meta = _Meta(0, m0.stride, True, m0.channels)
            else:
                meta = _Meta(0, self._shape_stride(outs[0]), False, m0.channels)
            prim = _Prim("pool", "pooling", meta, "", name, [])
        elif name in _RESIZE:
            ch = int(outs[0].shape[1]) if outs[0].dim() == 4 else m0.channels
            prim = _Prim("resize", "resize", _Meta(0, self._shape_stride(outs[0]), False, ch), "", name, [])
        elif len(producers) >= 2:
            prim = _Prim("merge", "merge", _Meta(0, inherit.stride, inherit.pooled, self._merge_channels(
                name, args, kwargs, ins, outs[0])), "", name, [])
        if prim is None:  # transparent: the output is the input's producer's
            for t in outs:
                self.track(t, _Meta(m0.producer, inherit.stride, inherit.pooled, m0.channels))
            return
        prim.inputs = producers
        prim.name = self.names[-1] if self.names else ""
        prim.meta.producer = len(self.prims)
        self.prims.append(prim)
        for t in outs:
            self.track(t, prim.meta)

    @staticmethod
    def _inherit(metas: list[_Meta]) -> _Meta:
        """Stride of an op that does not change resolution: the finest of its un-pooled inputs (all pooled: pooled)."""
        live = [m for m in metas if not m.pooled]
        if live:
            return _Meta(-1, min(m.stride for m in live), False, max(m.channels for m in metas))
        return _Meta(-1, metas[0].stride, True, max(m.channels for m in metas))

    @staticmethod
    def _spatial_reduce(args, kwargs) -> bool:
        dim = _arg(args, kwargs, 1, "dim")
        dims = {dim} if isinstance(dim, int) else set(dim or ())
        return {d % 4 for d in dims} >= {2, 3}

    @staticmethod
    def _merge_channels(name, args, kwargs, ins, out) -> int:
        chans = [m.channels for _, m in ins]
        if name in ("cat", "concat", "concatenate") and out.dim() > 0:
            dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
            if all(t.dim() == out.dim() and t.shape[dim] == m.channels for t, m in ins):
                return int(out.shape[dim])
        return max(chans)


def _model_outputs(out) -> list[torch.Tensor]:
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return [logits]
    return _flat_tensors(out, [])


def _trace(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[_Prim], list[int]]:
    names: list[str] = []
    handles = []

    def enter(name):
        def hook(module, args):
            names.append(name)  # returns None: the inputs are left alone
        return hook

    def leave(module, args, output):
        names.pop()  # returns None: the output is left alone

    for mod_name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(mod_name)))
        handles.append(mod.register_forward_hook(leave))
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(tuple(input_shape), device=device)
        rec = _Recorder(tuple(input_shape[-2:]), names)
        rec.track(x, _Meta(-1, 1, False, int(input_shape[1])))
        model.eval()
        with torch.no_grad(), rec:
            out = model(x)
        outputs = [m.producer for t in _model_outputs(out) if (m := rec.meta(t)) is not None and m.producer >= 0]
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rec.prims, list(dict.fromkeys(outputs))


# ---------------------------------------------------------------------------- collapsing to blocks
def _only(items) -> object | None:
    items = list(items)
    return items[0] if len(items) == 1 else None


def _absorb(g: nx.DiGraph, keep, gone) -> None:
    """Fold node ``gone`` into ``keep``: its edges move to ``keep`` (no self-loops), its ops are appended."""
    for p in list(g.predecessors(gone)):
        if p != keep:
            g.add_edge(p, keep)
    for s in list(g.successors(gone)):
        if s != keep:
            g.add_edge(keep, s)
    g.nodes[keep]["members"] = sorted(g.nodes[keep]["members"] + g.nodes[gone]["members"])
    g.remove_node(gone)


def _is_pointwise(d: dict) -> bool:
    return d["kind"] == "conv" and d["label"] == "conv-k1" and not d["pooled"] and not d.get("zoomed")


def _fold_zoomed(g: nx.DiGraph) -> None:
    for n in sorted(g.nodes):
        if n not in g:  # a resize absorbed by an earlier zoomed conv
            continue
        d = g.nodes[n]
        if d["kind"] != "conv":
            continue
        r1, r2 = _only(g.predecessors(n)), _only(g.successors(n))
        if r1 is None or r2 is None or g.nodes[r1]["kind"] != "resize" or g.nodes[r2]["kind"] != "resize":
            continue
        if _only(g.successors(r1)) != n or _only(g.predecessors(r2)) != n:
            continue
        src = _only(g.predecessors(r1))
        in_stride = g.nodes[src]["stride"] if src is not None else 1
        if g.nodes[r1]["stride"] > in_stride and g.nodes[r2]["stride"] < d["stride"]:
            d["stride"], d["zoomed"] = g.nodes[r2]["stride"], True
            _absorb(g, n, r1)
            _absorb(g, n, r2)


def _fold_depthwise(g: nx.DiGraph) -> None:
    for n in sorted(g.nodes):
        if n not in g or not g.nodes[n]["depthwise"]:
            continue
        d = g.nodes[n]
        expand, project = _only(g.predecessors(n)), _only(g.successors(n))
        if expand is not None and not (_is_pointwise(g.nodes[expand]) and _only(g.successors(expand)) == n):
            expand = None
        if project is not None and not (_is_pointwise(g.nodes[project]) and _only(g.predecessors(project)) == n):
            project = None
        if expand is not None:
            _absorb(g, n, expand)
        if project is not None:
            d["stride"], d["channels"] = g.nodes[project]["stride"], g.nodes[project]["channels"]
            _absorb(g, n, project)
        d["label"] = "mbconv" if expand is not None else "dw-conv"
        d["depthwise"] = False


def _fold_attention(g: nx.DiGraph) -> None:
    for n in sorted(g.nodes):
        if n not in g or g.nodes[n]["label"] != "attention":
            continue
        changed = True
        while changed:
            changed = False
            for p in sorted(g.predecessors(n)):
                dp = g.nodes[p]
                if set(g.successors(p)) != {n}:
                    continue
                preds = [g.nodes[q]["stride"] for q in g.predecessors(p)]
                reduces = dp["kind"] == "conv" and preds and dp["stride"] > max(preds)
                if dp["label"] in ("linear", "conv-k1", "attention") or reduces:
                    _absorb(g, n, p)
                    changed = True
        out = _only(g.successors(n))
        if out is not None and g.nodes[out]["label"] == "linear" and _only(g.predecessors(out)) == n:
            g.nodes[n]["channels"] = g.nodes[out]["channels"]
            _absorb(g, n, out)


def _fold_mlp(g: nx.DiGraph) -> None:
    def chain_next(a):
        b = _only(g.successors(a))
        return b if b is not None and _only(g.predecessors(b)) == a else None

    for n in sorted(g.nodes):
        if n not in g or g.nodes[n]["label"] != "linear":
            continue
        b = chain_next(n)
        if b is None:
            continue
        parts = [b] if g.nodes[b]["label"] == "linear" else []
        if g.nodes[b]["label"] == "dw-conv":
            c = chain_next(b)
            parts = [b, c] if c is not None and g.nodes[c]["label"] == "linear" else []
        if parts:
            last = g.nodes[parts[-1]]
            g.nodes[n].update(label="mlp", stride=last["stride"], channels=last["channels"])
            for p in parts:
                _absorb(g, n, p)


def _common_name(names: list[str]) -> str:
    parts = [n.split(".") if n else [] for n in names]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def model_graph(model: nn.Module, input_shape: Sequence[int] = (1, 3, 128, 128), collapse: bool = True,
                stage_strides: Sequence[int] = STAGE_STRIDES, stages: str = "stride") -> nx.DiGraph:
    """The block graph of ``model`` (any ``nn.Module``), from one dry run on zeros of ``input_shape``.

    See the module docstring for the tracing, the collapse rules, the labels and the node attributes. With
    ``collapse=False`` the graph keeps one node per compute op (conv-BN-act still one node). ``g.graph`` holds the
    model's class name and the input shape. Deterministic for a given model structure and input shape.
    ``stages``: how nodes get their stage (:func:`node_positions`): ``stride`` or ``nominal`` (dilated networks'
    deep stages placed at the stride they replace).
    """
    prims, outputs = _trace(model, input_shape)
    g = nx.DiGraph()
    for i, p in enumerate(prims):
        g.add_node(i, kind=p.kind, label=p.label, stride=p.meta.stride, pooled=p.meta.pooled,
                   channels=int(p.meta.channels), depthwise=p.depthwise, members=[i])
        g.add_edges_from((j, i) for j in p.inputs if j >= 0)
    keep = set(outputs)
    for o in outputs:
        keep |= nx.ancestors(g, o)
    g.remove_nodes_from([n for n in list(g.nodes) if n not in keep])
    if collapse:
        _fold_zoomed(g)
        _fold_depthwise(g)
        _fold_attention(g)
        _fold_mlp(g)
    order = list(nx.lexicographical_topological_sort(g, key=lambda n: min(g.nodes[n]["members"])))
    out = nx.DiGraph(model=type(model).__name__, input_shape=tuple(int(s) for s in input_shape))
    new_id = {n: k for k, n in enumerate(order)}
    for n in order:
        d = g.nodes[n]
        out.add_node(new_id[n], label=d["label"], stride=int(d["stride"]), channels=int(d["channels"]),
                     bucket=channel_bucket(d["channels"]), pooled=bool(d["pooled"]),
                     dilation=max(prims[m].dilation for m in d["members"]),
                     name=_common_name([prims[m].name for m in d["members"]]),
                     ops=[prims[m].info for m in d["members"]])
    out.add_edges_from(sorted((new_id[u], new_id[v]) for u, v in g.edges))
    return assign_positions(out, stage_strides, stages=stages)


# ---------------------------------------------------------------------------- the soft (supernet) side
@dataclass
class SoftNode:
    """A supernet node at a fixed position: candidates ``labels`` (may include :data:`ABSENT`) with probabilities
    ``probs`` (a 1-D tensor, e.g. a softmax of alpha; gradients flow through it), and per candidate a stride and a
    channel bucket (``strides`` / ``buckets``: one value per candidate; the absent candidate's are unused)."""

    stage: int
    depth: float
    labels: list[str]
    probs: torch.Tensor
    strides: list[int]
    buckets: list[int]
    name: str = ""

    def __post_init__(self):
        n = len(self.labels)
        if self.probs.dim() != 1 or self.probs.numel() != n or len(self.strides) != n or len(self.buckets) != n:
            raise ValueError(f"SoftNode {self.name!r}: {n} labels need {n} probabilities, strides and buckets "
                             f"(got {tuple(self.probs.shape)}, {len(self.strides)}, {len(self.buckets)})")
        unknown = sorted(set(self.labels) - set(LABELS) - {ABSENT})
        if unknown:
            raise ValueError(f"SoftNode {self.name!r}: unknown labels {unknown}; use op_label() or {LABELS}")

    def presence(self) -> torch.Tensor:
        """Probability that the node is in the network: the mass of its non-absent candidates."""
        keep = [i for i, lab in enumerate(self.labels) if lab != ABSENT]
        return self.probs[keep].sum() if keep else self.probs.sum() * 0.0


@dataclass
class SoftEdge:
    """Edge ``u -> v`` (node indices) that exists with probability ``prob`` when both ends are present."""

    u: int
    v: int
    prob: torch.Tensor


@dataclass
class SoftGraph:
    """A distribution over architectures as a graph at fixed node positions (see the module docstring)."""

    nodes: list[SoftNode] = field(default_factory=list)
    edges: list[SoftEdge] = field(default_factory=list)

    def add_node(self, labels: Sequence[str], probs, *, strides, buckets, depth: float, stage: int | None = None,
                 name: str = "") -> int:
        """Add a node; ``strides`` / ``buckets`` may be one value for all candidates. ``stage`` defaults to
        :func:`stage_of` the first candidate's stride. Returns its index."""
        n = len(labels)
        strides = [int(strides)] * n if isinstance(strides, (int, float)) else [int(s) for s in strides]
        buckets = [int(buckets)] * n if isinstance(buckets, (int, float)) else [int(b) for b in buckets]
        probs = probs if isinstance(probs, torch.Tensor) else torch.as_tensor(probs, dtype=torch.float32)
        stage = stage_of(strides[0]) if stage is None else int(stage)
        self.nodes.append(SoftNode(stage, float(depth), list(labels), probs, strides, buckets, name))
        return len(self.nodes) - 1

    def add_fixed(self, label: str, *, stride: int, channels: int, depth: float, stage: int | None = None,
                  name: str = "") -> int:
        """A node that is always there with one label (stem, head): probability 1."""
        return self.add_node([label], torch.ones(1), strides=stride, buckets=channel_bucket(channels), depth=depth,
                             stage=stage, name=name)

    def add_layer(self, op_names: Sequence[str], op_probs, *, stride: int, channels, depth: float,
                  width_probs=None, stage: int | None = None, name: str = "") -> int:
        """A searchable layer: ops mapped with :func:`op_label`. With ``channels`` a list of width options and
        ``width_probs`` their probabilities, the candidates are (op, width) pairs with probability p_op * p_width."""
        labels = [op_label(o) for o in op_names]
        op_probs = op_probs if isinstance(op_probs, torch.Tensor) else torch.as_tensor(op_probs, dtype=torch.float32)
        if width_probs is None:
            return self.add_node(labels, op_probs, strides=stride, buckets=channel_bucket(int(channels)), depth=depth,
                                 stage=stage, name=name)
        widths = list(channels)
        width_probs = width_probs if isinstance(width_probs, torch.Tensor) else torch.as_tensor(width_probs)
        probs = (op_probs[:, None] * width_probs[None, :]).reshape(-1)
        return self.add_node([lab for lab in labels for _ in widths], probs, strides=stride,
                             buckets=[channel_bucket(c) for _ in labels for c in widths], depth=depth, stage=stage,
                             name=name)

    def add_edge(self, u: int, v: int, prob=1.0) -> None:
        if not (0 <= u < len(self.nodes) and 0 <= v < len(self.nodes)) or u == v:
            raise ValueError(f"SoftGraph.add_edge: bad edge {u} -> {v} ({len(self.nodes)} nodes)")
        if any(e.u == u and e.v == v for e in self.edges):
            raise ValueError(f"SoftGraph.add_edge: edge {u} -> {v} is already there")
        prob = prob if isinstance(prob, torch.Tensor) else torch.tensor(float(prob))
        self.edges.append(SoftEdge(u, v, prob.reshape(())))

    def to_graph(self, choice: Sequence[int] | None = None, edge_threshold: float = 0.5) -> nx.DiGraph:
        """The discrete graph of one choice: candidate ``choice[i]`` for node i (argmax by default); absent nodes
        are left out; an edge is kept when both ends are present and its probability is >= ``edge_threshold``.
        Nodes keep their index, position (``stage``, ``depth``) and name. At one-hot probabilities this is the graph
        whose :func:`~segdistill.search.ged.correspondence_ged` equals the expected GED."""
        g = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            c = int(node.probs.detach().argmax()) if choice is None else int(choice[i])
            if node.labels[c] == ABSENT:
                continue
            g.add_node(i, label=node.labels[c], stride=node.strides[c], bucket=node.buckets[c],
                       stage=node.stage, depth=node.depth, name=node.name)
        for e in self.edges:
            if e.u in g and e.v in g and float(e.prob.detach()) >= edge_threshold:
                g.add_edge(e.u, e.v)
        return g


# ---------------------------------------------------------------------------- looking at graphs
def graph_summary(g: nx.DiGraph, max_nodes: int | None = None) -> str:
    """Readable text: node/edge counts, labels by count, then one line per node (id, label, stride, channels,
    bucket, stage/depth, module name, inputs)."""
    counts: dict[str, int] = {}
    for _, d in g.nodes(data=True):
        counts[d.get("label", "?")] = counts.get(d.get("label", "?"), 0) + 1
    title = g.graph.get("model", "graph")
    lines = [f"{title}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges; "
             + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))]
    nodes = topological_order(g)
    for n in nodes[:max_nodes] if max_nodes else nodes:
        d = g.nodes[n]
        preds = ",".join(str(p) for p in sorted(g.predecessors(n), key=node_key)) or "-"
        ch = f"c{d['channels']}" if "channels" in d else ""
        pos = f"st{d['stage']} d{d['depth']:.2f}" if "stage" in d and "depth" in d else ""
        lines.append(f"{n!s:>4} {d.get('label', '?'):<9} s{d.get('stride', '?')!s:<3} {ch:<6} "
                     f"b{d.get('bucket', '?')!s:<3} {pos:<12} {d.get('name', '')}  <- {preds}")
    if max_nodes and len(nodes) > max_nodes:
        lines.append(f"  ... {len(nodes) - max_nodes} more nodes")
    return "\n".join(lines)


def draw_graph(g: nx.DiGraph, path_png, title: str | None = None) -> str:
    """Draw ``g`` to a PNG: left to right by topological generation, nodes coloured by label (legend), each node
    marked with its label and stride. Uses matplotlib's object API on an Agg canvas (no display needed)."""
    from .._optional import require

    require("matplotlib", "plot", "drawing an architecture graph")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    try:
        generations = [sorted(gen, key=node_key) for gen in nx.topological_generations(g)]
    except nx.NetworkXUnfeasible:
        generations = [[n] for n in topological_order(g)]
    pos = {}
    for x, gen in enumerate(generations):
        for k, n in enumerate(gen):
            pos[n] = (x, k - (len(gen) - 1) / 2)
    width = max(6.0, 0.9 * len(generations))
    height = max(3.0, 0.8 * max((len(gen) for gen in generations), default=1) + 1.5)
    fig = Figure(figsize=(min(width, 200.0), min(height, 50.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for u, v in g.edges:
        ax.annotate("", xy=pos[v], xytext=pos[u],
                    arrowprops=dict(arrowstyle="->", color="#555555", lw=0.7, shrinkA=7, shrinkB=7,
                                    connectionstyle="arc3,rad=0.15" if abs(pos[v][0] - pos[u][0]) > 1 else "arc3"))
    labels = [g.nodes[n].get("label", "?") for n in pos]
    ax.scatter([p[0] for p in pos.values()], [p[1] for p in pos.values()], s=260, zorder=3, edgecolors="black",
               linewidths=0.5, c=[LABEL_COLORS.get(lab, "#ffffff") for lab in labels])
    for n, (x, y) in pos.items():
        ax.annotate(f"{g.nodes[n].get('label', '?')}\ns{g.nodes[n].get('stride', '?')}", (x, y), xytext=(0, -9),
                    textcoords="offset points", ha="center", va="top", fontsize=6, zorder=4)
    present = sorted(set(labels), key=lambda lab: (LABELS.index(lab) if lab in LABELS else len(LABELS), lab))
    ax.legend(handles=[Patch(color=LABEL_COLORS.get(lab, "#ffffff"), label=lab) for lab in present],
              loc="upper left", fontsize=7, ncol=min(6, len(present)) or 1, frameon=False)
    ax.set_title(title or f"{g.graph.get('model', 'graph')}: {g.number_of_nodes()} nodes, "
                          f"{g.number_of_edges()} edges", fontsize=9)
    ax.set_axis_off()
    ys = [p[1] for p in pos.values()] or [0.0]
    ax.set_xlim(-0.6, max(len(generations) - 0.4, 0.6))
    ax.set_ylim(min(ys) - 0.9, max(ys) + 1.2)  # room for the captions below and the legend above
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9)
    fig.savefig(str(path_png), dpi=100)
    return str(path_png)
