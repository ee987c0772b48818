"""Where the network a search returns lands against its budget: the plain argmax against the argmax priced by
latency (``segdistill.search.objective.derive_within_budget``), for supernets with random architecture weights, on the
committed chain-space tables (no training, no timing: table predictions only).

    python benchmarks/priced_derivation.py                       # configs/search-camvid-cpu.yaml's space
    python benchmarks/priced_derivation.py --widths 48,96,160 --budgets "torch-cpu=10;onnxruntime-cpu=4"

Prints one line per (draw, budget set): the rule used, mu, the predicted latency of both networks per platform and
their ratio to the budget, and the time the derivation took.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from segdistill.latency.lut import LatencyTable
from segdistill.latency.predictor import LatencyPredictor
from segdistill.search.objective import derive_within_budget
from segdistill.search.space_chain import build_supernet

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lut-dir", default=str(REPO / "benchmarks" / "latency" / "chain"))
    p.add_argument("--widths", default="96,192,320", help="the chain space's base widths")
    p.add_argument("--budgets", default="torch-cpu=12;torch-cpu=20;torch-cpu=30;onnxruntime-cpu=14;"
                                        "torch-cpu=20,onnxruntime-cpu=6",
                   help="';'-separated budget sets, each 'platform=ms[,platform=ms]'")
    p.add_argument("--draws", type=int, default=3, help="random architecture weights, seeds 0..draws-1")
    p.add_argument("--scale", type=float, default=0.3, help="std of the random logits (0.3: a supernet that has not "
                                                            "decided much, as after a short search)")
    args = p.parse_args()
    print(f"command: python benchmarks/priced_derivation.py {shlex.join(sys.argv[1:])}")
    sets = [{k: float(v) for k, v in (item.split("=") for item in part.split(","))} for part in args.budgets.split(";")]
    preds = {}
    for plat in {q for s in sets for q in s}:
        table = LatencyTable.load(Path(args.lut_dir) / f"lut-{plat}.json")
        preds[plat] = LatencyPredictor(table, measure=False)
        print(f"{plat}: {table.path} ({table.device_note()}), correction "
              f"{(table.correction or {}).get('model', 'none')}")
    widths = [int(w) for w in args.widths.split(",")]
    print("| draw | budgets (ms) | rule | mu | priced: ms (x budget) | plain argmax: ms (x budget) | s |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.draws):
        torch.manual_seed(seed)
        net = build_supernet(11, (1, 3, 180, 240), base_widths=widths)
        with torch.no_grad():
            for prm in net.arch_parameters():
                prm.normal_(0, args.scale)
        for budgets in sets:
            t0 = time.perf_counter()
            _, info = derive_within_budget(net, {q: preds[q] for q in budgets}, budgets)
            dt = time.perf_counter() - t0
            fmt = lambda ms: ", ".join(f"{q} {ms[q]:.2f} ({ms[q] / b:.2f})" for q, b in budgets.items())  # noqa: E731
            print(f"| {seed} | {', '.join(f'{q} {b:g}' for q, b in budgets.items())} | {info['rule']} | "
                  f"{info['mu']:.3g} | {fmt(info['predicted_ms'])} | {fmt(info['argmax_ms'])} | {dt:.1f} |")


if __name__ == "__main__":
    main()
