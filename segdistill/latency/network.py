"""Networks as lists of blocks: what the predictor sums over, and random networks for fitting and checking it.

A :class:`NetSpec` is a list of :class:`Node` s in execution order; each node is one table key (a library block,
or a ``fixed:`` part of a zoo model measured whole) and names the earlier nodes it reads (-1 = the network input).
The last node is the output. Its predicted latency is the sum of its nodes' table entries (``predictor.py``).

* Zoo models become NetSpecs in ``zoo.py``.
* :class:`ChainNet` builds a runnable network from a NetSpec of library blocks (the networks the report measures whole).
* :func:`sample_network` draws a random segmentation network from the block library: a stride-2 stem, a chain of
  3-14 blocks of random kinds, widths, kernels, expansions and activations with 2-4 further stride-2 blocks (output
  stride 8, 16 or 32), random residual adds and dense concats, one of three heads (1x1 classifier; DeepLabV3+-like
  decoder: resize + concat with a projected low-level map; PPM-like pooled context: gpool + 1x1 + resize + concat),
  and the final resize to the input size.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import LatencyError
from . import standalone as core
from .standalone import BlockKey


@dataclass
class Node:
    key: str
    inputs: tuple[int, ...] = (-1,)


@dataclass
class NetSpec:
    """A network as blocks. ``input_shape`` is (1, C, H, W); ``kind`` is ``random``, ``zoo`` or ``space``."""

    name: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    kind: str = "random"
    meta: dict = field(default_factory=dict)

    def keys(self) -> list[str]:
        return [n.key for n in self.nodes]

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "kind": self.kind, "meta": self.meta,
                "nodes": [{"key": n.key, "inputs": list(n.inputs)} for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict) -> "NetSpec":
        return cls(d["name"], tuple(d["input_shape"]), [Node(n["key"], tuple(n["inputs"])) for n in d["nodes"]],
                   d.get("kind", "random"), d.get("meta", {}))

    def check(self) -> None:
        """Library nodes: each input's shape must be what the key expects (fixed parts are checked when built)."""
        shapes = {-1: tuple(self.input_shape[1:])}
        for i, node in enumerate(self.nodes):
            if node.key.startswith(core.FIXED_PREFIX):
                shapes[i] = None
                continue
            key = BlockKey.parse(node.key)
            core.validate_key(key)
            want = [tuple(s) for s in key.input_shapes()]
            got = [shapes[j] for j in node.inputs]
            if any(g is not None and g != w for g, w in zip(got, want)) or len(got) != len(want):
                raise LatencyError(f"{self.name}: node {i} {node.key} expects inputs {want}, gets {got}")
            shapes[i] = key.out_shape()


class ChainNet(nn.Module):
    """A runnable network from a NetSpec: each node's block is built from its key; intermediate maps are released
    after their last use, as in a hand-written forward."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        spec.check()
        self.spec = spec
        blocks, self.inputs = [], []
        for node in spec.nodes:
            module, _ = core.build_from_key(node.key)
            blocks.append(module)
            self.inputs.append(tuple(node.inputs))
        self.blocks = nn.ModuleList(blocks)
        last_use: dict[int, int] = {}
        for i, ins in enumerate(self.inputs):
            for j in ins:
                last_use[j] = i
        self.release = [[j for j, last in last_use.items() if last == i and j >= 0] for i in range(len(self.inputs))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: dict[int, torch.Tensor] = {-1: x}
        for i, block in enumerate(self.blocks):
            outs[i] = block(*[outs[j] for j in self.inputs[i]])
            for j in self.release[i]:
                del outs[j]
        return outs[len(self.blocks) - 1]


def build_chain_net(spec_dict: dict) -> tuple[nn.Module, list]:
    """(ChainNet, [input shape]) from ``NetSpec.to_dict()``: picklable, for measuring in another process."""
    spec = NetSpec.from_dict(spec_dict)
    return ChainNet(spec).eval(), [tuple(spec.input_shape[1:])]


# ---------------------------------------------------------------------------- random networks
_OPS = {  # kind: sampling weight
    "conv": 3, "dwsep": 2, "mbconv": 4, "dilconv": 1, "zoomconv": 1, "skip": 1, "maxpool": 0.5, "avgpool": 0.5,
    "basic": 1, "bottleneck": 0.5,
}


def _round8(v: float, lo: int = 8, hi: int = 320) -> int:
    return int(min(hi, max(lo, 8 * round(v / 8))))


class _Builder:
    """Appends nodes and tracks each node's output shape."""

    def __init__(self, input_shape):
        self.nodes: list[Node] = []
        self.shapes = {-1: tuple(input_shape[1:])}

    def add(self, key: BlockKey, *inputs: int) -> int:
        self.nodes.append(Node(str(key), tuple(inputs)))
        idx = len(self.nodes) - 1
        self.shapes[idx] = key.out_shape()
        return idx


def _random_block(rng: random.Random, cin: int, cout: int, h: int, w: int, stride: int) -> BlockKey:
    """One random library block from (cin, h, w) with the given stride and (wanted) output width."""
    kinds = [k for k in _OPS if not (k == "dilconv" and stride > 1)]
    kind = rng.choices(kinds, weights=[_OPS[k] for k in kinds])[0]
    base = dict(cin=cin, cout=cout, h=h, w=w, stride=stride)
    act = rng.choice(["relu", "relu", "relu6", "hswish"])
    if kind == "conv":
        return BlockKey("conv", kernel=rng.choice([1, 3, 3, 5]), act=act, **base)
    if kind == "dilconv":
        return BlockKey("dilconv", kernel=3, dilation=rng.choice([2, 4]), act=act, **base)
    if kind == "dwsep":
        return BlockKey("dwsep", kernel=rng.choice([3, 5]), act=act, **base)
    if kind == "mbconv":
        return BlockKey("mbconv", kernel=rng.choice([3, 5, 7]), expansion=rng.choice([1, 3, 4, 6]),
                        act=rng.choice(["relu6", "relu6", "hswish"]), **base)
    if kind == "zoomconv":
        return BlockKey("zoomconv", kernel=3, act=act, **base)
    if kind in ("maxpool", "avgpool"):
        return BlockKey(kind, kernel=3, **{**base, "cout": cin})
    if kind in ("basic", "bottleneck"):
        return BlockKey(kind, kernel=3, act="relu", expansion=4 if kind == "bottleneck" else 1, **base)
    return BlockKey("skip", **base)


def sample_network(rng: random.Random, input_shape=(1, 3, 180, 240), num_classes: int = 11,
                   name: str = "net") -> NetSpec:
    """A random segmentation network of library blocks (see the module docstring); its output is (1, K, H, W)."""
    _, c_in, H, W = input_shape
    b = _Builder(input_shape)
    c = rng.choice([8, 16, 24, 32])
    cur = b.add(BlockKey("conv", c_in, c, H, W, 3, 2, act=rng.choice(["relu", "relu6", "hswish"])), -1)
    taps = {2: cur}
    stride = 2
    total = rng.choice([8, 16, 16, 32])
    n_down = total.bit_length() - 2  # stride-2 blocks after the stem
    depth = rng.randint(max(3, n_down), 14)
    downs = set(rng.sample(range(depth), n_down))
    for i in range(depth):
        cin, h, w = b.shapes[cur]
        s = 2 if i in downs else 1
        cout = _round8(cin * rng.uniform(1.3, 2.2)) if s == 2 else (
            _round8(cin * rng.uniform(0.75, 1.5)) if rng.random() < 0.2 else cin)
        key = _random_block(rng, cin, cout, h, w, s)
        prev, cur = cur, b.add(key, cur)
        cout = key.cout
        plain = key.kind not in ("mbconv", "basic", "bottleneck", "skip")
        if s == 1 and cout == cin and plain and rng.random() < 0.25:
            cur = b.add(BlockKey("add", cout, cout, h, w, act=rng.choice(["none", "relu"])), cur, prev)
        elif s == 1 and rng.random() < 0.1:
            cur = b.add(BlockKey("concat", cout, cout + cin, h, w, expansion=2), cur, prev)
        stride *= s
        taps[stride] = cur
    cur = _random_head(rng, b, cur, taps, stride, num_classes)
    _, h, w = b.shapes[cur]
    if (h, w) != (H, W):
        cur = b.add(BlockKey("resize", num_classes, num_classes, h, w, out_h=H, out_w=W), cur)
    spec = NetSpec(name, tuple(input_shape), b.nodes, "random", {"output_stride": stride, "depth": depth})
    spec.check()
    return spec


def _random_head(rng: random.Random, b: _Builder, cur: int, taps: dict, stride: int, k: int) -> int:
    c, h, w = b.shapes[cur]
    variant = rng.choice(["plain", "decoder", "context"])
    if variant == "decoder" and stride >= 16:
        low = taps[rng.choice([s for s in (4, 8) if s in taps])]
        cl, lh, lw = b.shapes[low]
        cd, cp = _round8(rng.uniform(32, 128)), _round8(rng.uniform(16, 48))
        top = b.add(BlockKey("conv", c, cd, h, w, 1, act="relu"), cur)
        up = b.add(BlockKey("resize", cd, cd, h, w, out_h=lh, out_w=lw), top)
        proj = b.add(BlockKey("conv", cl, cp, lh, lw, 1, act="relu"), low)
        cat = b.add(BlockKey("concat", cd, cd + cp, lh, lw, expansion=2), up, proj)
        fuse_kind = rng.choice(["conv", "dwsep"])
        cur = b.add(BlockKey(fuse_kind, cd + cp, cd, lh, lw, 3, act="relu"), cat)
        c, h, w = b.shapes[cur]
    elif variant == "context":
        bins = rng.choice([1, 2, 3, 6])
        cb = _round8(c / 4)
        pooled = b.add(BlockKey("gpool", c, c, h, w, bins), cur)
        red = b.add(BlockKey("conv", c, cb, bins, bins, 1, act="relu"), pooled)
        up = b.add(BlockKey("resize", cb, cb, bins, bins, out_h=h, out_w=w), red)
        cur = b.add(BlockKey("concat", cb, cb + c, h, w, expansion=2), up, cur)
        c = cb + c
    return b.add(BlockKey("conv", c, k, h, w, 1, act="none"), cur)


def sample_networks(n: int, input_shape=(1, 3, 180, 240), seed: int = 0, num_classes: int = 11) -> list[NetSpec]:
    """``n`` random networks; the same seed gives the same networks at any input size."""
    rng = random.Random(seed)
    size = "x".join(map(str, input_shape[1:]))
    return [sample_network(random.Random(rng.random()), input_shape, num_classes, f"random{i:03d}@{size}")
            for i in range(n)]
