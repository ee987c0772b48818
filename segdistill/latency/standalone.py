"""Latency measurement core in ONE file that needs only torch (plus onnxruntime, onnx for the ONNX Runtime platform).

Why one file: a lookup table is built on the device it describes (a Jetson, a phone-class board, a server), which often
has torch or onnxruntime but none of segdistill's training dependencies. Copy this file there and run::

    python standalone.py --blocks blocks.json --platform onnxruntime-cpu --threads 4 --out lut.json

``blocks.json`` comes from ``segdistill lut blocks ...``; the ``lut.json`` written loads unchanged in ``segdistill
latency predict --lut lut.json``. (Fixed parts of zoo models, keys starting ``fixed:``, also need the segdistill
package, which needs only torch: ``pip install --no-deps PATH_TO_SEGDISTILL_CHECKOUT``.) Inside segdistill this
module is the one home of

* the **block library**: :class:`BlockKey` (the fields that fix a block's cost) and a builder per kind
  (:func:`register_block`); blocks are the eval-mode modules a network is made of, built from the key alone;
* the **one measurement routine**, :func:`measure_latency`, shared with ``segdistill profile``: batch 1, eval mode,
  no grad, warm-up, then timed runs until both a run count and a time floor are reached, median and p90;
  :func:`measure_module` fixes and records the thread count, :func:`run_isolated` runs a measurement in its own process;
* the **platform plug-ins** (:class:`Platform`, :func:`register_platform`): ``torch-cpu`` (eager),
  ``onnxruntime-cpu`` (the module exported to ONNX and run as a session), ``torch-cuda`` (fp32) and
  ``torch-cuda-fp16`` (fp16 autocast), CUDA timed with ``torch.cuda.synchronize``. A new runtime (OpenVINO, TensorRT)
  is a subclass registered from a file passed with ``--plugin`` (see :class:`Platform`);
* :func:`new_table` and :func:`measure_into`: measure a list of keys on one platform into the versioned JSON table
  (its format is documented in ``lut.py``), and :func:`main`, the builder's command line.

What "as deployed" means per platform: every block is its eval-mode module (conv, BN, activation as the models build
them); ONNX Runtime's graph optimiser then folds BN into the conv and fuses activations, exactly as it does for the
whole exported model; torch eager runs BN as its own kernel, exactly as ``segdistill profile`` times the whole model.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.util
import json
import os
import platform as _pyplatform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # inside segdistill: a SegDistillError, printed by the CLI as one clear line
    from segdistill.errors import LatencyError
except ImportError:  # pragma: no cover - standalone on a device without segdistill
    class LatencyError(Exception):
        """A latency table, block key or platform is wrong or missing."""

TABLE_FORMAT = "segdistill-latency-table"
TABLE_VERSION = 1
BLOCKS_FORMAT = "segdistill-latency-blocks"
FIXED_PREFIX = "fixed:"
DEFAULT_TIMING = {"warmup": 10, "min_runs": 50, "min_time": 0.5}


# ============================================================================ block keys
_KEY_RE = re.compile(
    r"^(?P<kind>[a-z][a-z0-9_]*):(?P<cin>\d+)-(?P<cout>\d+):(?P<h>\d+)x(?P<w>\d+):"
    r"k(?P<k>\d+)s(?P<s>\d+)d(?P<d>\d+)e(?P<e>\d+(?:\.\d+)?):(?P<act>[a-z0-9]+)(?::(?P<oh>\d+)x(?P<ow>\d+))?$"
)


@dataclass(frozen=True)
class BlockKey:
    """The fields that fix a block's cost: kind, input/output channels, input height/width, kernel, stride,
    dilation, expansion, activation, and for ``resize`` the output size.

    String form (the table's entry key), e.g. ``mbconv:16-24:90x120:k3s2d1e6:relu6`` or
    ``resize:11-11:23x30:k1s1d1e1:none:180x240``. The batch is always 1.
    """

    kind: str
    cin: int
    cout: int
    h: int
    w: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    expansion: float = 1
    act: str = "none"
    out_h: int = 0
    out_w: int = 0

    def __str__(self) -> str:
        s = (f"{self.kind}:{self.cin}-{self.cout}:{self.h}x{self.w}:k{self.kernel}s{self.stride}d{self.dilation}"
             f"e{self.expansion:g}:{self.act}")
        return s + (f":{self.out_h}x{self.out_w}" if self.out_h else "")

    @classmethod
    def parse(cls, text: str) -> "BlockKey":
        m = _KEY_RE.match(str(text))
        if not m:
            raise LatencyError(f"{text!r} is not a block key (expected kind:CIN-COUT:HxW:kKsSdDeE:ACT[:OHxOW], "
                               f"e.g. mbconv:16-24:90x120:k3s2d1e6:relu6)")
        g = m.groupdict()
        e = float(g["e"])
        return cls(g["kind"], int(g["cin"]), int(g["cout"]), int(g["h"]), int(g["w"]), int(g["k"]), int(g["s"]),
                   int(g["d"]), int(e) if e.is_integer() else e, g["act"], int(g["oh"] or 0), int(g["ow"] or 0))

    @property
    def spec(self) -> "BlockKind":
        if self.kind not in BLOCKS:
            raise LatencyError(f"unknown block kind {self.kind!r} in {self}; known: {', '.join(sorted(BLOCKS))}")
        return BLOCKS[self.kind]

    def input_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of each input (batch 1)."""
        return self.spec.inputs(self)

    def out_shape(self) -> tuple[int, int, int]:
        return (self.cout, *self.spec.out_hw(self))

    def replace(self, **kw) -> "BlockKey":
        return BlockKey(**{**asdict(self), **kw})


def conv_out(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output size of a conv/pool with 'same' padding ``(k - 1) // 2 * d`` (odd kernels): ``ceil(size / stride)``."""
    pad = (kernel - 1) // 2 * dilation
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


# ============================================================================ block modules
ACTS: dict[str, Callable[[], nn.Module] | None] = {
    "relu": lambda: nn.ReLU(inplace=True), "relu6": lambda: nn.ReLU6(inplace=True), "none": None,
    "sigmoid": nn.Sigmoid, "hswish": nn.Hardswish, "gelu": nn.GELU,
}


def make_act(name: str) -> nn.Module | None:
    if name not in ACTS:
        raise LatencyError(f"unknown activation {name!r}; known: {', '.join(ACTS)}")
    return ACTS[name]() if ACTS[name] else None


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, 'same' padding; the layout of segdistill's ConvBNAct."""

    def __init__(self, cin, cout, k=1, s=1, d=1, groups=1, act="relu"):
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2 * d, dilation=d, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        a = make_act(act)
        super().__init__(*(layers + ([a] if a is not None else [])))


class MBConv(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (skipped when e = 1) -> kxk depthwise (strided/dilated) -> linear 1x1;
    a residual when the block neither strides nor changes width (segdistill's InvertedResidual)."""

    def __init__(self, cin, cout, k=3, s=1, d=1, e=6, act="relu6"):
        super().__init__()
        hidden = int(round(cin * e))
        self.use_res_connect = s == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1, act=act)] if e != 1 else []
        layers += [ConvBNAct(hidden, hidden, k, s, d, groups=hidden, act=act),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class ZoomConv(nn.Module):
    """Zoomed conv (FasterSeg): bilinear downsample x1/2 -> conv-BN-act (stride s) -> bilinear upsample to the size a
    plain stride-s conv would give. Sizes are static (taken from the key) so the ONNX graph is static too."""

    def __init__(self, key: "BlockKey"):
        super().__init__()
        self.down = ((key.h + 1) // 2, (key.w + 1) // 2)
        self.up = key.spec.out_hw(key)
        self.conv = ConvBNAct(key.cin, key.cout, key.kernel, key.stride, key.dilation, act=key.act)

    def forward(self, x):
        x = F.interpolate(x, size=self.down, mode="bilinear", align_corners=False)
        return F.interpolate(self.conv(x), size=self.up, mode="bilinear", align_corners=False)


class Resize(nn.Module):
    """Bilinear resize to a fixed size (align_corners=False, as every segdistill model resizes)."""

    def __init__(self, size):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class Concat(nn.Module):
    """Channel concatenation of all inputs."""

    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class Add(nn.Module):
    """Sum of two maps, then the activation (``relu`` as at the end of a ResNet block)."""

    def __init__(self, act="none"):
        super().__init__()
        self.act = make_act(act)

    def forward(self, a, b):
        y = a + b
        return self.act(y) if self.act is not None else y


class Zero(nn.Module):
    """The 'none' op of a search space: no edge in the deployed network, so it costs nothing (never measured)."""

    def __init__(self, key):
        super().__init__()
        self.shape = (1, *key.out_shape())

    def forward(self, x):
        return x.new_zeros(self.shape)


class ResBlock(nn.Module):
    """ResNet basic (two 3x3, ``expansion`` 1) or bottleneck (1x1 -> 3x3 -> 1x1, hidden = cout / ``expansion``) block,
    both convs dilated by ``dilation``, projection shortcut when striding or changing width; the module layout of
    segdistill's ResNet blocks (one ReLU module reused)."""

    def __init__(self, cin, cout, s=1, d=1, bottleneck=False, e=4):
        super().__init__()
        self.bottleneck = bottleneck
        hid = cout // int(e) if bottleneck else cout
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid)
            self.conv2 = nn.Conv2d(hid, hid, 3, s, d, dilation=d, bias=False)
            self.bn2 = nn.BatchNorm2d(hid)
            self.conv3, self.bn3 = nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        else:
            self.conv1 = nn.Conv2d(cin, cout, 3, s, d, dilation=d, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, d, dilation=d, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))
                           if s != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        else:
            out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


# ============================================================================ block library
@dataclass
class BlockKind:
    """One kind of block: how to build it from a key, its inputs, its output size, and which keys are valid."""

    name: str
    build: Callable[[BlockKey], nn.Module]
    doc: str
    inputs: Callable[[BlockKey], list] = lambda k: [(k.cin, k.h, k.w)]
    out_hw: Callable[[BlockKey], tuple[int, int]] = lambda k: (conv_out(k.h, k.kernel, k.stride, k.dilation),
                                                              conv_out(k.w, k.kernel, k.stride, k.dilation))
    check: Callable[[BlockKey], str | None] = lambda k: None
    free: Callable[[BlockKey], bool] = lambda k: False  # costs nothing in a deployed graph (never measured)


BLOCKS: dict[str, BlockKind] = {}


def register_block(kind: BlockKind) -> BlockKind:
    """Add a kind to the library (a user's own block: build it from the key alone, deterministic cost)."""
    if kind.name in BLOCKS:
        raise LatencyError(f"block kind {kind.name!r} is registered twice")
    BLOCKS[kind.name] = kind
    return kind


def _same_channels(k: BlockKey) -> str | None:
    return None if k.cin == k.cout else "needs cin == cout"


def _concat_inputs(k: BlockKey) -> list:
    n = int(k.expansion)
    rest = (k.cout - k.cin) // max(1, n - 1)
    return [(k.cin, k.h, k.w)] + [(rest, k.h, k.w)] * (n - 1)


def _concat_check(k: BlockKey) -> str | None:
    n = int(k.expansion)
    if n < 2 or k.cout <= k.cin or (k.cout - k.cin) % (n - 1):
        return "needs e = number of inputs >= 2 and (cout - cin) split evenly over the other inputs"
    return None


def _skip_build(k: BlockKey) -> nn.Module:
    if k.stride == 1 and k.cin == k.cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(k.cin, k.cout, 1, k.stride, bias=False), nn.BatchNorm2d(k.cout))


for _kind in (
    BlockKind("conv", lambda k: ConvBNAct(k.cin, k.cout, k.kernel, k.stride, k.dilation, act=k.act),
              "conv-BN-activation (kernel k, stride s, dilation d)"),
    BlockKind("dilconv", lambda k: ConvBNAct(k.cin, k.cout, k.kernel, k.stride, k.dilation, act=k.act),
              "dilated conv-BN-activation (as ASPP's atrous branches); dilation >= 2",
              check=lambda k: None if k.dilation >= 2 else "needs dilation >= 2"),
    BlockKind("dwsep", lambda k: nn.Sequential(
        ConvBNAct(k.cin, k.cin, k.kernel, k.stride, k.dilation, groups=k.cin, act=k.act),
        ConvBNAct(k.cin, k.cout, 1, act=k.act)),
        "depthwise-separable conv: depthwise kxk conv-BN-act then pointwise 1x1 conv-BN-act"),
    BlockKind("mbconv", lambda k: MBConv(k.cin, k.cout, k.kernel, k.stride, k.dilation, k.expansion, k.act),
              "MobileNetV2 inverted residual with expansion e and kernel k"),
    BlockKind("zoomconv", ZoomConv, "zoomed conv: bilinear downsample x1/2, conv-BN-act, bilinear upsample"),
    BlockKind("skip", _skip_build, "identity (free: no op in a deployed graph), or a 1x1 conv-BN projection when "
              "striding or changing width", free=lambda k: k.stride == 1 and k.cin == k.cout),
    BlockKind("maxpool", lambda k: nn.MaxPool2d(k.kernel, k.stride, (k.kernel - 1) // 2), "kxk max pooling",
              check=_same_channels),
    BlockKind("avgpool", lambda k: nn.AvgPool2d(k.kernel, k.stride, (k.kernel - 1) // 2, count_include_pad=False),
              "kxk average pooling", check=_same_channels),
    BlockKind("gpool", lambda k: nn.AdaptiveAvgPool2d(k.kernel), "adaptive average pooling to k x k bins",
              out_hw=lambda k: (k.kernel, k.kernel), check=_same_channels),
    BlockKind("resize", lambda k: Resize((k.out_h, k.out_w)), "bilinear resize to out_h x out_w",
              out_hw=lambda k: (k.out_h, k.out_w),
              check=lambda k: _same_channels(k) or (None if k.out_h and k.out_w else "needs an output size")),
    BlockKind("concat", lambda k: Concat(), "channel concat of e inputs (first cin channels, the rest split evenly)",
              inputs=_concat_inputs, out_hw=lambda k: (k.h, k.w), check=_concat_check),
    BlockKind("add", lambda k: Add(k.act), "sum of two maps, then the activation",
              inputs=lambda k: [(k.cin, k.h, k.w)] * 2, out_hw=lambda k: (k.h, k.w), check=_same_channels),
    BlockKind("basic", lambda k: ResBlock(k.cin, k.cout, k.stride, k.dilation),
              "ResNet basic block (two 3x3 conv-BN, residual, ReLU)"),
    BlockKind("bottleneck", lambda k: ResBlock(k.cin, k.cout, k.stride, k.dilation, bottleneck=True, e=k.expansion),
              "ResNet bottleneck block (hidden = cout / e)",
              check=lambda k: None if k.cout % int(k.expansion) == 0 else "needs cout divisible by e"),
    BlockKind("zero", Zero, "the 'none' op of a search space: costs nothing", free=lambda k: True),
):
    register_block(_kind)


def validate_key(key: BlockKey) -> None:
    """Raise LatencyError when the key cannot describe a block (unknown kind, bad sizes, kind-specific rules)."""
    spec = key.spec
    problem = None
    if min(key.cin, key.cout, key.h, key.w, key.kernel, key.stride, key.dilation) < 1 or key.expansion <= 0:
        problem = "channels, sizes, kernel, stride, dilation must be >= 1 and expansion > 0"
    elif key.kernel % 2 == 0 and key.kind not in ("gpool",):
        problem = "needs an odd kernel"
    elif key.act not in ACTS:
        problem = f"unknown activation {key.act!r}"
    else:
        problem = spec.check(key)
    if problem:
        raise LatencyError(f"block key {key}: {spec.name} {problem}")


def build_block(key: BlockKey) -> nn.Module:
    """The eval-mode module of a library key (random weights: only the cost matters)."""
    validate_key(key)
    return key.spec.build(key).eval()


# ---------------------------------------------------------------------------- fixed parts
def build_from_key(key: str) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """The module and its input shapes (C, H, W) for any table key: a library block, or a ``fixed:`` part of a
    segdistill zoo model (built by ``segdistill.latency.zoo``, which needs the segdistill package, torch only)."""
    key = str(key)
    if key.startswith(FIXED_PREFIX):
        try:
            from segdistill.latency.zoo import build_fixed
        except ImportError as e:
            raise LatencyError(
                f"{key} is a fixed part of a segdistill zoo model; measuring it needs the segdistill package "
                f"(torch only: pip install --no-deps PATH_TO_SEGDISTILL_CHECKOUT) ({e})") from None
        return build_fixed(key)
    bk = BlockKey.parse(key)
    return build_block(bk), bk.input_shapes()


def is_free(key: str) -> bool:
    """Keys that cost nothing in a deployed network (the 'zero' op, an identity skip): never measured."""
    if str(key).startswith(FIXED_PREFIX):
        return False
    bk = BlockKey.parse(key)
    return bk.spec.free(bk)


# ============================================================================ the one measurement routine
def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def measure_latency(fn: Callable[[], object], warmup: int = 10, min_runs: int = 50, min_time: float = 0.5,
                    sync: bool | None = None) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls until at least ``min_runs`` were made AND at least
    ``min_time`` seconds passed. Each call is timed with ``time.perf_counter``; with ``sync`` (default: when CUDA is in
    use) ``torch.cuda.synchronize`` runs before each clock read. Returns ``median_ms``, ``p90_ms``, ``mean_ms``,
    ``min_ms``, ``runs`` and ``threads`` (``torch.get_num_threads()``)."""
    sync = _cuda_in_use() if sync is None else sync
    wait = torch.cuda.synchronize if sync else (lambda: None)
    for _ in range(warmup):
        fn()
    wait()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        wait()
        times.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(times)
    return {"median_ms": statistics.median(times), "p90_ms": _percentile(ordered, 90),
            "mean_ms": statistics.fmean(times), "min_ms": ordered[0], "runs": len(times),
            "threads": torch.get_num_threads()}


def measure_interleaved(fns: dict[Hashable, Callable[[], object]], repeats: int = 5, progress: Callable | None = None,
                        **timing) -> dict[Hashable, dict]:
    """Time several callables in ``repeats`` round-robin passes (each pass measures every one of them once with
    :func:`measure_latency` and ``timing``), so that all of them see the same machine states: a CPU whose speed
    drifts, or flips between states, shifts every network alike instead of whichever ran then. Per name: the
    median over passes of the pass medians (``median_ms``), ``fastest_ms`` and ``slowest_ms`` (the spread of the
    machine), every pass (``passes_ms``) and the pooled ``runs``. ``progress(pass_index)`` is called after each pass."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    passes: dict[str, list[float]] = {n: [] for n in fns}
    runs = dict.fromkeys(fns, 0)
    for r in range(repeats):
        for name, fn in fns.items():
            res = measure_latency(fn, **{"sync": False, **timing})
            passes[name].append(res["median_ms"])
            runs[name] += res["runs"]
        if progress is not None:
            progress(r)
    return {n: {"median_ms": statistics.median(t), "fastest_ms": min(t), "slowest_ms": max(t), "passes_ms": t,
                "repeats": repeats, "runs": runs[n], "threads": torch.get_num_threads()} for n, t in passes.items()}


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Fix torch's intra-op thread count for a block of code (None: leave it), restoring it afterwards."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def example_inputs(shapes: Iterable[Sequence[int]], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random batch-1 inputs for (C, H, W) shapes (a leading 1 is added)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn((1, *tuple(s)[-3:]), generator=gen) for s in shapes)


def measure_module(platform: "Platform | str", module: nn.Module, inputs: Sequence[torch.Tensor],
                   threads: int | None = None, warmup: int = 10, min_runs: int = 50, min_time: float = 0.5) -> dict:
    """Latency of ``module(*inputs)`` on ``platform`` with ``threads`` CPU threads (torch's and the runtime's; None
    keeps torch's current count): :func:`measure_latency` on the platform's prepared callable. The result also holds
    the platform's notes on this run (e.g. ``onnx_max_abs_diff``, ``precision``)."""
    plat = get_platform(platform) if isinstance(platform, str) else platform
    reason = plat.available()
    if reason:
        raise LatencyError(f"platform {plat.name} is not available here: {reason}")
    with torch_threads(threads):
        runner = plat.prepare(module.eval(), tuple(inputs), torch.get_num_threads())
        result = measure_latency(runner.fn, warmup=warmup, min_runs=min_runs, min_time=min_time, sync=False)
    return {**result, **runner.info}


def measure_key(key: str, platform: str, threads: int | None = None, warmup: int = 10, min_runs: int = 50,
                min_time: float = 0.5, plugins: Sequence[str] = ()) -> dict:
    """Build the block (or fixed part) of ``key`` and measure it (see :func:`measure_module`)."""
    for p in plugins:
        load_plugin(p)
    module, shapes = build_from_key(key)
    inputs = example_inputs(shapes)
    with torch.no_grad():
        io = sum(x.numel() for x in inputs) + module.eval()(*inputs).numel()
    return {**measure_module(platform, module, inputs, threads, warmup, min_runs, min_time), "io_elems": int(io)}


def run_isolated(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh process (spawned: nothing shared with this one but the arguments), for
    measurements that must not see this process's caches, allocator or thread pools. ``fn`` must be importable."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# ============================================================================ platforms
@dataclass
class Runner:
    """What a platform prepared: ``fn()`` runs the module once on the fixed inputs; ``info`` notes for the result."""

    fn: Callable[[], object]
    info: dict = field(default_factory=dict)


class Platform:
    """A runtime to measure on. Subclass, then ``register_platform(MyPlatform())`` in a file passed with ``--plugin``::

        class OpenVINOCPU(Platform):
            name, description = "openvino-cpu", "OpenVINO CPU plugin, model from ONNX"
            def available(self):
                return None if importlib.util.find_spec("openvino") else "openvino is not installed"
            def prepare(self, module, inputs, threads):
                path = export_onnx_file(module, inputs, tempfile.mkdtemp() + "/m.onnx")
                ...  # compile with threads, return Runner(lambda: compiled(feed))
            def info(self):
                return {"openvino": openvino.__version__}

    ``prepare`` may do any one-time work (export, compile, copy to a device); only ``Runner.fn`` is timed, and it
    must return when the work is finished (synchronise asynchronous devices inside it).
    """

    name: str = ""
    description: str = ""

    def available(self) -> str | None:
        """None when it can run here, else the reason it cannot."""
        return None

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Runner:
        raise NotImplementedError

    def info(self) -> dict:
        """Library versions and device facts recorded in the table."""
        return {}


PLATFORMS: dict[str, Platform] = {}
LOADED_PLUGINS: list[str] = []


def register_platform(platform: Platform, replace: bool = False) -> Platform:
    if not platform.name:
        raise LatencyError(f"{type(platform).__name__} has no name")
    if platform.name in PLATFORMS and not replace:
        raise LatencyError(f"platform {platform.name!r} is registered twice")
    PLATFORMS[platform.name] = platform
    return platform


def get_platform(name: str) -> Platform:
    if name not in PLATFORMS:
        raise LatencyError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)} (add one with --plugin FILE.py "
                           f"that calls register_platform)")
    return PLATFORMS[name]


def load_plugin(spec: str) -> None:
    """Import a platform plug-in: a ``.py`` file path or a module name; it registers itself on import."""
    if spec in LOADED_PLUGINS:
        return
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise LatencyError(f"plug-in file {spec} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_latency_plugin_{len(LOADED_PLUGINS)}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)
    LOADED_PLUGINS.append(spec)


def _no_grad_call(module: nn.Module, inputs: tuple, autocast: torch.dtype | None = None, sync: bool = False):
    def fn():
        amp = torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext()
        with torch.no_grad(), amp:
            out = module(*inputs)
        if sync:
            torch.cuda.synchronize()
        return out

    return fn


MALLOC_MODES = ("steady", "default")
_STEADY_SET: str | None = None  # what steady_malloc() set in this process (mallopt cannot be undone)
_STEADY_TEXT = "glibc steady: M_MMAP_MAX=0, no trim"


def steady_malloc() -> str:
    """Make the C allocator keep and reuse freed memory, as a long-running inference process with jemalloc or tcmalloc
    does; returns what was set (recorded in tables). PyTorch's CPU tensors come straight from ``malloc``; glibc serves
    large ones (above its adaptive mmap threshold, at most 32 MB) by ``mmap`` and returns them on ``free``, so each call
    of a block with big activations pays fresh page faults, and how many depends on what the process allocated before:
    the same block measured 50-190 ms in one process and a steady 42 ms with this (``mbconv:368-320:45x60:k3s1d1e6``,
    2 threads). Here: ``mallopt(M_MMAP_MAX, 0)`` and no trimming (``M_TRIM_THRESHOLD`` 2**31 - 1), the same as
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295`` set before a process starts.
    Process-wide and irreversible, so only measuring code calls it, and only in ``steady`` mode
    (:func:`malloc_mode`); ``SEGDISTILL_MALLOC=default`` leaves the allocator alone. A deployment process that wants
    the figures measured this way calls it once at start-up (or sets the ``GLIBC_TUNABLES`` above)."""
    global _STEADY_SET
    if _STEADY_SET:
        return _STEADY_SET
    if current_malloc_mode() == "default":
        return default_malloc_text()
    if not sys.platform.startswith("linux") or _pyplatform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4  # from malloc.h
    if libc.mallopt(m_mmap_max, 0) != 1 or libc.mallopt(m_trim_threshold, 2 ** 31 - 1) != 1:
        return "default (mallopt refused)"
    _STEADY_SET = _STEADY_TEXT
    return _STEADY_SET


def steady_malloc_applied() -> bool:
    """Whether :func:`steady_malloc` changed this process's allocator (then a ``default`` measurement needs a fresh
    process: see :func:`default_needs_fresh_process`)."""
    return _STEADY_SET is not None


def current_malloc_mode() -> str:
    """The malloc mode torch-cpu measurements use now: ``$SEGDISTILL_MALLOC`` (``steady`` or ``default``), else
    ``steady``. Any other value is an error naming the variable."""
    mode = os.environ.get("SEGDISTILL_MALLOC", "steady") or "steady"
    if mode not in MALLOC_MODES:
        raise LatencyError(f"SEGDISTILL_MALLOC={mode!r} is not a malloc mode; use one of {', '.join(MALLOC_MODES)}")
    return mode


def default_malloc_text() -> str:
    """How the allocator stands when segdistill leaves it alone (``GLIBC_TUNABLES`` named when the process has it)."""
    tunables = os.environ.get("GLIBC_TUNABLES")
    return "default (allocator untouched" + (f", GLIBC_TUNABLES={tunables})" if tunables else ")")


def describe_malloc(mode: str | None = None) -> str:
    """What a torch-cpu measurement in ``mode`` (None: the current one) records as its ``malloc``, without changing
    the allocator."""
    mode = mode or current_malloc_mode()
    if mode == "default":
        return default_malloc_text()
    return _STEADY_SET or _STEADY_TEXT


def default_needs_fresh_process(mode: str) -> bool:
    """True when ``mode`` is ``default`` but this process already set the steady allocator: such a measurement would
    silently be a steady one, so it must run in a fresh process (``run_isolated`` inherits ``SEGDISTILL_MALLOC``)."""
    return mode == "default" and steady_malloc_applied()


@contextlib.contextmanager
def malloc_mode(mode: str | None):
    """Measure torch-cpu in ``mode`` within the block: ``steady`` (:func:`steady_malloc` before timing, the default)
    or ``default`` (glibc as the process has it, what a plain user process gets). Sets ``$SEGDISTILL_MALLOC``, so
    isolated measurement processes inherit it; None keeps the current mode. Restored afterwards."""
    if mode is None:
        yield current_malloc_mode()
        return
    if mode not in MALLOC_MODES:
        raise LatencyError(f"unknown malloc mode {mode!r}; choose one of {', '.join(MALLOC_MODES)}")
    old = os.environ.get("SEGDISTILL_MALLOC")
    os.environ["SEGDISTILL_MALLOC"] = mode
    try:
        yield mode
    finally:
        if old is None:
            os.environ.pop("SEGDISTILL_MALLOC", None)
        else:
            os.environ["SEGDISTILL_MALLOC"] = old


def table_malloc_mode(table: dict) -> str | None:
    """The malloc mode a torch-cpu table was measured in (from ``platform_info.malloc``), None for other platforms."""
    text = (table.get("platform_info") or {}).get("malloc")
    if text is None:
        return None
    return "steady" if text.startswith("glibc steady") else "default"


class TorchCPU(Platform):
    """PyTorch eager on the CPU, fp32. In malloc mode ``steady`` (the default) with :func:`steady_malloc` (large
    tensors reused, not mapped anew per call); in ``default`` the allocator is left as the process has it
    (:func:`malloc_mode`). The mode used is recorded as ``malloc``."""

    name, description = "torch-cpu", "PyTorch eager on the CPU, fp32"

    def prepare(self, module, inputs, threads):
        mode = current_malloc_mode()
        if default_needs_fresh_process(mode):
            raise LatencyError("malloc mode default was asked for, but this process already set the steady allocator "
                               "(mallopt cannot be undone): measure in a fresh process (run_isolated, --isolate)")
        malloc = steady_malloc() if mode == "steady" else default_malloc_text()
        return Runner(_no_grad_call(module.cpu().eval(), tuple(x.cpu() for x in inputs)), {"malloc": malloc})

    def info(self):
        """Versions and the malloc mode measurements will use (described, not applied)."""
        return {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(), "malloc": describe_malloc()}


class TorchCUDA(Platform):
    """PyTorch eager on the GPU: fp32, or fp16 autocast; each call ends with ``torch.cuda.synchronize``."""

    def __init__(self, fp16: bool = False):
        self.fp16 = fp16
        self.name = "torch-cuda-fp16" if fp16 else "torch-cuda"
        self.description = f"PyTorch eager on CUDA, {'fp16 autocast' if fp16 else 'fp32'}, synchronised timing"

    def available(self):
        return None if torch.cuda.is_available() else "CUDA not available (torch.cuda.is_available() is False)"

    def prepare(self, module, inputs, threads):
        gpu = copy.deepcopy(module).cuda().eval()
        xs = tuple(x.cuda() for x in inputs)
        return Runner(_no_grad_call(gpu, xs, torch.float16 if self.fp16 else None, sync=True),
                      {"precision": "fp16 autocast" if self.fp16 else "fp32"})

    def info(self):
        if not torch.cuda.is_available():
            return {"torch": torch.__version__}
        return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "gpu": torch.cuda.get_device_name()}


def export_onnx_file(module: nn.Module, inputs: tuple, path: str, exporter: str = "auto",
                     input_names: Sequence[str] | None = None, output_names: Sequence[str] = ("y",),
                     opset: int | None = None, dynamic_batch: bool = False) -> str:
    """``torch.onnx.export``; returns the exporter used. ``auto``: the dynamo exporter, falling back to the TorchScript
    one with a warning; ``torchscript``: the reverse (much faster to export, for many small blocks); ``dynamo``: dynamo
    only. ``segdistill export`` and the ONNX Runtime platform share it."""
    names = dict(input_names=list(input_names or [f"x{i}" for i in range(len(inputs))]),
                 output_names=list(output_names))
    order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript", "dynamo"]}
    if exporter not in order:
        raise LatencyError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(order)}")
    for i, which in enumerate(order[exporter]):
        try:
            _export_with(which, module, tuple(inputs), path, names, opset, dynamic_batch)
            return which
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other exporter
            if i + 1 == len(order[exporter]):
                raise
            retry = "dynamo=False" if which == "dynamo" else "dynamo=True"
            first = (str(e).strip().splitlines() or [""])[0][:300]  # TorchScript errors carry the whole graph
            warnings.warn(f"{which} ONNX export failed ({type(e).__name__}: {first}); retrying with {retry}")
    raise AssertionError("unreachable")


def _export_with(which: str, module, inputs, path, names, opset, dynamic_batch) -> None:
    first_in, first_out = names["input_names"][0], names["output_names"][0]
    if which == "dynamo":
        dynamic = {first_in: {0: torch.export.Dim("batch")}} if dynamic_batch else None
        torch.onnx.export(module, inputs, path, opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes=dynamic, verbose=False, **names)
        return
    axes = {first_in: {0: "batch"}, first_out: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: H, W are static in the trace
        torch.onnx.export(module, inputs, path, opset_version=opset or 17, dynamo=False, dynamic_axes=axes, **names)


def ort_session(path, threads: int | None = None):
    """An onnxruntime CPU InferenceSession; ``threads`` sets intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxRuntimeCPU(Platform):
    """The module exported to ONNX (``exporter``: auto = dynamo with TorchScript fallback; torchscript is ~50x faster
    to export, for many small blocks), run as an onnxruntime CPU
    session with ``threads`` intra-op threads (ORT's default graph optimisations: BN folding, activation fusion). The
    export is checked: one run of each is compared and a difference over 1e-3 x max(1, |output|) is an error."""

    name, description = "onnxruntime-cpu", "ONNX Runtime, CPUExecutionProvider, fp32"

    def __init__(self, exporter: str | None = None):
        self._exporter = exporter

    @property
    def exporter(self) -> str:
        """The exporter given, else ``$SEGDISTILL_ONNX_EXPORTER`` (inherited by isolated processes), else auto."""
        return self._exporter or os.environ.get("SEGDISTILL_ONNX_EXPORTER", "auto")

    def available(self):
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        return f"{' and '.join(missing)} not installed" if missing else None

    def prepare(self, module, inputs, threads):
        import numpy as np

        module = module.cpu().eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "block.onnx")
            exporter = export_onnx_file(module, inputs, path, self.exporter)
            sess = ort_session(path, threads)
        feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        with torch.no_grad():
            ref = module(*inputs).float().numpy()
        out = sess.run(None, feed)[0]
        if out.shape != ref.shape:
            raise LatencyError(f"ONNX output shape {out.shape} != PyTorch output shape {ref.shape}")
        diff = float(np.abs(out.astype(np.float64) - ref).max()) if ref.size else 0.0
        if diff > 1e-3 * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0):
            raise LatencyError(f"ONNX output differs from PyTorch by {diff:.3g}: the export is wrong, not timed")
        return Runner(lambda: sess.run(None, feed), {"onnx_max_abs_diff": diff, "exporter": exporter})

    def info(self):
        versions = {}
        for mod in ("onnxruntime", "onnx", "torch"):
            try:
                versions[mod] = importlib.import_module(mod).__version__
            except ImportError:
                versions[mod] = None
        return {**versions, "exporter": self.exporter}


for _p in (TorchCPU(), OnnxRuntimeCPU(), TorchCUDA(), TorchCUDA(fp16=True)):
    register_platform(_p)


# ============================================================================ machine facts
def machine_info() -> dict:
    """CPU model, core count, OS and GPU name: the device a table describes."""
    cpu = _pyplatform.processor()
    try:  # platform.processor() is often empty on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu or _pyplatform.machine(), "cpu_count": os.cpu_count(), "machine": _pyplatform.machine(),
            "os": _pyplatform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def library_versions() -> dict:
    """python, torch, onnxruntime (None when absent) and CUDA versions."""
    versions = {"python": _pyplatform.python_version(), "torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = None
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    return versions


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ============================================================================ building a table
def progress_bar(items, desc: str, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, disable=not enabled, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a segdistill dependency, maybe absent on a device
        return items


def new_table(platform: str, threads: int, timing: dict | None = None) -> dict:
    """An empty table (format in ``segdistill/latency/lut.py``) for ``platform`` measured with ``threads`` threads."""
    plat = get_platform(platform)
    return {
        "format": TABLE_FORMAT, "version": TABLE_VERSION, "platform": platform, "platform_info": plat.info(),
        "threads": int(threads), "timing": {**DEFAULT_TIMING, **(timing or {})}, "device": machine_info(),
        "versions": library_versions(), "date": now_iso(), "units": "ms", "built_for": [], "entries": {},
    }


def measure_into(table: dict, keys: Iterable[str], isolate: bool = False, progress: bool = True,
                 plugins: Sequence[str] = ()) -> list[str]:
    """Measure every key not yet in ``table["entries"]`` with the table's platform, threads and timing; returns the
    keys measured. Free keys (the zero op) get 0 ms without a measurement."""
    todo = [k for k in dict.fromkeys(str(k) for k in keys) if k not in table["entries"]]
    timing = table["timing"]
    mode = table_malloc_mode(table)  # a torch-cpu table is extended in the malloc mode it was built in
    isolate = isolate or bool(mode and default_needs_fresh_process(mode))
    with malloc_mode(mode):
        _measure_todo(table, todo, timing, isolate, progress, plugins)
    if todo:
        table["date"] = now_iso()
    return todo


def _measure_todo(table: dict, todo: list[str], timing: dict, isolate: bool, progress: bool, plugins) -> None:
    for key in progress_bar(todo, f"measuring on {table['platform']}", progress and len(todo) > 1):
        if is_free(key):
            table["entries"][key] = {"median_ms": 0.0, "p90_ms": 0.0, "runs": 0, "io": 0, "free": True}
            continue
        args = (key, table["platform"], table["threads"], timing["warmup"], timing["min_runs"], timing["min_time"])
        res = run_isolated(measure_key, *args, plugins=list(plugins) or list(LOADED_PLUGINS)) if isolate else \
            measure_key(*args)
        entry = {n: round(float(res[n]), 5) for n in ("median_ms", "p90_ms", "min_ms")}
        entry["runs"], entry["io"] = int(res["runs"]), res["io_elems"]
        table["entries"][key] = entry


def check_table_malloc(table: dict, mode: str | None, source) -> None:
    """Refuse to extend a torch-cpu table measured in another malloc mode than ``mode`` (None: no mode asked)."""
    have = table_malloc_mode(table)
    if mode and have and have != mode:
        raise LatencyError(f"{source} was measured with malloc {have}, not {mode}; its entries would mix both. "
                           f"Use --malloc {have}, or another output")


def write_json_atomic(obj: dict, path) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (no half-written table on a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


def read_blocks_file(path) -> list[str]:
    """Keys of a blocks file written by ``segdistill lut blocks`` (or a plain JSON list of keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatencyError(f"cannot read blocks file {path}: {e}") from None
    if isinstance(data, dict):
        if data.get("format") != BLOCKS_FORMAT:
            raise LatencyError(f"{path} is not a blocks file (format {data.get('format')!r}, expected {BLOCKS_FORMAT})")
        data = data.get("keys", [])
    if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
        raise LatencyError(f"{path}: expected a list of block keys")
    return data


def main(argv=None) -> int:
    """Build a table on this device from a blocks file; no segdistill needed for library blocks."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--blocks", required=True, help="blocks.json from `segdistill lut blocks` (or a JSON list of keys)")
    p.add_argument("--platform", required=True,
                   help="torch-cpu, onnxruntime-cpu, torch-cuda, torch-cuda-fp16, or a plug-in's")
    p.add_argument("--out", required=True, help="the table to write (an existing one for the same platform and threads "
                                                "is extended: only missing keys are measured)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--warmup", type=int, default=DEFAULT_TIMING["warmup"])
    p.add_argument("--runs", type=int, default=DEFAULT_TIMING["min_runs"], help="minimum timed runs per block")
    p.add_argument("--min-time", type=float, default=DEFAULT_TIMING["min_time"], help="seconds of timed runs per block")
    p.add_argument("--isolate", action="store_true", help="each measurement in its own process")
    p.add_argument("--plugin", action="append", default=[], help="a .py file or module registering a Platform")
    p.add_argument("--malloc", choices=MALLOC_MODES, default=None,
                   help="torch-cpu: steady (mallopt keeps freed memory; default) or default (allocator untouched)")
    args = p.parse_args(argv)
    try:
        for spec in args.plugin:
            load_plugin(spec)
        keys = read_blocks_file(args.blocks)
        timing = {"warmup": args.warmup, "min_runs": args.runs, "min_time": args.min_time}
        with malloc_mode(args.malloc):
            table = new_table(args.platform, args.threads, timing)
        if Path(args.out).is_file():
            old = json.loads(Path(args.out).read_text())
            same = (old.get("format"), old.get("platform"), old.get("threads")) == \
                (TABLE_FORMAT, args.platform, args.threads)
            if not same:
                raise LatencyError(f"{args.out} exists and is not a {args.platform} table with {args.threads} threads; "
                                   "choose another --out")
            check_table_malloc(old, table_malloc_mode(table), args.out)
            table = old
        done = measure_into(table, keys, isolate=args.isolate)
        write_json_atomic(table, args.out)
    except LatencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"measured {len(done)} of {len(keys)} keys on {args.platform} ({args.threads} threads); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
