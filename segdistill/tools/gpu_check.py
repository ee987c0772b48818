"""The GPU check: every CUDA path of segdistill, exercised once on tiny synthetic data, with a JSON summary.

Run it whenever a GPU machine is at hand (``bash scripts/gpu_check.sh [OUT_DIR]``, a few minutes), and copy the
summary's figures into ``benchmarks/RESULTS.md``. Checks, in order (each one is independent: a failure is recorded
with its error and the next check runs):

* ``env``: torch and CUDA versions, the GPUs;
* ``train_bf16`` / ``train_fp16``: a few training steps under AMP (``train.amp``), loss finite, step time;
* ``distill_cache``: distillation of a student from the bf16 run's checkpoint with the teacher-output cache;
* ``profile_cuda``: ``profile`` on torch-cuda (median / p90 latency of a zoo model);
* ``lut_cuda`` / ``lut_cuda_fp16``: ``lut build`` of a model's blocks on torch-cuda and torch-cuda-fp16;
* ``ddp_nccl``: 2-process training under torchrun with NCCL (only with 2 or more GPUs);
* ``search_step``: a few steps of architecture search (once ``segdistill.search.hook`` exists).

``--device cpu`` runs the same paths on the CPU (AMP then falls back to fp32 with a warning, CUDA-only checks are
skipped): that is how the tests keep this script working on machines without a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from ..config import Config, save_config
from ..engine.hooks import build_hooks
from ..engine.trainer import Trainer


def tiny_config(out_dir: Path, device: str, iters: int = 4) -> Config:
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [96, 128], 16, 4, 4
    d.crop_size = [96, 128]
    cfg.model.name, cfg.model.width_mult = "lraspp_mobilenetv2", 0.5
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress = iters, iters, iters, 1, False
    t.device, t.out_dir = device, str(out_dir)
    return cfg


def _train(cfg: Config) -> dict:
    t0 = time.perf_counter()
    result = Trainer(cfg, build_hooks(cfg)).train()
    secs = time.perf_counter() - t0
    losses = [json.loads(ln)["loss"] for ln in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in ln]
    if not all(torch.isfinite(torch.tensor(losses))):
        raise RuntimeError(f"non-finite loss: {losses}")
    return {"iters": cfg.train.iters, "seconds": round(secs, 2), "first_loss": losses[0], "last_loss": losses[-1],
            "best_miou": result["best_miou"]}


def run_checks(out_dir: Path, device: str = "cuda") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible (use --device cpu to exercise the paths on the CPU)")
    n_gpus = torch.cuda.device_count() if cuda else 0
    results: dict = {}

    def check(name: str, fn, skip: str | None = None):
        if skip:
            results[name] = {"status": "skipped", "why": skip}
        else:
            t0 = time.perf_counter()
            try:
                results[name] = {"status": "ok", **(fn() or {})}
            except Exception as e:  # recorded, and the next check runs
                results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc()[-2000:]}
            results[name]["wall_s"] = round(time.perf_counter() - t0, 2)
        print(f"gpu_check: {name}: {results[name]['status']}", flush=True)

    check("env", lambda: {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
                          "gpus": [torch.cuda.get_device_name(i) for i in range(n_gpus)]})

    def train_amp(amp):
        cfg = tiny_config(out_dir / f"train_{amp}", device)
        cfg.train.amp = amp
        return _train(cfg)

    check("train_bf16", lambda: train_amp("bf16"))
    check("train_fp16", lambda: train_amp("fp16"))

    def distill():
        teacher = out_dir / "train_bf16" / "best.pt"
        cfg = tiny_config(out_dir / "distill_cache", device)
        cfg.model.width_mult = 0.25
        cfg.distill.teacher, cfg.distill.cache = str(teacher), "auto"
        cfg.distill.pixel.weight = 1.0
        cfg.train.amp = "bf16"
        return _train(cfg)

    check("distill_cache", distill)

    def profile():
        from ..models import build_model
        from .profile import profile_model

        model = build_model("lraspp_mobilenetv2", 11)
        res = profile_model(model, (1, 3, 360, 480), platforms=("torch-cuda",), runs=50, warmup=10)
        return {"model": "lraspp_mobilenetv2", "input": [1, 3, 360, 480], "latency": res["latency"]}

    check("profile_cuda", profile, None if cuda else "needs CUDA")

    def lut(platform):
        from ..cli import main

        path = out_dir / f"lut-{platform}.json"
        main(["lut", "build", "--platform", platform, "--input", "3x360x480", "--model", "lraspp_mobilenetv2",
              "--out", str(path), "--quiet"])
        table = json.loads(path.read_text())
        return {"table": str(path), "entries": len(table["entries"])}

    check("lut_cuda", lambda: lut("torch-cuda"), None if cuda else "needs CUDA")
    check("lut_cuda_fp16", lambda: lut("torch-cuda-fp16"), None if cuda else "needs CUDA")

    def ddp():
        cfg = tiny_config(out_dir / "ddp_nccl", "cuda")
        save_config(cfg, out_dir / "ddp_nccl.yaml")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "segdistill.cli", "train",
               str(out_dir / "ddp_nccl.yaml")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        return {"stdout_tail": proc.stdout[-300:]}

    check("ddp_nccl", ddp, None if n_gpus >= 2 else f"needs 2 GPUs ({n_gpus} here)")

    has_search = importlib.util.find_spec("segdistill.search.hook") is not None

    def search():
        cfg = tiny_config(out_dir / "search_step", device)
        cfg.search.space = "chain"
        cfg.search.input = [1, 3, 96, 128]
        return _train(cfg)

    check("search_step", search, None if has_search else "the search (segdistill.search.hook) is not in this version")

    summary = {"device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checks": results,
               "ok": all(r["status"] != "failed" for r in results.values())}
    (out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"gpu_check: wrote {out_dir / 'gpu_check.json'} ({'all ran' if summary['ok'] else 'FAILURES'})")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="runs/gpu_check")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (same paths, CUDA-only checks skipped)")
    args = p.parse_args(argv)
    summary = run_checks(Path(args.out_dir), args.device)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
