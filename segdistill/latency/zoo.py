"""Zoo models as blocks: which parts of a registered model are library blocks and which are fixed parts.

:func:`decompose_model` runs the model's backbone unit by unit on an example input (so every shape is the real one)
and turns it into a :class:`~segdistill.latency.network.NetSpec`:

* **library blocks** (shared with sampled and searched networks): the ResNet stem conv and max-pool, ResNet basic and
  bottleneck blocks, every MobileNetV2 conv and inverted residual. A unit becomes a block only when the block built from
  its key has exactly the same layers (conv sizes, strides, paddings, dilations, groups; BN; activations) and output
  shape; otherwise it is a fixed part (e.g. the first block of a dilated ResNet stage, whose two convs have different
  dilations);
* **fixed parts**, measured whole per model and input size, keyed ``fixed:NAME|wW|osOS|kK|HxW:PART``: the head
  (``head``: the whole decoder on the features it reads, to the logits) and each MiT stage (``backbone.stageI``:
  patch embedding, attention blocks, norm); a model that is not a backbone + head Segmentor is one part (``model``);
* the final bilinear resize of the logits to the input size (a library ``resize`` block), as ``segdistill profile``
  times it.

Nodes that are not timed: the Segmentor's dict bookkeeping and the eval-mode identities (dropout, drop-path).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import LatencyError
from ..models import build_model
from ..models.backbones.mit import MixVisionTransformer
from ..models.backbones.mobilenetv2 import _TAPS, InvertedResidual, MobileNetV2
from ..models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from ..models.output import SegOutput, upsample_logits
from ..models.segmentor import Segmentor
from . import standalone as core
from .network import NetSpec, Node
from .standalone import BlockKey


# ---------------------------------------------------------------------------- model specs in keys
def model_spec(name: str, num_classes: int = 11, width_mult: float = 1.0, output_stride: int | None = None,
               input_hw=(180, 240)) -> str:
    """``name|wW|osOS|kK|HxW``: everything needed to rebuild the model and its parts (``osd``: the model's default)."""
    os_ = "d" if output_stride is None else int(output_stride)
    return f"{name}|w{width_mult:g}|os{os_}|k{int(num_classes)}|{int(input_hw[0])}x{int(input_hw[1])}"


def parse_model_spec(spec: str) -> dict:
    try:
        name, w, os_, k, hw = spec.split("|")
        h, wd = hw.split("x")
        return {"name": name, "width_mult": float(w[1:]), "output_stride": None if os_ == "osd" else int(os_[2:]),
                "num_classes": int(k[1:]), "input_shape": (1, 3, int(h), int(wd))}
    except ValueError:
        raise LatencyError(f"{spec!r} is not a model spec (NAME|wW|osOS|kK|HxW)") from None


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


class MiTStagePart(nn.Module):
    """One MiT stage (patch embedding, transformer blocks, norm) of a MixVisionTransformer."""

    def __init__(self, mit: MixVisionTransformer, i: int):
        super().__init__()
        self.i = i
        for name in (f"patch_embed{i}", f"block{i}", f"norm{i}"):
            self.add_module(name, getattr(mit, name))

    def forward(self, x):
        return MixVisionTransformer.stage(self, self.i, x)


class WholeModel(nn.Module):
    """A model that is not decomposed: its logits resized to the input size (what ``segdistill profile`` times)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return upsample_logits(out.logits if isinstance(out, SegOutput) else out, tuple(x.shape[-2:]))


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
def _units(backbone: nn.Module) -> list[tuple[str, nn.Module, str | None]] | None:
    """(name, module, feature name taken after it) in execution order, or None for an unknown backbone."""
    if isinstance(backbone, ResNet):
        units = [("stem", nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu), None),
                 ("maxpool", backbone.maxpool, "stem")]
        for li in range(1, 5):
            layer = getattr(backbone, f"layer{li}")
            units += [(f"layer{li}.{j}", blk, f"stage{li}" if j == len(layer) - 1 else None)
                      for j, blk in enumerate(layer)]
        return units
    if isinstance(backbone, MobileNetV2):
        taps = {i: name for name, i in _TAPS.items()}
        return [(f"features.{i}", f, taps.get(i)) for i, f in enumerate(backbone.features)]
    if isinstance(backbone, MixVisionTransformer):
        return [(f"stage{i}", MiTStagePart(backbone, i), f"stage{i}") for i in range(1, 5)]
    return None


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


def _candidate_key(m: nn.Module, shape) -> BlockKey | None:
    """The library key a unit would be, judged from its type and layers (checked for exactness by the caller)."""
    c, h, w = shape
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    acts = [_ACT_NAMES[type(x)] for x in m.modules() if type(x) in _ACT_NAMES]
    act = acts[0] if acts else "none"
    if isinstance(m, InvertedResidual):
        dw = next(x for x in convs if x.groups > 1)
        e = next((e for e in (1, 2, 3, 4, 6) if int(round(c * e)) == dw.in_channels), dw.in_channels / c)
        return BlockKey("mbconv", c, m.out_channels, h, w, dw.kernel_size[0], dw.stride[0], dw.dilation[0], e, act)
    if isinstance(m, (BasicBlock, Bottleneck)):
        kind = "basic" if isinstance(m, BasicBlock) else "bottleneck"
        last = m.bn2 if kind == "basic" else m.bn3
        strided = m.conv1 if kind == "basic" else m.conv2
        return BlockKey(kind, c, last.num_features, h, w, 3, strided.stride[0], m.conv2.dilation[0],
                        1 if kind == "basic" else 4, "relu")
    if isinstance(m, nn.MaxPool2d) and isinstance(m.kernel_size, int):
        return BlockKey("maxpool", c, c, h, w, m.kernel_size, m.stride if isinstance(m.stride, int) else m.stride[0])
    if len(convs) == 1 and convs[0].groups == 1 and len(_leaves(m)) in (2, 3):
        cv = convs[0]
        kind = "dilconv" if cv.dilation[0] >= 2 else "conv"
        return BlockKey(kind, c, cv.out_channels, h, w, cv.kernel_size[0], cv.stride[0], cv.dilation[0], 1, act)
    return None


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
                    output_stride: int | None = None, model: nn.Module | None = None) -> Decomposition:
    """Split a registered model into library blocks and fixed parts at ``input_shape`` (see the module docstring).
    ``model``: an already built instance of exactly this configuration (random weights are fine)."""
    input_shape = tuple(int(s) for s in input_shape)
    spec = model_spec(name, num_classes, width_mult, output_stride, input_shape[-2:])
    if model is None:
        model = build_model(name, num_classes, width_mult=width_mult, output_stride=output_stride)
    model = model.eval()
    nodes: list[Node] = []
    parts: dict[str, tuple[nn.Module, list]] = {}

    def add_fixed(part: str, module: nn.Module, shapes: list, inputs) -> int:
        key = fixed_key(spec, part)
        parts[key] = (module, [tuple(s) for s in shapes])
        nodes.append(Node(key, tuple(inputs)))
        return len(nodes) - 1

    units = _units(model.backbone) if isinstance(model, Segmentor) else None
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if units is None:
        add_fixed("model", WholeModel(model), [input_shape[1:]], [-1])
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
def _decomposition_of(spec: str) -> Decomposition:
    return decompose_model(**parse_model_spec(spec))


def build_fixed(key: str) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """Module and input shapes of a ``fixed:`` key (the model is built from the spec in the key, random weights)."""
    body = key[len(core.FIXED_PREFIX):]
    spec, _, part = body.rpartition(":")
    parts = _decomposition_of(spec).parts
    if key not in parts:
        raise LatencyError(f"{key}: model {spec} has no fixed part {part!r} (its fixed parts: "
                           f"{', '.join(k.rpartition(':')[2] for k in parts)})")
    return parts[key]
