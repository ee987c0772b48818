"""``segdistill demo``: the whole path on built-in synthetic street scenes, in a few minutes on 2 CPU cores.

1. train a small teacher and a smaller student with the one trainer (nothing is downloaded: the data is drawn
   procedurally, deterministic by seed);
2. distil the same student from the teacher (same recipe and budget, KD terms of ``DEMO_KD`` with the teacher-output
   cache), so the report compares the student with and without distillation;
3. evaluate all three on the synthetic val split (one confusion matrix over the split);
4. profile the distilled student (parameters, FLOPs, latency on torch-cpu and onnxruntime-cpu) and export it to
   ONNX, checked against PyTorch;
5. write ``report.md`` with training curves and sample predictions (PNG) to the run folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..config import Config, apply_overrides, save_config
from ..data import build_dataset
from ..engine.checkpoint import build_from_checkpoint
from ..engine.evaluate import evaluate
from ..engine.hooks import build_hooks
from ..engine.metrics import format_table
from ..engine.trainer import Trainer
from .export import export_onnx
from .profile import format_profile, profile_model

# (name, width, output stride): a DeepLabV3+ teacher and a light real-time student, sized for 2 CPU cores
TEACHER = ("deeplabv3plus_resnet18", 0.5, 16)
STUDENT = ("lraspp_mobilenetv2", 0.5, 16)
# the distilled student's KD terms (distill.* keys): pixel-wise KD (SKD's weight 10) and CWD on logits, from the teacher cache
DEMO_KD = ["distill.pixel.weight=10", "distill.cwd.weight=3", "distill.cache=auto"]


def demo_config(out_dir: Path, role: str, model: tuple[str, float, int], iters: int, fast: bool) -> Config:
    cfg = Config()
    cfg.data.name = "synthetic"
    cfg.data.synthetic_size = [96, 128]
    cfg.data.synthetic_train = 32 if fast else 160
    cfg.data.synthetic_val = 8 if fast else 24
    cfg.data.batch_size = 8
    cfg.data.scale_range = [0.75, 1.25]
    cfg.data.crop_size = [96, 128]
    cfg.data.jitter = 0.2
    cfg.model.name, cfg.model.width_mult, cfg.model.output_stride = model
    cfg.optim.name = "adamw"
    cfg.optim.lr = 3e-3
    cfg.optim.weight_decay = 1e-4
    cfg.optim.warmup_iters = max(iters // 20, 1)
    cfg.optim.clip_grad = 5.0
    cfg.train.iters = iters
    cfg.train.val_interval = max(iters // 4, 1)
    cfg.train.ckpt_interval = max(iters // 4, 1)
    cfg.train.log_interval = max(iters // 40, 1)
    cfg.train.out_dir = str(out_dir / role)
    cfg.train.progress = not fast
    return cfg


def run_demo(out_dir: str | Path = "runs/demo", fast: bool = False, overrides: list[str] | None = None) -> dict:
    from .. import viz
    from .._optional import require

    for mod, extra in (("matplotlib", "plot"), ("onnxruntime", "onnx"), ("onnxscript", "onnx")):
        require(mod, extra, "segdistill demo")  # fail before training, not minutes in

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    iters = 6 if fast else 400
    runs = {}
    for role, model in (("teacher", TEACHER), ("student", STUDENT), ("distilled", STUDENT)):
        cfg = apply_overrides(demo_config(out, role, model, iters, fast), overrides)
        if role == "distilled":
            teacher = Path(runs["teacher"]["cfg"].train.out_dir) / "best.pt"
            cfg = apply_overrides(cfg, [f"distill.teacher={teacher}", *DEMO_KD])
        print(f"\n== {role}: {cfg.model.name} (width {cfg.model.width_mult}), {cfg.train.iters} iterations on synthetic data")
        t = time.perf_counter()
        Trainer(cfg, build_hooks(cfg)).train()
        runs[role] = {"cfg": cfg, "train_s": time.perf_counter() - t}

    # evaluate the best checkpoints on the val split
    val = build_dataset(runs["student"]["cfg"].data, "val", train=False)
    for role, r in runs.items():
        model, _ = build_from_checkpoint(Path(r["cfg"].train.out_dir) / "best.pt")
        r["model"] = model
        r["metrics"] = evaluate(model, val, r["cfg"].eval, torch.device("cpu"), val.num_classes, val.ignore_index, progress=False)
        print(f"\n{role} ({r['cfg'].model.name}) on synthetic val:\n{format_table(r['metrics'], val.class_names)}")

    # profile and export the distilled student (the product; same architecture as the plain one)
    student = runs["distilled"]["model"]
    shape = (1, 3, *runs["student"]["cfg"].data.synthetic_size)
    prof = profile_model(student, shape, platforms=("torch-cpu", "onnxruntime-cpu"), runs=50, warmup=5)
    print("\n" + format_profile(prof))
    exp = export_onnx(student, out / "student.onnx", shape)
    print(f"exported {exp['path']}: max |onnx - torch| = {exp['max_abs_diff']:.3g}")

    # plots and report
    for role, r in runs.items():
        viz.plot_curves(Path(r["cfg"].train.out_dir) / "metrics.jsonl", ["loss", "val/miou"], out / f"{role}_curves.png")
    viz.plot_curves(Path(runs["distilled"]["cfg"].train.out_dir) / "metrics.jsonl", ["ce", "kd_pixel", "kd_cwd"],
                    out / "distilled_kd_terms.png")
    samples = [val[i] for i in range(min(4, len(val)))]
    images = torch.stack([s["image"] for s in samples])
    mean, std = runs["student"]["cfg"].data.mean, runs["student"]["cfg"].data.std
    with torch.inference_mode():
        from ..models import upsample_logits

        preds = {
            role: upsample_logits(r["model"](images).logits, images.shape[-2:]).argmax(1) for role, r in runs.items()
        }
    for role in runs:
        viz.prediction_grid(
            [viz.denormalize(s["image"], mean, std) for s in samples], [s["mask"].numpy() for s in samples],
            [p.numpy() for p in preds[role]], val.palette, out / f"{role}_predictions.png", class_names=val.class_names,
        )
    total = time.perf_counter() - t0
    command = " ".join(["segdistill demo --out-dir", str(out), *(["--fast"] if fast else []), *(overrides or [])])
    summary = write_report(out, runs, prof, exp, val.class_names, total, command)
    print(f"\ndemo finished in {total:.0f} s; report: {out / 'report.md'}")
    return summary


def write_report(out: Path, runs: dict, prof: dict, exp: dict, class_names, total_s: float, command: str) -> dict:
    rows = []
    for role, r in runs.items():
        m = r["metrics"]
        rows.append(
            f"| {role} | {r['cfg'].model.name} (width {r['cfg'].model.width_mult}) | {100 * m['miou']:.2f} | "
            f"{100 * m['pixel_acc']:.2f} | {r['train_s']:.0f} |"
        )
    per_class = "\n".join(
        f"| {name} | " + " | ".join(f"{100 * r['metrics']['iou'][i]:.1f}" for r in runs.values()) + " |"
        for i, name in enumerate(class_names)
    )
    lat = "\n".join(
        f"| {p} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['runs']} | {v['threads']} |"
        for p, v in prof["latency"].items()
        if "median_ms" in v
    )
    cfg = runs["student"]["cfg"]
    gain = 100 * (runs["distilled"]["metrics"]["miou"] - runs["student"]["metrics"]["miou"])
    kd = " ".join(k for k in DEMO_KD if not k.startswith("distill.cache"))
    text = f"""# segdistill demo report

Built-in synthetic street scenes ({cfg.data.synthetic_size[0]}x{cfg.data.synthetic_size[1]}, {cfg.data.synthetic_train} train /
{cfg.data.synthetic_val} val images, seed {cfg.data.seed}), {cfg.train.iters} iterations per model at batch {cfg.data.batch_size},
train seed {cfg.train.seed}. Whole run: {total_s:.0f} s. Command: `{command}`.

## Accuracy (val, one confusion matrix over the split)

| role | model | mIoU % | pixel acc % | train s |
|---|---|---|---|---|
{chr(10).join(rows)}

| class | {' | '.join(runs)} |
|---|{'---|' * len(runs)}
{per_class}

**Distillation:** the same student trained with the teacher ({kd}, teacher logits from the teacher-output cache)
reaches {100 * runs['distilled']['metrics']['miou']:.2f} mIoU against {100 * runs['student']['metrics']['miou']:.2f} without it
({gain:+.2f}), one seed each: on this small synthetic set a difference of a point or two is within seed noise; see
benchmarks/RESULTS.md for CamVid with two seeds.

![teacher curves](teacher_curves.png) ![student curves](student_curves.png) ![distilled curves](distilled_curves.png)
![distilled KD terms](distilled_kd_terms.png)

Sample predictions (image | ground truth | prediction):

![teacher](teacher_predictions.png)
![student](student_predictions.png)
![distilled](distilled_predictions.png)

## Distilled student cost

Parameters {prof['params'] / 1e6:.3f} M, {prof['macs'] / 1e9:.3f} GMACs (multiply-adds counted once) at input {prof['input_shape']}.

| platform | median ms | p90 ms | runs | threads |
|---|---|---|---|---|
{lat}

ONNX: `{Path(exp['path']).name}`, largest |ONNX Runtime - PyTorch| difference {exp['max_abs_diff']:.3g},
argmax agreement {100 * exp['argmax_agreement']:.2f}%.
"""
    (out / "report.md").write_text(text)
    summary = {
        role: {"model": r["cfg"].model.name, "miou": r["metrics"]["miou"], "train_s": r["train_s"]} for role, r in runs.items()
    }
    summary.update(profile=prof, export=exp, total_s=total_s)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    save_config(runs["student"]["cfg"], out / "student_config.yaml")
    return summary
