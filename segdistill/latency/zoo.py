"""Models as blocks: which parts of a registered model are library blocks and which are fixed parts.

The protocol a model follows to be decomposed (one of, tried in this order):

1. ``model.latency_netspec(input_shape) -> NetSpec``: a model built from library blocks (a searched network) lists
   its own blocks, final resize included;
2. a :class:`~segdistill.models.segmentor.Segmentor` whose backbone has ``units()``: (name, module, feature tap)
   in execution order (ResNet, MobileNetV2 and MiT have it); each unit becomes a library block when a key rule
   registered for its type (:func:`key_rule`) gives a key that rebuilds it exactly, else a fixed part;
3. anything else is one fixed part (the whole model).

:func:`decompose_model` runs the backbone unit by unit on an example input (so every shape is the real one)
and turns it into a :class:`~segdistill.latency.network.NetSpec`:

* **library blocks** (shared with sampled and searched networks): the ResNet stem conv and max-pool, ResNet basic and
  bottleneck blocks, every MobileNetV2 conv and inverted residual. A unit becomes a block only when the block built from
  its key has exactly the same layers (conv sizes, strides, paddings, dilations, groups; BN; activations) and output
  shape; otherwise it is a fixed part (e.g. the first block of a dilated ResNet stage, whose two convs have different
  dilations);
* **fixed parts**, measured whole per model and input size, keyed ``fixed:NAME|wW|osOS|kK|HxW[|aHASH]:PART``: the head
  (``head``: the whole decoder on the features it reads, to the logits) and each MiT stage (``backbone.stageI``:
  patch embedding, attention blocks, norm); a model that is not a backbone + head Segmentor is one part (``model``);
* the final bilinear resize of the logits to the input size (a library ``resize`` block), as ``segdistill profile``
  times it.

Nodes that are not timed: the Segmentor's dict bookkeeping and the eval-mode identities (dropout, drop-path).
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import LatencyError
from ..models import DeployModel, build_model
from ..models.backbones.mobilenetv2 import InvertedResidual
from ..models.backbones.resnet import BasicBlock, Bottleneck
from ..models.segmentor import Segmentor
from . import standalone as core
from .network import NetSpec, Node
from .standalone import BlockKey

# ---------------------------------------------------------------------------- model specs in keys
#: Architecture data seen in this process, by the hash that stands for it in model specs.
_ARCHS: dict[str, dict] = {}


def arch_hash(arch: dict) -> str:
    """12 hex digits of the sha256 of ``arch`` as canonical JSON (two depths of one model get two hashes)."""
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_spec(name: str, num_classes: int = 11, width_mult: float = 1.0, output_stride: int | None = None,
               input_hw=(180, 240), arch: dict | None = None) -> str:
    """``name|wW|osOS|kK|HxW[|aHASH]``: what identifies the model and its parts (``osd``: the model's default;
    ``aHASH``: its architecture data, see :func:`arch_hash`), so cost keys are unique per configuration."""
    os_ = "d" if output_stride is None else int(output_stride)
    spec = f"{name}|w{width_mult:g}|os{os_}|k{int(num_classes)}|{int(input_hw[0])}x{int(input_hw[1])}"
    if arch:
        h = arch_hash(arch)
        _ARCHS[h] = dict(arch)
        spec += f"|a{h}"
    return spec


def parse_model_spec(spec: str) -> dict:
    try:
        name, w, os_, k, hw, *rest = spec.split("|")
        h, wd = hw.split("x")
        out = {"name": name, "width_mult": float(w[1:]), "output_stride": None if os_ == "osd" else int(os_[2:]),
               "num_classes": int(k[1:]), "input_shape": (1, 3, int(h), int(wd))}
        if len(rest) > 1 or (rest and not rest[0].startswith("a")):
            raise ValueError
    except ValueError:
        raise LatencyError(f"{spec!r} is not a model spec (NAME|wW|osOS|kK|HxW[|aHASH])") from None
    if rest:
        if rest[0][1:] not in _ARCHS:
            raise LatencyError(f"{spec!r}: the architecture {rest[0]} is not known in this process, so its fixed parts "
                               "cannot be rebuilt; decompose the model itself (from its checkpoint or genotype) first")
        out["arch"] = _ARCHS[rest[0][1:]]
    return out


def fixed_key(spec: str, part: str) -> str:
    return f"{core.FIXED_PREFIX}{spec}:{part}"


# ---------------------------------------------------------------------------- fixed-part modules
class HeadPart(nn.Module):
    """A segmentation head on the features it reads (as separate inputs), returning the logits."""

    def __init__(self, head: nn.Module, keys: list[str]):
        super().__init__()
        self.head, self.keys = head, list(keys)

    def forward(self, *xs):
        return self.head(dict(zip(self.keys, xs)))[0]


class _KeyRecorder(dict):
    """A feature dict that records which keys a head reads, in order."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read: list[str] = []

    def __getitem__(self, k):
        if k not in self.read:
            self.read.append(k)
        return super().__getitem__(k)


# ---------------------------------------------------------------------------- units -> keys
_ACT_NAMES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}


def _leaves(module: nn.Module) -> list[nn.Module]:
    skip = (nn.Identity, nn.Dropout)
    return [m for m in module.modules() if not list(m.children()) and not isinstance(m, skip)
            and type(m).__name__ != "DropPath"]


def _signature(module: nn.Module) -> Counter:
    """The layers that fix a module's cost, as a multiset (order-free; activations without ``inplace``)."""
    sig = []
    for m in _leaves(module):
        if isinstance(m, nn.Conv2d):
            sig.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                        m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            sig.append(("bn", m.num_features))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            sig.append((type(m).__name__, m.kernel_size, m.stride, m.padding))
        else:
            sig.append((type(m).__name__,))
    return Counter(sig)


def _act_of(m: nn.Module) -> str:
    acts = [_ACT_NAMES[type(x)] for x in m.modules() if type(x) in _ACT_NAMES]
    return acts[0] if acts else "none"


#: Key rules by unit type: ``fn(unit, (C, H, W)) -> BlockKey | None``, the library key a unit of that type would be.
_KEY_RULES: dict[type, Callable[[nn.Module, tuple], BlockKey | None]] = {}


def key_rule(*types: type):
    """Register the key rule of a model family's block type(s) (looked up along the unit type's MRO)."""

    def deco(fn):
        for t in types:
            _KEY_RULES[t] = fn
        return fn

    return deco


@key_rule(InvertedResidual)
def _mbconv_key(m, shape) -> BlockKey:
    c, h, w = shape
    dw = next(x for x in m.modules() if isinstance(x, nn.Conv2d) and x.groups > 1)
    e = next((e for e in (1, 2, 3, 4, 6) if int(round(c * e)) == dw.in_channels), dw.in_channels / c)
    return BlockKey("mbconv", c, m.out_channels, h, w, dw.kernel_size[0], dw.stride[0], dw.dilation[0], e, _act_of(m))


@key_rule(BasicBlock, Bottleneck)
def _resnet_block_key(m, shape) -> BlockKey:
    c, h, w = shape
    basic = isinstance(m, BasicBlock)
    last = m.bn2 if basic else m.bn3
    strided = m.conv1 if basic else m.conv2
    return BlockKey("basic" if basic else "bottleneck", c, last.num_features, h, w, 3, strided.stride[0],
                    m.conv2.dilation[0], 1 if basic else 4, "relu")


@key_rule(nn.MaxPool2d)
def _maxpool_key(m, shape) -> BlockKey | None:
    c, h, w = shape
    if not isinstance(m.kernel_size, int):
        return None
    return BlockKey("maxpool", c, c, h, w, m.kernel_size, m.stride if isinstance(m.stride, int) else m.stride[0])


@key_rule(nn.Module)
def _conv_key(m, shape) -> BlockKey | None:
    """Any other unit that is one dense conv + norm (+ activation): a library conv or dilated conv."""
    c, h, w = shape
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    if len(convs) != 1 or convs[0].groups != 1 or len(_leaves(m)) not in (2, 3):
        return None
    cv = convs[0]
    kind = "dilconv" if cv.dilation[0] >= 2 else "conv"
    return BlockKey(kind, c, cv.out_channels, h, w, cv.kernel_size[0], cv.stride[0], cv.dilation[0], 1, _act_of(m))


def _candidate_key(m: nn.Module, shape) -> BlockKey | None:
    """The library key a unit would be, by the rule of its type (checked for exactness by the caller)."""
    rule = next(_KEY_RULES[t] for t in type(m).__mro__ if t in _KEY_RULES)
    return rule(m, tuple(shape))


def unit_to_key(module: nn.Module, in_shape, out_shape) -> BlockKey | None:
    """The library key that reproduces ``module`` exactly (same layers and output shape), or None."""
    key = _candidate_key(module, tuple(in_shape))
    if key is None:
        return None
    try:
        core.validate_key(key)
        block = core.build_block(key)
    except LatencyError:
        return None
    if _signature(block) != _signature(module) or tuple(key.out_shape()) != tuple(out_shape):
        return None
    return key


# ---------------------------------------------------------------------------- decomposition
@dataclass
class Decomposition:
    """A zoo model as blocks: ``net`` (the NetSpec), ``parts`` (fixed key -> (module, input shapes)), ``model``."""

    net: NetSpec
    parts: dict[str, tuple[nn.Module, list[tuple[int, ...]]]]
    model: nn.Module


def decompose_model(name: str, input_shape=(1, 3, 180, 240), num_classes: int = 11, width_mult: float = 1.0,
                    output_stride: int | None = None, model: nn.Module | None = None,
                    arch: dict | None = None) -> Decomposition:
    """Split a registered model into library blocks and fixed parts at ``input_shape`` (see the module docstring).
    ``arch``: its architecture data (builder options, ``model.arch_spec``); ``model``: an already built instance of
    exactly this configuration (random weights are fine)."""
    input_shape = tuple(int(s) for s in input_shape)
    if model is None:
        model = build_model(name, num_classes, width_mult=width_mult, output_stride=output_stride, **(arch or {}))
    arch = dict(getattr(model, "arch_spec", None) or arch or {})
    spec = model_spec(name, num_classes, width_mult, output_stride, input_shape[-2:], arch)
    model = model.eval()
    if hasattr(model, "latency_netspec"):  # built from library blocks: the model lists them itself
        net = model.latency_netspec(input_shape)
        net.check()
        return Decomposition(net, {}, model)
    nodes: list[Node] = []
    parts: dict[str, tuple[nn.Module, list]] = {}

    def add_fixed(part: str, module: nn.Module, shapes: list, inputs) -> int:
        key = fixed_key(spec, part)
        parts[key] = (module, [tuple(s) for s in shapes])
        nodes.append(Node(key, tuple(inputs)))
        return len(nodes) - 1

    units = model.backbone.units() if isinstance(model, Segmentor) and hasattr(model.backbone, "units") else None
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if units is None:
        add_fixed("model", DeployModel(model), [input_shape[1:]], [-1])
        return Decomposition(NetSpec(f"{name}@{'x'.join(map(str, input_shape[1:]))}", input_shape, nodes, "zoo",
                                     {"model_spec": spec}), parts, model)
    feats, tap_node, cur = {}, {}, -1
    with torch.no_grad():
        for uname, unit, tap in units:
            y = unit(x)
            key = unit_to_key(unit, x.shape[1:], y.shape[1:])
            if key is not None:
                nodes.append(Node(str(key), (cur,)))
                cur = len(nodes) - 1
            else:
                cur = add_fixed(f"backbone.{uname}", unit, [x.shape[1:]], [cur])
            x = y
            if tap:
                feats[tap], tap_node[tap] = y, cur
        ref = model.backbone(torch.randn(input_shape))
        if {k: tuple(v.shape) for k, v in ref.items()} != {k: tuple(v.shape) for k, v in feats.items()}:
            raise LatencyError(f"{name}: running its backbone unit by unit does not give its features")
        recorder = _KeyRecorder(feats)
        logits = model.head(recorder)[0]
        keys = recorder.read
        cur = add_fixed("head", HeadPart(model.head, keys), [feats[k].shape[1:] for k in keys],
                        [tap_node[k] for k in keys])
    k, h, w = logits.shape[1:]
    if (h, w) != tuple(input_shape[-2:]):
        nodes.append(Node(str(BlockKey("resize", k, k, h, w, out_h=input_shape[2], out_w=input_shape[3])), (cur,)))
    net = NetSpec(f"{name}@{'x'.join(map(str, input_shape[1:]))}", input_shape, nodes, "zoo", {"model_spec": spec})
    net.check()
    return Decomposition(net, parts, model)


@functools.lru_cache(maxsize=4)
def decomposition(spec: str) -> Decomposition:
    """The (cached) decomposition of the model a :func:`model_spec` names (random weights)."""
    return decompose_model(**parse_model_spec(spec))


def build_fixed(key: str) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """Module and input shapes of a ``fixed:`` key (the model is built from the spec in the key, random weights)."""
    body = key[len(core.FIXED_PREFIX):]
    spec, _, part = body.rpartition(":")
    parts = decomposition(spec).parts
    if key not in parts:
        raise LatencyError(f"{key}: model {spec} has no fixed part {part!r} (its fixed parts: "
                           f"{', '.join(k.rpartition(':')[2] for k in parts)})")
    return parts[key]
