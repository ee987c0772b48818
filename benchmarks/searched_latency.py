"""How well the latency tables predict the networks a search returns (issue 10's goal: every derived network's
measured latency within +-10% of its prediction). No training: latency depends on the architecture only.

For every genotype given (default: every searched and random genotype archived by camvid_search.py in
benchmarks/results/camvid_search), on each platform with a table in ``--lut-dir``:

* ``predicted``: the table's prediction (block sum under the table's fitted correction), as the search saw it;
* ``block sum``: the raw sum of the table's block entries;
* ``model``: the searched model itself (``searched:genotype.json``, deploy form, batch 1) measured whole;
* ``blocks``: the same blocks chained as the table measured them one by one (latency/network.py's ChainNet), whole.

``model`` against ``blocks`` separates two error sources: the implementation (the model runs other code than the
sum of its blocks) and the whole-network effect (blocks timed alone cost more, or less, than inside a network),
which a correction fitted on the space's own networks (``segdistill latency fit --space chain``) absorbs.
``--recheck`` measures each of those networks' blocks again, alone as the table did, against its table entry: a
table built on another day (or another VM of the same CPU name) may no longer describe this machine.
Measurements: one process, the table's thread count and allocator mode, every network prepared once, then
``--repeats`` round-robin passes (median of >= ``--runs`` runs after warm-up each); the figure is the median over
passes. Run it on a quiet machine.

    python benchmarks/searched_latency.py --lut-dir benchmarks/latency/chain
    python benchmarks/searched_latency.py --genotype runs/search/genotype.json --out searched_latency.json
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
ARCHIVE = REPO / "benchmarks" / "results" / "camvid_search"
PLATFORMS = ("torch-cpu", "onnxruntime-cpu")
LAT_SHAPE = (3, 180, 240)  # the checkpoints' (camvid-cpu's) latency input


def archived_genotypes(archive: Path) -> dict[str, Path]:
    """row -> genotype.json of every search (``<row>/search/genotype.json``) and random row (``<row>/genotype.json``)."""
    out = {p.parent.parent.name: p for p in sorted(archive.glob("*/search/genotype.json"))}
    out.update({p.parent.name: p for p in sorted(archive.glob("*/genotype.json"))})
    return dict(sorted(out.items()))


def label(path: Path) -> str:
    """A row name for a genotype path: ``<row>/search/genotype.json`` -> row, ``<row>/genotype.json`` -> row."""
    if path.stem != "genotype":
        return path.stem
    return path.parent.parent.name if path.parent.name == "search" else path.parent.name


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lut-dir", default=str(REPO / "benchmarks" / "latency" / "chain"), help="lut-<platform>.json")
    p.add_argument("--genotype", action="append", help="a genotype JSON (repeatable; default: the archived ones)")
    p.add_argument("--platform", action="append", choices=PLATFORMS, help="only these platforms (default: both)")
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3, help="round-robin passes over the networks")
    p.add_argument("--runs", type=int, default=50, help="timed runs per measurement (at least)")
    p.add_argument("--recheck", action="store_true",
                   help="also measure every block of these networks again, alone as the table did, and compare with "
                        "the table's entry: does the table still describe this machine?")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="also measure this trained model (e.g. a hand-designed student's best.pt) in the same passes, "
                        "so that rows are compared in the same machine state (no prediction: not a genotype)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()


    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.latency import standalone as core
    from segdistill.latency.lut import LatencyTable
    from segdistill.latency.network import ChainNet
    from segdistill.latency.predictor import LatencyPredictor
    from segdistill.models import build_model
    from segdistill.models.output import deploy_copy
    from segdistill.search.genotype import genotype_netspec, load_genotype

    cmd = "python benchmarks/searched_latency.py " + shlex.join(sys.argv[1:])
    genos = {label(Path(g)): Path(g) for g in args.genotype} if args.genotype else archived_genotypes(ARCHIVE)
    if not genos:
        raise SystemExit(f"no genotypes: none archived under {ARCHIVE}; give --genotype PATH")
    rows, rechecks = [], []
    print(f"command: {cmd}\ngenotypes: {', '.join(f'{k} ({v})' for k, v in genos.items())}", flush=True)
    for platform in args.platform or PLATFORMS:
        path = Path(args.lut_dir) / f"lut-{platform}.json"
        if not path.is_file():
            print(f"{platform}: no table {path}, skipped", flush=True)
            continue
        table = LatencyTable.load(path)
        why = table.local_problem()
        if why:
            raise SystemExit(f"{path}: {why}; measure on the table's machine")
        pred = LatencyPredictor(table, measure=False)
        plat = core.get_platform(platform)
        timing = {"warmup": 10, "min_runs": args.runs, "min_time": 0.5}
        malloc = core.table_malloc_mode(table.data) or "steady"
        with core.malloc_mode(malloc), core.torch_threads(table.threads):
            runners, preds, specs = {}, {}, {}
            for name, gpath in genos.items():
                g = load_genotype(gpath)
                spec = specs[name] = genotype_netspec(g, tuple(g["input"]), args.num_classes)
                res = pred.predict(spec)
                preds[name] = (float(res["predicted_ms"]), float(res["raw_ms"]))
                x = core.example_inputs([spec.input_shape[1:]])
                model = deploy_copy(build_model(f"searched:{gpath}", args.num_classes)).eval()
                runners[name] = {"model": plat.prepare(model, x, table.threads),
                                 "blocks": plat.prepare(ChainNet(spec).eval(), x, table.threads)}
            for item in args.checkpoint:
                name, _, ckpt = item.partition("=")
                model, _ = build_from_checkpoint(ckpt)
                runners[name] = {"model": plat.prepare(deploy_copy(model).eval(), core.example_inputs([LAT_SHAPE]),
                                                       table.threads)}
            fns = {(n, v): runners[n][v].fn for n in runners for v in runners[n]}
            meas = core.measure_interleaved(fns, args.repeats, **timing, progress=lambda r: print(
                f"{platform}: pass {r + 1}/{args.repeats} done", flush=True))
            if args.recheck:
                keys = sorted({k for spec in specs.values() for k in spec.keys()})
                ratios = [core.measure_key(k, platform, table.threads, **table.data["timing"])["median_ms"]
                          / table.latency(k) for k in keys]
                q = statistics.quantiles(ratios, n=10)
                rechecks.append({"platform": platform, "blocks": len(keys), "median": statistics.median(ratios),
                                 "p10": q[0], "p90": q[-1], "table_date": table.data.get("date")})
                print(f"{platform}: {len(keys)} blocks measured again / table entry (dated "
                      f"{table.data.get('date', '?')[:10]}): median {statistics.median(ratios):.2f}, 10-90% "
                      f"{q[0]:.2f}-{q[-1]:.2f}", flush=True)
        for item in args.checkpoint:
            name, _, ckpt = item.partition("=")
            m = meas[(name, "model")]
            rows.append({"genotype": name, "path": ckpt, "platform": platform, "threads": table.threads,
                         "model_ms": m["median_ms"], "model_passes": m["passes_ms"], "fastest_ms": m["fastest_ms"],
                         "slowest_ms": m["slowest_ms"]})
        for name in genos:
            m, b = meas[(name, "model")], meas[(name, "blocks")]
            rows.append({"genotype": name, "path": str(genos[name]), "platform": platform, "threads": table.threads,
                         "predicted_ms": preds[name][0], "block_sum_ms": preds[name][1], "model_ms": m["median_ms"],
                         "blocks_ms": b["median_ms"], "model_passes": m["passes_ms"], "blocks_passes": b["passes_ms"],
                         "error_pct": 100 * (preds[name][0] - m["median_ms"]) / m["median_ms"], "table": str(path),
                         "fastest_ms": m["fastest_ms"], "slowest_ms": m["slowest_ms"],
                         "error_fastest_pct": 100 * (preds[name][0] - m["fastest_ms"]) / m["fastest_ms"],
                         "correction": (table.correction or {}).get("model", "none"),
                         "correction_networks": (table.correction or {}).get("networks", "random networks")})
    print(f"\nProtocol: batch 1 at each genotype's search input, eval, no grad; the table's threads and allocator; "
          f"{args.repeats} round-robin passes of >= {args.runs} runs after 10 warm-up, median over passes; "
          f"{time.strftime('%Y-%m-%d')}. Command: `{cmd}`\n")
    print("| network | platform | predicted ms (correction) | block sum ms | model ms, median (fastest-slowest pass) | "
          "blocks whole ms | predicted / median | predicted / fastest |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        span = f"{r['model_ms']:.2f} ({r['fastest_ms']:.2f}-{r['slowest_ms']:.2f})"
        if "predicted_ms" not in r:
            print(f"| {r['genotype']} | {r['platform']} | - | - | {span} | - | - | - |")
            continue
        print(f"| {r['genotype']} | {r['platform']} | {r['predicted_ms']:.2f} ({r['correction']}) | "
              f"{r['block_sum_ms']:.2f} | {span} | {r['blocks_ms']:.2f} | "
              f"{r['predicted_ms'] / r['model_ms']:.2f} ({r['error_pct']:+.0f}%) | "
              f"{r['predicted_ms'] / r['fastest_ms']:.2f} ({r['error_fastest_pct']:+.0f}%) |")
    pred_rows = [r for r in rows if "predicted_ms" in r]
    for key, what in (("error_pct", "median pass"), ("error_fastest_pct", "fastest pass")):
        within = [r for r in pred_rows if abs(r[key]) <= 10]
        print(f"within +-10% of the {what}: {len(within)} of {len(pred_rows)}")
    for r in rechecks:
        print(f"{r['platform']}: blocks measured again / table: median {r['median']:.2f} (10-90% {r['p10']:.2f}-"
              f"{r['p90']:.2f}) over {r['blocks']} blocks")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": cmd, "date": time.strftime("%Y-%m-%d"), "rows": rows,
                                              "rechecks": rechecks}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
