"""Depth-level dynamic networks (DDNN): one ResNet whose stages run a prefix of their blocks, switched at run time.

Seed 001 (second abstract, arXiv:2103.00793): instead of training ResNet-18, -34 and -50 separately, train one network
whose shallower sub-nets share its weights. Here it serves segmentation: ``ddnn_{fcn,deeplabv3,deeplabv3plus,lraspp}_
{resnet34,resnet50}`` are the zoo's heads on a dynamic-depth ResNet. The machinery below (named depths, per-depth BN,
``set_depth``, ``arch_spec``) is family-agnostic: a family is a :class:`DynamicBackbone` registered with
:func:`register_family`; :mod:`segdistill.dynamic.mobilenet` adds ``ddnn_*_mobilenetv2`` that way.

**Depth configuration.** Blocks per stage, ``[n1, n2, n3, n4]`` with ``1 <= n_i <= N_i`` (``N`` = ResNet-34's /
ResNet-50's ``[3, 4, 6, 3]``). Depths are named (``model.arch.depths``, a mapping name -> list); the network is built
with the element-wise maximum of the named depths, which must itself be one of them (the *full* net, EKD's teacher).
Defaults: basic blocks ``r10 [1,1,1,1]``, ``r18 [2,2,2,2]``, ``r26 [2,3,4,3]``, ``r34 [3,4,6,3]``; bottlenecks
``r14 [1,1,1,1]``, ``r26 [2,2,2,2]``, ``r38 [2,3,5,2]``, ``r50 [3,4,6,3]``.

**Which blocks run: the first n_i of stage i** (methods.md's default). Why: (1) the first block of a stage is the one
that changes resolution and width (strided conv, ``downsample`` projection, the dilation switch of a dilated stage), so
it must always run, and keeping a prefix keeps every later block's input shape; (2) a prefix of ResNet-34 ``[3,4,6,3]``
at ``[2,2,2,2]`` *is* ResNet-18's layout (torchvision's deeper ResNets append blocks to the same stages), so every
sub-net is a plain ResNet whose keys are a subset of the full net's, and its exported graph is that ResNet; (3) the
residual blocks after the first are refinements (identity + residual), so dropping the last ones is the mildest change
(stochastic depth and the DDNN paper drop them too).

**Batch norm: per-depth running statistics, shared affine parameters.** Every BN layer keeps its own buffers
(``running_mean`` / ``running_var`` / ``num_batches_tracked``, torchvision's keys) for the *full* depth; the other named
depths' running statistics live in ``model.depth_bn.<depth>`` (outside the backbone, so the backbone's state dict is
exactly torchvision's and :func:`~segdistill.models.backbones.load_backbone_weights` loads into it). The scale and
shift (``weight`` / ``bias``) are shared by all depths. Why not one set of statistics: a sub-net's features have other
statistics than the full net's (fewer residual additions), so the shared running averages are a mixture that fits no
depth; why not recalibration after training: it needs a pass over training data for every depth after every change of
the weights (each validation, each resume), whereas per-depth statistics are updated for free by the sub-net forwards
that EKD runs anyway, and a checkpoint is right for every depth as saved. The measured difference is in
``tests/test_ddnn.py::test_per_depth_bn_beats_shared_statistics`` (:func:`recalibrate_bn` and
:func:`bn_statistics_error`: the same trained weights, statistics recomputed exactly per depth or shared by all depths,
compared with each depth's real feature means and by each depth's validation loss). ``model.depth_bn.shared = True``
switches a model to shared statistics for such measurements. Measured on the tiny synthetic run there (3 depths,
8 EKD iterations): mean |running mean - real mean| per depth 0.007 / 0.011 / 0.018 (r10 / r18 / r34) with per-depth
statistics against 0.177 / 0.044 / 0.238 shared, and validation CE 1.873 / 1.827 / 1.792 against 1.891 / 1.860 / 2.140:
shared statistics fit no depth, not even the full one.

**Switching.** ``model.set_depth("r18")`` (or a list equal to a named depth) changes which blocks run and which BN
statistics are read; nothing is copied. ``model.depth`` / ``model.depth_name`` say what is active. ``units()`` of the
backbone lists only the active blocks, and ``model.arch_spec`` names the active depth when it is not the full one, so
latency decomposition gives each depth its own cost keys (and ``build_model(..., depth=NAME)`` rebuilds a model at that
depth from those keys).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.backbones import load_backbone_weights
from ..models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from ..models.registry import register_model
from ..models.segmentor import Segmentor
from ..models.zoo import make_head


@dataclass(frozen=True)
class DepthFamily:
    """A backbone family a DDNN can be built on: ``backbone(family, depths, width_mult, output_stride)`` builds its
    dynamic backbone (a :class:`DynamicBackbone`); ``deepest`` = blocks per stage of the deepest net it allows;
    ``defaults`` = the named depths used when ``model.arch.depths`` is not given."""

    backbone: Callable[..., nn.Module]
    deepest: tuple[int, ...]
    defaults: dict[str, list[int]]


#: family -> DepthFamily (ResNets here; MobileNetV2 in :mod:`segdistill.dynamic.mobilenet`), see :func:`register_family`
FAMILIES: dict[str, DepthFamily] = {}
HEADS = ("fcn", "deeplabv3", "deeplabv3plus", "lraspp")


def register_family(name: str, backbone: Callable[..., nn.Module], deepest, defaults: dict[str, list[int]]) -> None:
    """Make ``name`` a DDNN backbone family and register ``ddnn_{head}_{name}`` for every head of :data:`HEADS`."""
    if name in FAMILIES:
        raise ValueError(f"DDNN family {name!r} is registered twice")
    FAMILIES[name] = DepthFamily(backbone, tuple(deepest), dict(defaults))
    for kind in HEADS:
        _register(kind, name)


def _fmt(depths: dict) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in depths.items())


def _counts(k: int) -> str:
    """``[n1, n2, n3, n4]`` (4 stages) or ``[n1, ..., n7]``: how a depth of ``k`` stages is written in messages."""
    return "[" + (", ".join(f"n{i}" for i in range(1, k + 1)) if k <= 4 else f"n1, ..., n{k}") + "]"


def check_depths(depths, family: str) -> dict[str, list[int]]:
    """Validate named depths (name -> one block count per stage) against ``family``'s deepest depth; returns a clean
    copy."""
    deepest = FAMILIES[family].deepest
    k = len(deepest)
    if not isinstance(depths, dict) or not depths:
        raise ConfigError(f"model.arch.depths must be a non-empty mapping name -> {_counts(k)}, got {depths!r}")
    out = {}
    for name, d in depths.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"depth name {name!r} must be an identifier (it names metrics, e.g. miou@{name})")
        if (not isinstance(d, (list, tuple)) or len(d) != k
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in d)):
            raise ConfigError(f"depth {name!r} must be {k} block counts {_counts(k)}, got {d!r}")
        if any(n < 1 for n in d):
            raise ConfigError(f"depth {name!r} {list(d)}: every stage runs at least its first block (n_i >= 1)")
        if any(n > m for n, m in zip(d, deepest)):
            raise ConfigError(f"depth {name!r} {list(d)} is deeper than {family} allows ({list(deepest)} blocks per "
                              f"stage); depths given: {_fmt(depths)}")
        out[name] = [int(n) for n in d]
    full = [max(d[i] for d in out.values()) for i in range(k)]
    if full not in out.values():
        raise ConfigError(f"the deepest configuration {full} (the full net, teacher of the others) must be one of the "
                          f"named depths; depths given: {_fmt(out)}")
    return out


class DepthBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics depend on the active depth (see the module docstring).

    Its own buffers are the full depth's; for another depth it reads and updates ``bank.stats(depth, key)``. The
    bank is a plain reference (not a sub-module: the bank is registered once, on the segmentor), so deep copies of
    the whole model keep the link."""

    def forward(self, x):
        bank = self.__dict__.get("_bank")
        name = bank.active if bank is not None else None
        if name is None or name == bank.full or bank.shared:
            return super().forward(x)
        mean, var, count = bank.stats(name, self.__dict__["_bank_key"])
        factor = 0.0
        if self.training:
            count.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(count)  # None: cumulative average
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, factor, self.eps)


class DepthBank(nn.Module):
    """Per-depth BN running statistics of every named depth but the full one: ``depth_bn.<depth>.<bn>_mean|_var|_n``
    (``<bn>`` = the BN's backbone path with ``.`` as ``_``); only the BN layers that depth runs."""

    def __init__(self, backbone: "DynamicBackbone", depths: dict[str, list[int]], full: str):
        super().__init__()
        self.full, self.active = full, full
        self.shared = False  # True: every depth uses the BN layers' own statistics (no per-depth BN; for measurements)
        for name, d in depths.items():
            if name == full:
                continue
            holder = nn.Module()
            for path, bn in backbone.depth_bns(d):
                key = path.replace(".", "_")
                holder.register_buffer(f"{key}_mean", bn.running_mean.detach().clone())
                holder.register_buffer(f"{key}_var", bn.running_var.detach().clone())
                holder.register_buffer(f"{key}_n", torch.zeros((), dtype=torch.long))
            self.add_module(name, holder)
        for path, bn in backbone.depth_bns(backbone.deepest):
            object.__setattr__(bn, "_bank", self)
            object.__setattr__(bn, "_bank_key", path.replace(".", "_"))

    def stats(self, depth: str, key: str):
        b = getattr(self, depth)._buffers
        return b[f"{key}_mean"], b[f"{key}_var"], b[f"{key}_n"]

    def reset_from_full(self, backbone: "DynamicBackbone"):
        """Every depth's statistics := the full depth's (after loading ImageNet weights into the backbone)."""
        for name, holder in self.named_children():
            for path, bn in backbone.depth_bns(backbone.depths[name]):
                mean, var, _ = self.stats(name, path.replace(".", "_"))
                mean.copy_(bn.running_mean)
                var.copy_(bn.running_var)


class DynamicBackbone:
    """What a dynamic-depth backbone adds to its static class (a mixin, listed before it): ``depths`` (name -> blocks
    per stage), ``deepest`` (their element-wise maximum, the layout built), ``full`` (its name), ``depth`` (the active
    blocks per stage, set by :meth:`DynamicSegmentor.set_depth`), BN layers that read per-depth statistics, and
    ``depth_bns(depth)``: (path, BN) of every BN layer that ``depth`` runs. Its ``forward`` and ``units()`` run the
    active blocks only."""

    @staticmethod
    def deepest_of(depths: dict[str, list[int]]) -> list[int]:
        return [max(d[i] for d in depths.values()) for i in range(len(next(iter(depths.values()))))]

    def init_depths(self, depths: dict[str, list[int]]) -> None:
        """Call at the end of ``__init__``, once the deepest layout is built."""
        self.depths, self.deepest = depths, self.deepest_of(depths)
        self.full = next(k for k, v in depths.items() if v == self.deepest)
        self.depth = list(self.deepest)
        for m in self.modules():  # same buffers and keys; reads per-depth statistics once a bank is attached
            if type(m) is nn.BatchNorm2d:
                m.__class__ = DepthBatchNorm2d

    def depth_bns(self, depth) -> list[tuple[str, nn.BatchNorm2d]]:
        raise NotImplementedError


def bns_of(prefix: str, module: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(path, BN) of every BN layer inside ``module``, paths under ``prefix``."""
    return [(f"{prefix}.{p}" if p else prefix, m) for p, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]


RESNET_BLOCKS = {"resnet34": BasicBlock, "resnet50": Bottleneck}


class DynamicResNet(DynamicBackbone, ResNet):
    """A ResNet whose stage ``i`` runs its first ``depth[i]`` blocks (torchvision's module layout and keys)."""

    def __init__(self, family: str, depths: dict[str, list[int]], width_mult: float = 1.0, output_stride: int = 32):
        super().__init__(RESNET_BLOCKS[family], self.deepest_of(depths), width_mult=width_mult,
                         output_stride=output_stride, arch=family)
        self.init_depths(depths)

    def depth_bns(self, depth) -> list[tuple[str, nn.BatchNorm2d]]:
        """(path, BN) of every BN layer that ``depth`` runs."""
        out = [("bn1", self.bn1)]
        for li, n in enumerate(depth, 1):
            for j, blk in enumerate(getattr(self, f"layer{li}")[:n]):
                out += bns_of(f"layer{li}.{j}", blk)
        return out

    def units(self):
        """The active depth's units only: (name, module, feature tap), the tap after a stage's last *active* block."""
        units = [("stem", nn.Sequential(self.conv1, self.bn1, self.relu), None), ("maxpool", self.maxpool, "stem")]
        for li, n in enumerate(self.depth, 1):
            layer = getattr(self, f"layer{li}")
            units += [(f"layer{li}.{j}", layer[j], f"stage{li}" if j == n - 1 else None) for j in range(n)]
        return units

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {"stem": x}
        for li, n in enumerate(self.depth, 1):
            layer = getattr(self, f"layer{li}")
            for j in range(n):
                x = layer[j](x)
            out[f"stage{li}"] = x
        return out


class DynamicSegmentor(Segmentor):
    """A zoo head on a dynamic backbone (:class:`DynamicResNet`, :class:`~segdistill.dynamic.mobilenet.
    DynamicMobileNetV2`), with per-depth BN statistics and ``set_depth``."""

    def __init__(self, backbone: DynamicBackbone, head, num_classes, aux=False):
        super().__init__(backbone, head, num_classes, aux=aux)
        self.depth_bn = DepthBank(backbone, backbone.depths, backbone.full)

    # ---- depths
    @property
    def depths(self) -> dict[str, list[int]]:
        return dict(self.backbone.depths)

    @property
    def depth_names(self) -> list[str]:
        """Named depths, shallowest first (by blocks run, then by name)."""
        return sorted(self.backbone.depths, key=lambda k: (sum(self.backbone.depths[k]), self.backbone.depths[k], k))

    @property
    def full_depth(self) -> str:
        return self.backbone.full

    @property
    def depth_name(self) -> str:
        return self.depth_bn.active

    @property
    def depth(self) -> list[int]:
        return list(self.backbone.depth)

    def resolve_depth(self, depth) -> str:
        """The name of ``depth`` (a name, or a list equal to a named depth); a clear error otherwise."""
        depths = self.backbone.depths
        if isinstance(depth, str) and depth in depths:
            return depth
        if isinstance(depth, (list, tuple)):
            for k, v in depths.items():
                if list(depth) == v:
                    return k
            if any(n > m for n, m in zip(depth, self.backbone.deepest)) or len(depth) != len(self.backbone.deepest):
                why = f"{list(depth)} is deeper than this model ({self.backbone.deepest} blocks per stage)"
            else:
                why = (f"{list(depth)} is not a named depth (each named depth has its own BN statistics; add it to "
                       "model.arch.depths and train it)")
        else:
            why = f"unknown depth {depth!r}"
        raise ConfigError(f"{why}; the depths of {getattr(self, 'model_name', 'this model')} are: {_fmt(depths)}")

    def set_depth(self, depth) -> "DynamicSegmentor":
        """Run the blocks of ``depth`` (a name or a named list) from now on; no weight is copied. Returns self."""
        name = self.resolve_depth(depth)
        self.backbone.depth = list(self.backbone.depths[name])
        self.depth_bn.active = name
        return self

    # ---- architecture as data (checkpoints, latency keys)
    @property
    def arch_spec(self) -> dict:
        spec = {"depths": {k: list(v) for k, v in self.backbone.depths.items()}}
        if self.depth_name != self.full_depth:
            spec["depth"] = self.depth_name
        return spec

    @arch_spec.setter
    def arch_spec(self, value):  # build_model only sets it when empty; ours never is
        pass

    def load_pretrained_backbone(self, path) -> dict:
        """torchvision ImageNet weights into the full-depth backbone; every depth's BN statistics start from them."""
        info = load_backbone_weights(self.backbone, path)
        with torch.no_grad():
            self.depth_bn.reset_from_full(self.backbone)
        return info


def is_dynamic(model) -> bool:
    return isinstance(getattr(model, "model", model), DynamicSegmentor)


def unwrap_dynamic(model) -> DynamicSegmentor:
    """The DDNN inside ``model`` (itself, or the model a DeployModel wraps); a clear error for any other model."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, DynamicSegmentor):
        raise ConfigError(f"{getattr(inner, 'model_name', type(inner).__name__)} is not a depth-level dynamic network "
                          "(ddnn_* models); --depth and ekd need one")
    return inner


def _register(kind: str, family: str):
    name = f"ddnn_{kind}_{family}"
    default_os = 16 if kind == "lraspp" else 8

    def builder(num_classes, width_mult=1.0, output_stride=default_os, aux=False, pretrained=None, depths=None,
                depth=None, pretrained_backbone=None):
        pretrained = pretrained if pretrained is not None else pretrained_backbone
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        if pretrained and width_mult != 1.0:
            raise ConfigError(f"pretrained backbone weights ({pretrained}) only fit width_mult=1.0, not {width_mult:g}")
        fam = FAMILIES[family]
        depths = check_depths(fam.defaults if depths is None else depths, family)
        backbone = fam.backbone(family, depths, width_mult, output_stride)
        model = DynamicSegmentor(backbone, make_head(kind, backbone, num_classes, width_mult, output_stride),
                                 num_classes, aux=aux)
        if pretrained:
            model.load_pretrained_backbone(pretrained)
        if depth is not None:
            model.set_depth(depth)
        return model

    builder.__name__ = name
    k = len(FAMILIES[family].deepest)
    builder.__doc__ = (f"DDNN: {kind} head on a dynamic-depth {family} (depths {_fmt(FAMILIES[family].defaults)} by "
                       f"default; options depths={{name: [n1..n{k}]}}, depth=NAME to start at).")
    register_model(name)(builder)


register_family("resnet34", DynamicResNet, [3, 4, 6, 3],
                {"r10": [1, 1, 1, 1], "r18": [2, 2, 2, 2], "r26": [2, 3, 4, 3], "r34": [3, 4, 6, 3]})
register_family("resnet50", DynamicResNet, [3, 4, 6, 3],
                {"r14": [1, 1, 1, 1], "r26": [2, 2, 2, 2], "r38": [2, 3, 5, 2], "r50": [3, 4, 6, 3]})


@torch.no_grad()
def recalibrate_bn(model: DynamicSegmentor, batches) -> None:
    """Recompute BN running statistics from ``batches`` (image tensors) as exact averages (momentum None): each depth
    its own (per-depth BN), or, with ``model.depth_bn.shared``, one set averaged over every depth's passes (what a
    DDNN without per-depth statistics converges to). A measurement tool; training keeps statistics up to date itself."""
    bb, bank = model.backbone, model.depth_bn
    was, training = model.depth_name, model.training
    model.train()
    touched: dict[int, tuple] = {}

    def reset(name):
        for path, bn in bb.depth_bns(bb.depths[name]):
            stats = ((bn.running_mean, bn.running_var, bn.num_batches_tracked) if name == bank.full or bank.shared
                     else bank.stats(name, path.replace(".", "_")))
            if id(stats[0]) not in touched:
                touched[id(stats[0])] = (bn, bn.momentum)
                stats[0].zero_(), stats[1].fill_(1.0), stats[2].zero_()
            bn.momentum = None

    try:
        for name in model.depth_names:
            model.set_depth(name)
            reset(name)
            for x in batches:
                model(x)
    finally:
        for bn, momentum in touched.values():
            bn.momentum = momentum
        model.set_depth(was).train(training)


@torch.no_grad()
def bn_statistics_error(model: DynamicSegmentor, images: torch.Tensor) -> dict[str, float]:
    """For each depth: mean |running mean - exact mean| over the BN layers it runs, the exact mean being the channel
    means of that BN's inputs on ``images`` at that depth (how well the statistics in use fit this data)."""
    bb = model.backbone
    was, training = model.depth_name, model.training
    out = {}
    for name in model.depth_names:
        model.set_depth(name)
        seen: dict[str, torch.Tensor] = {}
        bns = bb.depth_bns(bb.depths[name])
        handles = [bn.register_forward_pre_hook(lambda m, a, p=p: seen.__setitem__(p, a[0].mean((0, 2, 3))))
                   for p, bn in bns]
        model.eval()(images)
        for h in handles:
            h.remove()
        errs = []
        for p, bn in bns:
            used = (bn.running_mean if name == model.full_depth or model.depth_bn.shared
                    else model.depth_bn.stats(name, p.replace(".", "_"))[0])
            errs.append((used - seen[p]).abs().mean())
        out[name] = float(torch.stack(errs).mean())
    model.set_depth(was).train(training)
    return out
