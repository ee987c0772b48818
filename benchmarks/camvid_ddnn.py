"""CamVid DDNN benchmark under camvid-cpu: one depth-level dynamic network trained with EKD, against the same network
trained with the sandwich rule and the task loss alone, and against each depth trained alone (issue 12).

Rows (all ``ddnn_deeplabv3_resnet34`` at ``model.width_mult`` of configs/ddnn-camvid-cpu.yaml, from scratch, the same
iteration budget):

* ``ekd``: the DDNN with EKD (sandwich rule: smallest + 1 random sub-net; CE + T^2 KL + self-attention term);
* ``sandwich``: the same DDNN and sub-net schedule, task loss only (``ekd.kl_weight=0 ekd.att_weight=0``);
* ``ekd_kl`` / ``ekd_att``: EKD with one of its two terms (the other's weight 0), to tell which term does what;
* ``alone_<depth>``: a network with that one depth only (``model.arch.depths={<depth>: [...]}``, no EKD): a plain
  DeepLabV3 on a ResNet of that depth (r18 = ResNet-18's blocks, r34 = ResNet-34's).

Every result row evaluates every depth of its best.pt on CamVid val (whole image), with params and MACs at 3x180x240;
``--latency`` adds torch-cpu and onnxruntime-cpu latency (``segdistill profile``'s measurement) per depth.

    python benchmarks/camvid_ddnn.py --rows ekd,sandwich,alone_r10,alone_r18,alone_r26,alone_r34 --seeds 0,1
    python benchmarks/camvid_ddnn.py --budget 230 --rows ... --seeds 0,1   # a shorter budget, in its own folder
    python benchmarks/camvid_ddnn.py --rows ekd --seeds 0 --budget 4       # smoke run (does it start?)
    python benchmarks/camvid_ddnn.py --timing     # s/iteration of ekd / sandwich vs one full net, side by side
    python benchmarks/camvid_ddnn.py --latency --report      # latency per depth, then the Markdown table and plot

Resumable: each run trains with ``train.resume=auto`` (a killed run continues from its last.pt) and a finished row
(``result.json`` present) is skipped unless ``--force``. Results: OUT_DIR/it<BUDGET>/<row>/seed<k>/result.json (default
OUT_DIR ../runs/camvid_ddnn, beside the repository); the plot OUT_DIR/it<BUDGET>/miou_vs_latency.png. Rows trained at
different budgets live in different folders and never share a table.
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

CONFIG = REPO / "segdistill" / "configs" / "ddnn-camvid-cpu.yaml"
PROTOCOL = ("camvid-cpu (../shared/docs/benchmark-protocol.md): CamVid train->val, 240x180, 11 classes, void ignored; "
            "whole-image val mIoU of best.pt, every depth")
DEPTHS = {"r10": [1, 1, 1, 1], "r18": [2, 2, 2, 2], "r26": [2, 3, 4, 3], "r34": [3, 4, 6, 3]}
PROTOCOL_ITERS = 1840  # camvid-cpu's 40 epochs at batch 8


def budget(iters: int) -> list[str]:
    """The iteration budget every row of one table shares (validation and checkpoints at each quarter)."""
    q = max(iters // 4, 1)
    return [f"train.iters={iters}", f"train.val_interval={q}", f"train.ckpt_interval={q}",
            f"optim.warmup_iters={min(100, max(iters // 10, 1))}"]


def _depths(d: dict) -> str:
    return "model.arch.depths={" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"


ROWS = {
    "ekd": ("DDNN + EKD (sandwich: smallest + 1 random; CE + KL + attention)", []),
    "sandwich": ("DDNN, sandwich rule, task loss only (no EKD)", ["ekd.kl_weight=0", "ekd.att_weight=0"]),
    "ekd_kl": ("DDNN + EKD's KL term only (attention weight 0): which EKD term does what", ["ekd.att_weight=0"]),
    "ekd_att": ("DDNN + EKD's attention term only (KL weight 0)", ["ekd.kl_weight=0"]),
    **{f"alone_{k}": (f"{k} {v} trained alone (plain network, no EKD)", ["ekd.enabled=false", _depths({k: v})])
       for k, v in DEPTHS.items()},
}


def overrides_for(row: str, seed: int, extra: list[str], iters: int = PROTOCOL_ITERS) -> list[str]:
    return [f"data.root={REPO.parent / 'shared' / 'data' / 'camvid'}", f"train.seed={seed}", *budget(iters),
            _depths(DEPTHS), *ROWS[row][1], *extra]


def make_trainer(overrides: list[str]):
    from segdistill.config import load_config
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer

    cfg = load_config(CONFIG, overrides)
    return Trainer(cfg, build_hooks(cfg)), cfg


def evaluate_depths(ckpt: Path, cfg, latency: bool = False) -> list[dict]:
    """Every depth of ``ckpt``: val mIoU, inference params and MACs at 3x180x240 (and latency on two platforms)."""
    import torch

    from segdistill.data import build_dataset
    from segdistill.dynamic.cli import depth_cost
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.engine.evaluate import evaluate
    from segdistill.tools.profile import profile_model

    model, _ = build_from_checkpoint(ckpt)
    val = build_dataset(cfg.data, "val", train=False)
    shape = (1, 3, 180, 240)
    rows = []
    for d in model.depth_names:
        model.set_depth(d)
        m = evaluate(model, val, cfg.eval, torch.device("cpu"), val.num_classes, val.ignore_index, progress=False)
        row = {"depth": d, "blocks": model.depth, "miou": m["miou"], "iou": m["iou"], **depth_cost(model, shape)}
        if latency:
            prof = profile_model(model, shape, platforms=("torch-cpu", "onnxruntime-cpu"), threads=2)
            row["latency_ms"] = {p: v.get("median_ms") for p, v in prof["latency"].items()}
        rows.append(row)
    return rows


def run(row: str, seed: int, out_dir: Path, extra: list[str], iters: int, force: bool = False) -> dict | None:
    run_dir = out_dir / row / f"seed{seed}"
    res_path = run_dir / "result.json"
    if res_path.exists() and not force:
        print(f"== {row} / seed {seed}: done ({res_path})", flush=True)
        return json.loads(res_path.read_text())
    ov = overrides_for(row, seed, extra, iters) + [f"train.out_dir={run_dir}", "train.resume=auto"]
    print(f"== {row} / seed {seed}: {ROWS[row][0]}\n   overrides: {shlex.join(ov)}", flush=True)
    t0 = time.perf_counter()
    trainer, cfg = make_trainer(ov)
    start_iter = trainer.state.iteration
    trainer.train()
    wall = time.perf_counter() - t0
    prev = json.loads((run_dir / "wall.json").read_text()) if (run_dir / "wall.json").exists() else {"s": 0.0}
    total_wall = prev["s"] + wall if start_iter else wall  # training wall time summed over resumed pieces
    (run_dir / "wall.json").write_text(json.dumps({"s": total_wall}))
    depths = evaluate_depths(run_dir / "best.pt", cfg)
    result = {"row": row, "seed": seed, "description": ROWS[row][0], "overrides": ov, "protocol": PROTOCOL,
              "depths": depths, "train_wall_s": total_wall, "iters": cfg.train.iters, "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/camvid_ddnn.py " + shlex.join(sys.argv[1:])}
    res_path.write_text(json.dumps(result, indent=2, default=float))
    print("   " + ", ".join(f"{r['depth']} {100 * r['miou']:.2f}" for r in depths) + f" mIoU; {total_wall:.0f} s", flush=True)
    return result


def add_latency(out_dir: Path):
    """Latency per depth of every finished row (torch-cpu and onnxruntime-cpu, 2 threads), into its result.json."""
    from segdistill.config import load_config

    for path in sorted(out_dir.glob("*/seed*/result.json")):
        res = json.loads(path.read_text())
        if all("latency_ms" in r for r in res["depths"]):
            continue
        cfg = load_config(CONFIG, res["overrides"])
        res["depths"] = evaluate_depths(path.parent / "best.pt", cfg, latency=True)
        path.write_text(json.dumps(res, indent=2, default=float))
        print(f"latency: {path}", flush=True)


def time_rows(out_dir: Path, iters: int = 10, threads: int = 2) -> dict:
    """Seconds per training iteration of ekd, sandwich and the full net alone (after 3 warm-up iterations)."""
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from camvid_kd import seconds_per_iteration  # the one timing loop of the benchmarks

    torch.set_num_threads(threads)
    table = {}
    for row in ("alone_r34", "sandwich", "ekd"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer, _ = make_trainer(overrides_for(row, 0, [f"train.out_dir={tmp}", "data.workers=0",
                                                             f"train.threads={threads}"]))
            table[row] = seconds_per_iteration(trainer, iters)
        print(f"{row}: {table[row]:.3f} s/iter ({table[row] / table['alone_r34']:.2f}x the full net alone)", flush=True)
    (out_dir / "timing.json").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "timing.json").write_text(json.dumps({"s_per_iter": table, "iters": iters, "threads": threads}, indent=2))
    return table


def report(out_dir: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/seed*/result.json"))]
    by_row: dict[str, list] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    budgets = sorted({r["iters"] for r in results})
    if len(budgets) > 1:
        raise SystemExit(f"{out_dir} mixes budgets {budgets}: one table, one budget (use --budget's own folder)")
    budget_text = " ".join(budget(budgets[0])) if budgets else "none yet"
    lines = [f"Protocol: {PROTOCOL}. Config {CONFIG.name}; budget for every row: {budget_text} at batch 8.", "",
             "| row | depth | seeds | val mIoU % (each) | params (M) | GMACs | torch-cpu ms | onnxruntime-cpu ms | "
             "train wall s (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    points = []
    for row in ROWS:
        for d in DEPTHS:
            runs = [(r, x) for r in by_row.get(row, []) for x in r["depths"] if x["depth"] == d]
            if not runs:
                continue
            m = [100 * x["miou"] for _, x in runs]
            x0 = runs[0][1]
            lat = x0.get("latency_ms", {})
            wall = statistics.mean(r["train_wall_s"] for r, _ in runs)
            lines.append(f"| {row} | {d} | {','.join(str(r['seed']) for r, _ in runs)} | {statistics.mean(m):.2f} "
                         f"({', '.join(f'{v:.2f}' for v in m)}) | {x0['params'] / 1e6:.2f} | {x0['macs'] / 1e9:.2f} | "
                         f"{_ms(lat.get('torch-cpu'))} | {_ms(lat.get('onnxruntime-cpu'))} | {wall:.0f} |")
            if lat.get("torch-cpu"):
                points.append((row if not row.startswith("alone") else "alone", d, lat["torch-cpu"], statistics.mean(m)))
    lines += latency_noise(by_row) + goals(by_row)
    tim = out_dir / "timing.json"
    if tim.exists():
        t = json.loads(tim.read_text())["s_per_iter"]
        lines += ["", "Cost per iteration (batch 8, 180x240): " + ", ".join(
            f"{k} {v:.2f} s ({v / t['alone_r34']:.2f}x the full net alone)" for k, v in t.items())]
    if points:
        _plot(points, out_dir / "miou_vs_latency.png")
        lines += ["", f"Plot: {out_dir / 'miou_vs_latency.png'}"]
    lines += ["", "Commands:", ""] + sorted({f"    {r['command']}" for r in results})
    return "\n".join(lines)


def _ms(v) -> str:
    return f"{v:.1f}" if v else "-"


def latency_noise(by_row: dict) -> list[str]:
    """A depth is the same network in every row, so its latency figures differ only by measurement: say by how much."""
    out = []
    for d in DEPTHS:
        for p in ("torch-cpu", "onnxruntime-cpu"):
            v = [x["latency_ms"][p] for rs in by_row.values() for x in rs[0]["depths"]
                 if x["depth"] == d and x.get("latency_ms", {}).get(p)]
            if len(v) > 1:
                out.append(f"{d} {p} {min(v):.1f}-{max(v):.1f} ms ({100 * (max(v) / min(v) - 1):.0f}%)")
    if not out:
        return []
    return ["", "Each depth is one network in every row (same blocks, other weights), so the latency columns differ by "
            "measurement alone: " + "; ".join(out) + ". Read latency differences under these as noise."]


def goals(by_row: dict) -> list[str]:
    """Issue 12's goals from the finished rows: each EKD sub-net against the same depth alone (beyond the seed spread:
    the difference of means exceeds the larger of the two rows' max-min over seeds), the full net within 0.5 mIoU of
    the full net alone, and the training wall time of one DDNN against all independent nets together."""
    def mious(row, d):
        return [100 * x["miou"] for r in by_row.get(row, []) for x in r["depths"] if x["depth"] == d]

    full = list(DEPTHS)[-1]
    out = ["", "Goals (mean of seeds; spread = max - min over seeds):", ""]
    for d in DEPTHS:
        e, a = mious("ekd", d), mious(f"alone_{d}", d)
        if not e or not a:
            continue
        diff, spread = statistics.mean(e) - statistics.mean(a), max(max(e) - min(e), max(a) - min(a))
        if d == full:
            verdict = "met" if diff >= -0.5 else "NOT met"
            out.append(f"- full net {d}: EKD {statistics.mean(e):.2f} vs alone {statistics.mean(a):.2f} ({diff:+.2f}); "
                       f"within 0.5 mIoU of the full net alone: {verdict}")
        else:
            verdict = "beats it beyond the spread" if diff > spread else (
                "better, within the spread" if diff > 0 else "not better")
            out.append(f"- sub-net {d}: EKD {statistics.mean(e):.2f} vs alone {statistics.mean(a):.2f} ({diff:+.2f}, "
                       f"spread {spread:.2f}): {verdict}")
        s_ = mious("sandwich", d)
        if s_:
            out[-1] += f"; sandwich without EKD {statistics.mean(s_):.2f} ({statistics.mean(e) - statistics.mean(s_):+.2f} for EKD)"
        for row, what in (("ekd_kl", "KL term only"), ("ekd_att", "attention term only")):
            m = mious(row, d)
            if m:
                out[-1] += f"; {what} {statistics.mean(m):.2f} (spread {max(m) - min(m):.2f})"
    walls = {row: statistics.mean(r["train_wall_s"] for r in rs) for row, rs in by_row.items()}
    alone = [walls[f"alone_{d}"] for d in DEPTHS if f"alone_{d}" in walls]
    if "ekd" in walls and len(alone) == len(DEPTHS):
        out.append(f"- training wall time: one DDNN with EKD {walls['ekd']:.0f} s against {sum(alone):.0f} s for the "
                   f"{len(alone)} depths trained alone ({walls['ekd'] / sum(alone):.2f}x): "
                   f"{'cheaper' if walls['ekd'] < sum(alone) else 'NOT cheaper'}")
    return out


def _plot(points, path: Path):
    from segdistill.viz import new_figure, save_figure

    fig = new_figure(6, 4, "the mIoU vs latency plot")
    ax = fig.add_subplot(111)
    for approach in sorted({p[0] for p in points}):
        ps = sorted((p for p in points if p[0] == approach), key=lambda p: p[2])
        ax.plot([p[2] for p in ps], [p[3] for p in ps], marker="o", label=approach)
        for p in ps:
            ax.annotate(p[1], (p[2], p[3]), fontsize=7)
    ax.set_xlabel("torch-cpu latency (ms, batch 1, 180x240)")
    ax.set_ylabel("val mIoU %")
    ax.legend()
    save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="", help=f"comma-separated, from: {','.join(ROWS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--budget", type=int, default=PROTOCOL_ITERS,
                   help="train.iters of every row (one table, one budget); rows go to OUT_DIR/it<BUDGET>")
    p.add_argument("--out-dir", default=str(REPO.parent / "runs" / "camvid_ddnn"))
    p.add_argument("--force", action="store_true", help="train rows whose result.json exists again")
    p.add_argument("--timing", action="store_true")
    p.add_argument("--timing-iters", type=int, default=10)
    p.add_argument("--latency", action="store_true", help="add per-depth latency to every finished row")
    p.add_argument("--report", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra section.key=value for every run")
    args = p.parse_args()
    out_dir = Path(args.out_dir) / f"it{args.budget}"
    print(f"protocol: {PROTOCOL}\ncommand: python benchmarks/camvid_ddnn.py {shlex.join(sys.argv[1:])}", flush=True)
    rows = [r for r in args.rows.split(",") if r]
    bad = set(rows) - set(ROWS)
    if bad:
        p.error(f"unknown rows {sorted(bad)}; known: {', '.join(ROWS)}")
    extra = list(args.overrides)
    for row in rows:
        for seed in map(int, args.seeds.split(",")):
            run(row, seed, out_dir, extra, args.budget, args.force)
    if args.timing:
        time_rows(out_dir, args.timing_iters)
    if args.latency:
        add_latency(out_dir)
    if args.report:
        print(report(out_dir))


if __name__ == "__main__":
    main()
