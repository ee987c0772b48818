"""CamVid baselines under the camvid-cpu protocol: a teacher and hand-designed students.

For each model: train with the one trainer (configs/camvid-cpu.yaml plus the row's overrides), evaluate best.pt on val
at 240x180 (one confusion matrix, whole image), profile at 1x3x180x240 (torch-cpu and onnxruntime-cpu, median/p90 of
>= 50 runs), and record training images per second. Results go to OUT_DIR/<row>/seed<k>/result.json; ``--report``
collects them into a Markdown table (pasted into benchmarks/RESULTS.md).

    python benchmarks/camvid_baselines.py --rows teacher
    python benchmarks/camvid_baselines.py --rows dlv3_r18_half,dlv3p_mbv2,lraspp_mbv2,segformer_b0 --seeds 0,1
    python benchmarks/camvid_baselines.py --report

The teacher's checkpoint stays at OUT_DIR/teacher/seed0/best.pt (default OUT_DIR: ../runs/camvid_baselines, beside the
repository), where distillation picks it up instead of retraining.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# row -> (description, overrides on top of configs/camvid-cpu.yaml). Students share one budget (1,840 iterations).
ROWS = {
    "teacher": ("DeepLabV3+-ResNet-18, OS 16, aux head, from scratch (teacher)", [
        "model.name=deeplabv3plus_resnet18", "model.output_stride=16", "model.aux=true",
    ]),
    "dlv3_r18_half": ("DeepLabV3-ResNet-18, half width, OS 8", ["model.name=deeplabv3_resnet18", "model.width_mult=0.5"]),
    "dlv3p_mbv2": ("DeepLabV3+-MobileNetV2, OS 16", ["model.name=deeplabv3plus_mobilenetv2", "model.output_stride=16"]),
    "lraspp_mbv2": ("LR-ASPP (real-time head) on MobileNetV2, OS 8", ["model.name=lraspp_mobilenetv2"]),
    "segformer_b0": ("SegFormer-B0 (MiT-B0 + all-MLP head)", [
        "model.name=segformer_mitb0", "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.01",
    ]),
}
PROTOCOL = "camvid-cpu (../shared/docs/benchmark-protocol.md): CamVid train->val, 240x180, 11 classes, void ignored"


def run_row(row: str, seed: int, root: str, out_dir: Path, extra: list[str]) -> dict:
    import torch

    from segdistill.config import load_config
    from segdistill.data import build_dataset
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.engine.evaluate import evaluate
    from segdistill.engine.trainer import Trainer
    from segdistill.tools.profile import profile_model

    run_dir = out_dir / row / f"seed{seed}"
    overrides = [f"data.root={root}", f"train.seed={seed}", f"train.out_dir={run_dir}", *ROWS[row][1], *extra]
    cfg = load_config(REPO / "configs" / "camvid-cpu.yaml", overrides)
    print(f"== {row} seed {seed}: {ROWS[row][0]}\n   overrides: {' '.join(overrides)}", flush=True)
    t0 = time.perf_counter()
    if not (run_dir / "last.pt").exists() or "train.resume=auto" in extra:
        Trainer(cfg).train()
    train_s = time.perf_counter() - t0

    model, _ = build_from_checkpoint(run_dir / "best.pt")
    val = build_dataset(cfg.data, "val", train=False)
    metrics = evaluate(model, val, cfg.eval, torch.device("cpu"), val.num_classes, val.ignore_index, progress=False)
    prof = profile_model(model, (1, 3, 180, 240), platforms=("torch-cpu", "onnxruntime-cpu"), runs=50, warmup=10)
    speeds = [r["img_per_s"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "img_per_s" in r]
    result = {
        "row": row, "description": ROWS[row][0], "seed": seed, "overrides": overrides, "protocol": PROTOCOL,
        "command": "python benchmarks/camvid_baselines.py " + shlex.join(sys.argv[1:]),
        "miou": metrics["miou"], "iou": metrics["iou"], "pixel_acc": metrics["pixel_acc"], "class_names": list(val.class_names),
        "params": prof["params"], "macs": prof["macs"], "latency": prof["latency"], "threads": prof.get("threads"),
        "train_img_per_s": statistics.median(speeds) if speeds else None, "train_wall_s": train_s,
        "iters": cfg.train.iters, "batch_size": cfg.data.batch_size, "machine": platform.processor() or platform.machine(),
        "checkpoint": str(run_dir / "best.pt"), "date": time.strftime("%Y-%m-%d"),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"   val mIoU {100 * result['miou']:.2f}, {result['params'] / 1e6:.2f} M params, "
          f"{result['macs'] / 1e9:.2f} GMACs, torch-cpu {prof['latency']['torch-cpu']['median_ms']:.1f} ms", flush=True)
    return result


def remeasure(out_dir: Path, root: str, threads: int = 2, iters: int = 12):
    """Cost figures of every finished row, side by side in one run with nothing else on the machine.

    Training runs may share the machine; latency and training speed are therefore re-measured here for all rows in one
    process: latency of best.pt (torch-cpu, onnxruntime-cpu) and training images/s over ``iters`` real-data iterations
    (after 3 warm-up iterations) of a fresh model with the row's recipe, all at ``threads`` torch threads.
    """
    import tempfile

    import torch

    from segdistill.config import load_config
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.engine.trainer import Trainer
    from segdistill.tools.profile import profile_model

    torch.set_num_threads(threads)
    for path in sorted(out_dir.glob("*/seed*/result.json")):
        result = json.loads(path.read_text())
        model, _ = build_from_checkpoint(path.parent / "best.pt")
        prof = profile_model(model, (1, 3, 180, 240), platforms=("torch-cpu", "onnxruntime-cpu"), runs=50, warmup=10)
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [o for o in result["overrides"] if not o.startswith(("train.out_dir", "train.threads"))]
            cfg = load_config(REPO / "configs" / "camvid-cpu.yaml", overrides + [f"train.out_dir={tmp}", f"train.threads={threads}"])
            trainer = Trainer(cfg)
            batches = iter(trainer.loader(0, 0))
            for _ in range(3):
                trainer.train_step(next(batches))
            t0, n = time.perf_counter(), 0
            for _ in range(iters):
                batch = next(batches)
                trainer.train_step(batch)
                n += batch["image"].shape[0]
            speed = n / (time.perf_counter() - t0)
        result["clean"] = {"latency": prof["latency"], "train_img_per_s": speed, "threads": threads, "iters": iters,
                           "command": "python benchmarks/camvid_baselines.py " + shlex.join(sys.argv[1:])}
        path.write_text(json.dumps(result, indent=2, default=float))
        print(f"{result['row']}: torch-cpu {prof['latency']['torch-cpu']['median_ms']:.1f} ms, "
              f"ORT {prof['latency']['onnxruntime-cpu']['median_ms']:.1f} ms, train {speed:.1f} img/s", flush=True)


def report(out_dir: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/seed*/result.json"))]
    if not results:
        return f"no results under {out_dir}"
    by_row: dict[str, list] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    order = [r for r in ROWS if r in by_row]
    lines = [
        f"Protocol: {PROTOCOL}. Latency: batch 1, eval, no grad, input 1x3x180x240, median (p90) of >= 50 runs after warm-up, "
        f"torch threads = {results[0].get('clean', results[0]).get('threads')}, measured side by side for all rows by --remeasure "
        "(training img/s: batch 8, real data, after warm-up). MACs: multiply-adds counted once (torch.utils.flop_counter).",
        "",
        "| row | model | iters x batch | seeds | val mIoU % (each) | params M | GMACs | torch-cpu ms | ORT-cpu ms | train img/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in order:
        rs = by_row[row]
        m = [100 * r["miou"] for r in rs]
        r0 = rs[0]
        clean = r0.get("clean", {})
        lat = clean.get("latency", r0["latency"])
        lines.append(
            f"| {row} | {r0['description']} | {r0['iters']} x {r0['batch_size']} | {','.join(str(r['seed']) for r in rs)} | "
            f"{statistics.mean(m):.2f} ({', '.join(f'{v:.2f}' for v in m)}) | {r0['params'] / 1e6:.2f} | {r0['macs'] / 1e9:.2f} | "
            f"{lat['torch-cpu']['median_ms']:.1f} ({lat['torch-cpu']['p90_ms']:.1f}) | "
            f"{lat['onnxruntime-cpu']['median_ms']:.1f} ({lat['onnxruntime-cpu']['p90_ms']:.1f}) | "
            f"{clean.get('train_img_per_s', r0['train_img_per_s']):.1f} |"
        )
    names = results[0]["class_names"]
    lines += ["", "Per-class val IoU % (seed mean):", "", "| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in order:
        rs = by_row[row]
        ious = [statistics.mean(100 * r["iou"][i] for r in rs) for i in range(len(names))]
        lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in ious) + " |")
    lines += ["", "Commands:", ""] + sorted({f"    {r['command']}" for r in results})
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="", help=f"comma-separated, from: {','.join(ROWS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    p.add_argument("--out-dir", default=str(REPO.parent / "runs" / "camvid_baselines"))
    p.add_argument("--report", action="store_true", help="print the Markdown table of every result found")
    p.add_argument("--remeasure", action="store_true", help="re-measure latency and training speed of every finished row")
    p.add_argument("overrides", nargs="*", help="extra section.key=value for every row (e.g. train.iters=20 for a smoke run)")
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    print(f"protocol: {PROTOCOL}\ncommand: python benchmarks/camvid_baselines.py {shlex.join(sys.argv[1:])}", flush=True)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    for row in rows:
        for seed in map(int, args.seeds.split(",")):
            run_row(row, seed, args.root, out_dir, args.overrides)
    if args.remeasure:
        remeasure(out_dir, args.root)
    if args.report:
        print(report(out_dir))


if __name__ == "__main__":
    main()
