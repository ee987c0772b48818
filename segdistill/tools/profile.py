"""Model cost: parameters, FLOPs and latency, measured as the benchmark protocol says.

* **FLOPs** come from ``torch.utils.flop_counter.FlopCounterMode`` (torch's own counter), in eval mode, for one
  forward pass at ``input_shape``. It counts matrix products and convolutions with one multiply-add = 2 FLOPs;
  element-wise ops, normalisation, pooling and interpolation are not counted (as in most papers' tables).
  **MACs = FLOPs / 2** are the multiply-adds counted once: that is the number the protocol reports as "FLOPs
  (multiply-adds counted once)". Both are in the report, named.
* **Latency** is :func:`measure_latency` (the one routine the project shares, with the latency tables of
  ``segdistill lut``: it lives in ``segdistill/latency/standalone.py``): warm-up, then at least ``min_runs`` timed
  runs and at least ``min_time`` seconds; median and p90 in milliseconds. Batch 1, eval mode, no grad. Each platform
  is a plug-in of that module (``torch-cpu``, ``onnxruntime-cpu``, ``torch-cuda``, ``torch-cuda-fp16``, or a
  registered one). What is timed is :class:`~segdistill.tools.export.DeployModel`: the network plus the bilinear
  upsampling to the input size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import LatencyError
from ..latency import standalone as latency_core
from ..latency.standalone import measure_latency  # noqa: F401  (the one routine; re-exported for callers)
from ..models.layers import count_parameters as count_params  # one counter for the project
from ..models.output import deploy_copy

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


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 180, 240),
    platforms: Sequence[str] = PLATFORMS,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    min_time: float = 0.5,
    malloc: str | None = None,
) -> dict:
    """Params, FLOPs/MACs and per-platform latency of ``model`` (left untouched: a copy is profiled).

    ``platforms``: ``torch-cpu`` (eager fp32), ``onnxruntime-cpu`` (exported to a temporary ONNX file,
    CPUExecutionProvider, intra-op threads = the torch thread count) and ``torch-cuda`` (fp32, plus
    ``torch-cuda-fp16`` with fp16 autocast; skipped with a reason when there is no GPU). ``threads`` sets torch's CPU
    thread count for the run (restored afterwards); None keeps the current one. ``runs`` is the minimum number of
    timed runs. A platform that fails is reported as ``{"error": message}`` rather than aborting the profile.
    ``malloc``: ``steady`` (torch-cpu measured after ``standalone.steady_malloc()``, which keeps freed memory) or
    ``default`` (the allocator as this process has it, what a plain user process gets); None: ``$SEGDISTILL_MALLOC``,
    else ``steady``.
    ``steady`` cannot be undone in a process, so ``default`` asked for after it runs the profile in a fresh process.
    """
    unknown = [p for p in platforms if p not in latency_core.PLATFORMS]
    if unknown:
        raise ValueError(f"unknown platforms {sorted(unknown)}; known: {', '.join(latency_core.PLATFORMS)}")
    with latency_core.malloc_mode(malloc) as mode:
        if latency_core.default_needs_fresh_process(mode):
            return _profile_fresh(model, input_shape, platforms, warmup, runs, threads, min_time)
        result = _profile(model, input_shape, platforms, warmup, runs, threads, min_time)
    result["malloc"] = mode
    result["malloc_detail"] = next((lat["malloc"] for lat in result["latency"].values() if "malloc" in lat),
                                   latency_core.describe_malloc(mode))
    return result


def _profile_fresh(model, *args) -> dict:
    """:func:`profile_model` with malloc ``default`` in a fresh (spawned) process, the model pickled to it."""
    try:
        result = latency_core.run_isolated(profile_model, model, *args, malloc="default")
    except Exception as e:  # noqa: BLE001 - pickling or spawning failed: say what to do instead
        raise LatencyError(f"--malloc default: this process already set the steady allocator (mallopt cannot be undone) "
                           f"and profiling in a fresh process failed ({type(e).__name__}: {e}); run `segdistill "
                           "profile --malloc default` in a new process") from e
    result["malloc_process"] = "fresh (this process had set the steady allocator)"
    return result


def _profile(model, input_shape, platforms, warmup, runs, threads, min_time) -> dict:
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        deploy = deploy_copy(model)
        shape = tuple(int(s) for s in input_shape)
        cost = count_flops(deploy.model, shape)
        timing = dict(warmup=warmup, min_runs=runs, min_time=min_time)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        latency: dict[str, dict] = {}
        # torch-cuda stands for both CUDA precisions, as before
        names = [n for p in platforms for n in (("torch-cuda", "torch-cuda-fp16") if p == "torch-cuda" else (p,))]
        for name in dict.fromkeys(names):
            plat = latency_core.get_platform(name)
            reason = plat.available()
            if reason:
                latency[name] = {"skipped": reason}
                continue
            try:
                latency[name] = latency_core.measure_module(plat, deploy, (x,), torch.get_num_threads(), **timing)
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
            "versions": latency_core.library_versions(),
            "date": latency_core.now_iso(),
            "machine": _machine(),
        }
    finally:
        torch.set_num_threads(old_threads)


def _machine() -> dict:
    """CPU model, core count, OS (``platform``) and GPU name, for the report."""
    info = latency_core.machine_info()
    return {"cpu": info["cpu"], "cpu_count": info["cpu_count"], "platform": info["os"],
            **({"gpu": info["gpu"]} if "gpu" in info else {})}


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
        f"malloc       {result.get('malloc_detail') or result.get('malloc', 'steady')} (torch-cpu; --malloc "
        "steady|default)",
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
