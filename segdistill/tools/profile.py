"""Model cost: parameters, FLOPs and latency, measured as the benchmark protocol says.

* **FLOPs** come from ``torch.utils.flop_counter.FlopCounterMode`` (torch's own counter), in eval mode, for one
  forward pass at ``input_shape``. It counts matrix products and convolutions with one multiply-add = 2 FLOPs;
  element-wise ops, normalisation, pooling and interpolation are not counted (as in most papers' tables).
  **MACs = FLOPs / 2** are the multiply-adds counted once: that is the number the protocol reports as "FLOPs
  (multiply-adds counted once)". Both are in the report, named.
* **Latency** is :func:`measure_latency` (the one routine the project shares): warm-up, then at least ``min_runs``
  timed runs and at least ``min_time`` seconds; median and p90 in milliseconds. Batch 1, eval mode, no grad. What is
  timed is :class:`~segdistill.tools.export.DeployModel`: the network plus the bilinear upsampling to the input size.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.layers import count_parameters as count_params  # one counter for the project
from .export import _deploy_copy, export_onnx, ort_session

PLATFORMS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda")


def count_inference_params(model: nn.Module, input_shape: Sequence[int] = (1, 3, 180, 240)) -> int:
    """Parameters of the modules that an eval-mode forward pass actually runs: training-only parts such as an aux
    head are left out. (A parameter read directly by a module that runs is counted with that module.)"""
    used: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, args: used.add(id(mod))) for m in model.modules()]
    try:
        count_flops(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    params = {id(p): p for m in model.modules() if id(m) in used for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in params.values())


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 180, 240)) -> dict:
    """``{"flops", "macs"}`` of one eval-mode forward pass on a zero input of ``input_shape``.

    FLOPs from torch's FlopCounterMode (one multiply-add = 2 FLOPs); MACs = FLOPs // 2, the multiply-adds counted
    once. The model's train/eval mode is restored afterwards."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}


def _sync() -> None:
    """Wait for queued CUDA work (only when CUDA is in use), so that the clock measures finished work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_latency(fn: Callable[[], object], warmup: int = 10, min_runs: int = 50, min_time: float = 0.5) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls until at least ``min_runs`` were made AND at least
    ``min_time`` seconds passed. Each call is timed with ``time.perf_counter``; when CUDA is in use,
    ``torch.cuda.synchronize`` runs before each clock read. Returns ``median_ms``, ``p90_ms``, ``mean_ms``,
    ``min_ms``, ``runs`` and ``threads`` (``torch.get_num_threads()``)."""
    for _ in range(warmup):
        fn()
    _sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "runs": len(times),
        "threads": torch.get_num_threads(),
    }


def _torch_fn(deploy: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> Callable[[], object]:
    """A no-argument callable running ``deploy(x)`` without autograd (optionally under CUDA autocast)."""

    def fn():
        amp = torch.autocast("cuda", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with torch.no_grad(), amp:
            return deploy(x)

    return fn


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "CUDA not available (torch.cuda.is_available() is False)"
    return None


def _machine() -> dict:
    """CPU model, core count, OS and GPU name, for the report."""
    cpu = platform.processor()
    try:  # platform.processor() is often empty on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu or platform.machine(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 180, 240),
    platforms: Sequence[str] = PLATFORMS,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    min_time: float = 0.5,
) -> dict:
    """Params, FLOPs/MACs and per-platform latency of ``model`` (left untouched: a copy is profiled).

    ``platforms``: ``torch-cpu`` (eager fp32), ``onnxruntime-cpu`` (exported to a temporary ONNX file,
    CPUExecutionProvider, intra-op threads = the torch thread count) and ``torch-cuda`` (fp32, plus
    ``torch-cuda-fp16`` with fp16 autocast; skipped with a reason when there is no GPU). ``threads`` sets torch's CPU
    thread count for the run (restored afterwards); None keeps the current one. ``runs`` is the minimum number of
    timed runs. A platform that fails is reported as ``{"error": message}`` rather than aborting the profile.
    """
    unknown = set(platforms) - set(PLATFORMS) - {"torch-cuda-fp16"}
    if unknown:
        raise ValueError(f"unknown platforms {sorted(unknown)}; known: {', '.join(PLATFORMS)}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        deploy = _deploy_copy(model)
        shape = tuple(int(s) for s in input_shape)
        cost = count_flops(deploy.model, shape)
        timing = dict(warmup=warmup, min_runs=runs, min_time=min_time)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        latency: dict[str, dict] = {}
        for name in platforms:
            runners = {"torch-cpu": _latency_torch_cpu, "onnxruntime-cpu": _latency_ort_cpu}
            try:
                if name in runners:
                    latency[name] = runners[name](deploy, x, timing)
                else:
                    latency.update(_latency_cuda(deploy, x, timing, fp16_only=name == "torch-cuda-fp16"))
            except Exception as e:  # noqa: BLE001 - report and go on with the other platforms
                latency[name] = {"error": f"{type(e).__name__}: {e}"}
        return {
            "model": getattr(model, "model_name", type(model).__name__),
            "input_shape": list(shape),
            "params": count_params(model),
            "params_inference": count_inference_params(deploy.model, shape),
            "flops": cost["flops"],
            "macs": cost["macs"],
            "flops_note": "FLOPs from torch.utils.flop_counter (1 multiply-add = 2 FLOPs); MACs = FLOPs/2 = "
                          "multiply-adds counted once; element-wise ops, norms and interpolation not counted",
            "latency": latency,
            "warmup": warmup,
            "min_runs": runs,
            "threads": torch.get_num_threads(),
            "versions": _versions(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": _machine(),
        }
    finally:
        torch.set_num_threads(old_threads)


def _latency_torch_cpu(deploy: nn.Module, x: torch.Tensor, timing: dict) -> dict:
    return measure_latency(_torch_fn(deploy, x), **timing)


def _latency_ort_cpu(deploy: nn.Module, x: torch.Tensor, timing: dict) -> dict:
    """Export to a temporary ONNX file (parity-checked), then time onnxruntime with torch's thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(deploy, Path(tmp) / "model.onnx", input_shape=tuple(x.shape))
        sess = ort_session(report["path"], threads=torch.get_num_threads())
        feed = {"image": x.numpy()}
        result = measure_latency(lambda: sess.run(None, feed), **timing)
    result["onnx_max_abs_diff"] = report["max_abs_diff"]
    return result


def _latency_cuda(deploy: nn.Module, x: torch.Tensor, timing: dict, fp16_only: bool = False) -> dict:
    """``torch-cuda`` (fp32) and ``torch-cuda-fp16`` (fp16 autocast) entries, or both skipped with the reason."""
    names = ["torch-cuda-fp16"] if fp16_only else ["torch-cuda", "torch-cuda-fp16"]
    reason = _cuda_skip_reason()
    if reason:
        return {n: {"skipped": reason} for n in names}
    gpu_model, xg = _deploy_copy(deploy).cuda(), x.cuda()
    out = {}
    for n in names:
        dtype = torch.float16 if n.endswith("fp16") else None
        out[n] = measure_latency(_torch_fn(gpu_model, xg, dtype), **timing)
        out[n]["precision"] = "fp16 autocast" if dtype else "fp32"
    return out


def _versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = None
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    return versions


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:g}"


def format_profile(result: dict) -> str:
    """Readable text of a :func:`profile_model` result."""
    lines = [
        f"model        {result['model']}",
        f"input        {'x'.join(map(str, result['input_shape']))}",
        f"params       {_human(result['params'])} ({result['params']:,}; "
        f"{result['params_inference']:,} used at inference)",
        f"FLOPs        {_human(result['flops'])} ({result['flops']:,}; 1 multiply-add = 2 FLOPs)",
        f"MACs         {_human(result['macs'])} (multiply-adds counted once)",
        f"threads      {result['threads']} torch CPU threads",
        f"latency      batch 1, median / p90 over >= {result['min_runs']} runs after {result['warmup']} warm-up runs",
    ]
    for name, lat in result["latency"].items():
        if "median_ms" in lat:
            lines.append(f"  {name:<17} {lat['median_ms']:9.3f} ms / {lat['p90_ms']:9.3f} ms  ({lat['runs']} runs)")
        else:
            lines.append(f"  {name:<17} {'skipped' if 'skipped' in lat else 'failed'}: "
                         f"{lat.get('skipped') or lat.get('error')}")
    v, m = result["versions"], result["machine"]
    lines += [
        f"versions     torch {v['torch']}, onnxruntime {v.get('onnxruntime')}, python {v['python']}",
        f"machine      {m['cpu']} ({m['cpu_count']} CPUs){', ' + m['gpu'] if 'gpu' in m else ''}",
        f"date         {result['date']}",
    ]
    return "\n".join(lines)
