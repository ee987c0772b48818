"""Does distillation help on the demo's own data? Student alone vs distilled on ``segdistill demo``'s settings (issue 13).

Every run uses :func:`segdistill.tools.demo.demo_config` (synthetic street scenes at 96x128, 160 train / 24 val
images, batch 8, AdamW 3e-3, the demo's teacher DeepLabV3+-ResNet-18 x0.5 and student LR-ASPP-MobileNetV2 x0.5),
1 torch thread, and varies only what a row names: the teacher's iterations (one teacher per count, train seed 0),
the student's iterations, the KD recipe, and optionally the student model. Students run for each ``--seeds``
(``train.seed``: initialisation and data order; the synthetic images are the same for every seed). A row ``none``
ignores the teacher, so the student-alone runs of one student budget serve every teacher.

    python benchmarks/demo_kd.py --rows t300_s300_none,t300_s300_demo --seeds 0,1,2   # the demo's own settings
    python benchmarks/demo_kd.py --list                                               # every row
    python benchmarks/demo_kd.py --report                                             # Markdown table

Results: OUT_DIR/<row>/seed<k>/result.json, teachers OUT_DIR/teacher_it<N>/ (default OUT_DIR ../runs/demo_kd). A
finished run is skipped. The gain column compares the mean of the distilled seeds with the mean of the same student
budget's alone seeds; "paired" gives distilled - alone per seed (same initialisation and data order).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {
    "none": ("student alone", []),
    "demo": ("pixel KD 10 + CWD 3 (the demo's DEMO_KD), cache", ["distill.pixel.weight=10", "distill.cwd.weight=3"]),
    "cwd10": ("CWD 10, cache", ["distill.cwd.weight=10"]),
    "pix10T4": ("pixel KD 10 at T 4, cache", ["distill.pixel.weight=10", "distill.pixel.T=4"]),
    "skd": ("the skd preset (pixel 10 image_sum + pair-wise 0.5 + holistic 0.1), online", ["distill.method=skd"]),
}
ONLINE = {"skd"}
# student model variants (extra overrides of the student) by a short name
STUDENT_VARIANTS = {"": [], "dlv3p_r18_q": ["model.name=deeplabv3plus_resnet18", "model.width_mult=0.25"]}


def parse_row(row: str) -> tuple[int, int, str, str]:
    """``t<teacher iters>_s<student iters>_<recipe>[_<student variant>]`` -> its parts."""
    parts = row.split("_", 3)
    if len(parts) < 3 or not parts[0].startswith("t") or not parts[1].startswith("s") or parts[2] not in RECIPES:
        raise SystemExit(f"row {row!r}: expected t<N>_s<N>_<recipe>[_<variant>] with recipe in {', '.join(RECIPES)}")
    variant = parts[3] if len(parts) > 3 else ""
    if variant not in STUDENT_VARIANTS:
        raise SystemExit(f"row {row!r}: unknown student variant {variant!r}; known: {', '.join(v for v in STUDENT_VARIANTS if v)}")
    return int(parts[0][1:]), int(parts[1][1:]), parts[2], variant


def _train(cfg) -> float:
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer

    t = time.perf_counter()
    Trainer(cfg, build_hooks(cfg)).train()
    return time.perf_counter() - t


def _miou(cfg, ckpt: Path) -> dict:
    import torch

    from segdistill.data import build_dataset
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.engine.evaluate import evaluate

    val = build_dataset(cfg.data, "val", train=False)
    model, _ = build_from_checkpoint(ckpt)
    return evaluate(model, val, cfg.eval, torch.device("cpu"), val.num_classes, val.ignore_index, progress=False)


def teacher(out_dir: Path, iters: int) -> Path:
    from segdistill.config import apply_overrides
    from segdistill.tools.demo import TEACHER, demo_config

    d = out_dir / f"teacher_it{iters}"
    if not (d / "result.json").exists():
        cfg = apply_overrides(demo_config(out_dir, d.name, TEACHER, iters, False), ["train.threads=1", "train.progress=false"])
        s = _train(cfg)
        m = _miou(cfg, d / "best.pt")
        (d / "result.json").write_text(json.dumps({"iters": iters, "miou": m["miou"], "iou": m["iou"], "train_s": s}))
    return d


def run(out_dir: Path, row: str, seed: int) -> dict:
    from segdistill.config import apply_overrides
    from segdistill.tools.demo import STUDENT, demo_config

    ti, si, recipe, variant = parse_row(row)
    run_dir = out_dir / row / f"seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    ov = ["train.threads=1", "train.progress=false", *STUDENT_VARIANTS[variant], f"train.seed={seed}"]
    cfg = apply_overrides(demo_config(out_dir, f"{row}/seed{seed}", STUDENT, si, False), ov)
    if recipe != "none":
        tdir = teacher(out_dir, ti)
        cache = "distill.cache=null" if recipe in ONLINE else f"distill.cache={tdir / 'cache'}"
        cfg = apply_overrides(cfg, [f"distill.teacher={tdir / 'best.pt'}", *RECIPES[recipe][1], cache])
    print(f"== {row} seed {seed}: {RECIPES[recipe][0]}", flush=True)
    s = _train(cfg)
    m = _miou(cfg, run_dir / "best.pt")
    result = {"row": row, "seed": seed, "teacher_iters": ti, "student_iters": si, "recipe": recipe, "variant": variant,
              "miou": m["miou"], "iou": m["iou"], "train_s": s, "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/demo_kd.py " + shlex.join(sys.argv[1:])}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"   val mIoU {100 * m['miou']:.2f}", flush=True)
    return result


def report(out_dir: Path) -> str:
    res = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/seed*/result.json"))]
    teachers = {t["iters"]: t["miou"] for t in (json.loads(p.read_text()) for p in out_dir.glob("teacher_it*/result.json"))}
    by_row: dict[str, list] = {}
    for r in res:
        by_row.setdefault(r["row"], []).append(r)
    lines = ["| teacher iters (val mIoU) | student iters | student | recipe | seeds | alone mIoU % (each) | distilled mIoU % "
             "(each) | gain | paired gain per seed |", "|---|---|---|---|---|---|---|---|---|"]
    def order(item):  # by student budget, recipe, variant, then teacher budget
        ti, *rest = parse_row(item[0])
        return (*rest, ti)

    for row, rs in sorted(by_row.items(), key=order):
        ti, si, recipe, variant = parse_row(row)
        if recipe == "none":
            continue
        alone = {r["seed"]: 100 * r["miou"] for t, rr in by_row.items() if parse_row(t)[1:] == (si, "none", variant) for r in rr}
        dist = {r["seed"]: 100 * r["miou"] for r in rs}
        fmt = lambda d: f"{statistics.mean(d.values()):.2f} ({', '.join(f'{d[k]:.2f}' for k in sorted(d))})" if d else "-"  # noqa: E731
        gain = f"{statistics.mean(dist.values()) - statistics.mean(alone.values()):+.2f}" if alone else "-"
        paired = ", ".join(f"{dist[k] - alone[k]:+.2f}" for k in sorted(dist) if k in alone)
        tm = f"{100 * teachers[ti]:.2f}" if ti in teachers else "?"
        lines.append(f"| {ti} ({tm}) | {si} | {variant or 'LR-ASPP-MBv2 x0.5'} | {RECIPES[recipe][0]} | "
                     f"{','.join(map(str, sorted(dist)))} | {fmt(alone)} | {fmt(dist)} | {gain} | {paired} |")
    lines += ["", "Commands:", ""] + sorted({f"    {r['command']}" for r in res})
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="", help="comma-separated t<N>_s<N>_<recipe>[_<variant>]")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out-dir", default=str(REPO.parent / "runs" / "demo_kd"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    if args.list:
        print("recipes: " + "; ".join(f"{k}: {v[0]}" for k, v in RECIPES.items()))
        print("student variants: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in STUDENT_VARIANTS.items() if k))
        return
    print(f"command: python benchmarks/demo_kd.py {shlex.join(sys.argv[1:])}", flush=True)
    for row in [r for r in args.rows.split(",") if r]:
        parse_row(row)
        for seed in map(int, args.seeds.split(",")):
            run(out_dir, row, seed)
    if args.report:
        print(report(out_dir))


if __name__ == "__main__":
    main()
