"""What makes ``segdistill profile`` differ from a plain timing loop (issue 13).

A user timed lraspp_mobilenetv2 (1x3x180x240, 2 threads) three ways on one machine: a plain loop (``torch.no_grad``,
10 warm-up runs, median of 50+) 45.4 ms, the same loop with glibc's mmap and trim off (``GLIBC_TUNABLES``) 37.6 ms,
and ``segdistill profile`` 30.1 ms. This script times the plain loop and one variant per suspected factor, **side by
side in one run, interleaved**: every case runs in its own fresh Python process (``mallopt`` and ``GLIBC_TUNABLES``
are process-wide, and a process's earlier allocations change what later ones cost), the cases of one repeat run in a
shuffled order, and each case's figure is divided by the plain loop's figure *of the same repeat*. On a shared, loaded
machine the absolute numbers drift; the ratios measured this way are what the script reports.

Cases (each changes one thing from ``plain`` unless it says otherwise):

* ``plain``: ``build_model(NAME, 11).eval()``, ``torch.set_num_threads(T)``, ``with torch.no_grad(): model(x)``,
  10 warm-up calls, the median of the next 50 (glibc malloc untouched). The same run also gives the *mean* of those
  50, their median with no warm-up (calls 0-49) and with 60 warm-up calls (calls 60-109): warm-up, window and
  statistic come from one record, so they cost no extra process;
* ``tunables``: the plain loop with ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295``;
* ``steady_malloc``: the plain loop after ``segdistill.latency.standalone.steady_malloc()`` (``mallopt``);
* ``inference_mode``: ``torch.inference_mode()`` instead of ``torch.no_grad()``;
* ``train_mode``: the model left in training mode (no ``.eval()``; BN uses batch statistics);
* ``deploy``: the module profile times, ``DeployModel`` (the network plus the bilinear resize to the input size);
* ``pinned``: ``OMP_PROC_BIND=close OMP_PLACES=cores`` (threads pinned to cores; profile does not pin);
* ``profile_default`` / ``profile_steady``: ``segdistill.tools.profile.profile_model`` on torch-cpu (profile's own
  code path: deep copy, FLOP count, ``measure_module``) with ``--malloc default`` / ``steady``;
* ``cli``: the command ``segdistill profile NAME --platforms torch-cpu --threads T`` itself (steady malloc, today's
  default), its median read from ``--out``;
* ``jemalloc`` / ``tcmalloc``: the plain loop with glibc's malloc replaced by ``LD_PRELOAD`` (skipped, and said so,
  when the library is not installed; on Debian ``apt-get install libjemalloc2 libtcmalloc-minimal4``).

Run (under 10 minutes on 2 loaded cores with the defaults)::

    python benchmarks/latency_gap.py --threads 2 1 --repeats 3

Writes ``../runs/latency_gap/latency_gap-<date>.json`` (every repeat's figures) and prints a table per thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"

# name -> (what differs from plain, worker settings, extra environment)
CASES: dict[str, tuple[str, dict, dict]] = {
    "plain": ("no_grad, eval, {warmup} warm-up, median of {runs}, glibc default", {}, {}),
    "tunables": ("GLIBC_TUNABLES mmap_max=0, trim off (from process start)", {}, {"GLIBC_TUNABLES": TUNABLES}),
    "steady_malloc": ("steady_malloc() (mallopt) before the loop", {"steady": True}, {}),
    "inference_mode": ("torch.inference_mode instead of no_grad", {"grad": "inference_mode"}, {}),
    "train_mode": ("model not put in eval mode", {"eval": False}, {}),
    "deploy": ("DeployModel (network + resize to input), as profile times", {"deploy": True}, {}),
    "pinned": ("OMP_PROC_BIND=close OMP_PLACES=cores", {}, {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
    "profile_default": ("profile_model(), --malloc default", {"via": "profile", "malloc": "default"}, {}),
    "profile_steady": ("profile_model(), --malloc steady (profile's default)", {"via": "profile", "malloc": "steady"},
                       {}),
    "cli": ("`segdistill profile --platforms torch-cpu` (steady)", {"via": "cli"}, {}),
    "jemalloc": ("LD_PRELOAD=libjemalloc.so.2 (glibc malloc replaced)", {}, {"LD_PRELOAD": "jemalloc"}),
    "tcmalloc": ("LD_PRELOAD=libtcmalloc_minimal.so.4 (glibc malloc replaced)", {}, {"LD_PRELOAD": "tcmalloc"}),
}
PRELOADS = {"jemalloc": ("libjemalloc.so.2", "jemalloc"), "tcmalloc": ("libtcmalloc_minimal.so.4", "tcmalloc_minimal")}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_preload(which: str) -> str | None:
    """Path of the jemalloc / tcmalloc shared library (Debian: apt-get install libjemalloc2 libtcmalloc-minimal4)."""
    import ctypes.util

    soname, short = PRELOADS[which]
    for d in LIB_DIRS:
        if (Path(d) / soname).is_file():
            return str(Path(d) / soname)
    return ctypes.util.find_library(short)
DEFAULT_CASES = list(CASES)


# ---------------------------------------------------------------------------- one case, in its own process
def worker(spec: dict) -> dict:
    """Time one case in this (fresh) process; returns its figures."""
    import torch

    torch.set_num_threads(spec["threads"])
    shape = tuple(spec["shape"])
    if spec.get("via") == "profile":
        from segdistill.models import build_model
        from segdistill.tools.profile import profile_model

        model = build_model(spec["model"], 11).eval()
        res = profile_model(model, shape, platforms=("torch-cpu",), warmup=spec["warmup"], runs=spec["runs"],
                            malloc=spec["malloc"])
        lat = res["latency"]["torch-cpu"]
        return {"median_ms": lat["median_ms"], "mean_ms": lat["mean_ms"], "min_ms": lat["min_ms"],
                "malloc": lat.get("malloc"), "threads": res["threads"]}
    from segdistill.latency.standalone import steady_malloc
    from segdistill.models import build_model
    from segdistill.models.output import DeployModel

    if spec.get("steady"):
        malloc = steady_malloc()
    elif os.environ.get("LD_PRELOAD"):
        malloc = f"LD_PRELOAD={Path(os.environ['LD_PRELOAD']).name}"
    else:
        malloc = "glibc default" + (" + GLIBC_TUNABLES" if os.environ.get("GLIBC_TUNABLES") else "")
    model = build_model(spec["model"], 11)
    if spec.get("eval", True):
        model.eval()
    if spec.get("deploy"):
        model = DeployModel(model).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ctx = torch.inference_mode if spec.get("grad") == "inference_mode" else torch.no_grad
    times, faults = [], []
    with ctx():
        for _ in range(spec["warmup"] + spec["runs"] + spec.get("extra", 0)):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    w, n = spec["warmup"], spec["runs"]
    win = times[w:w + n]
    out = {"median_ms": statistics.median(win), "mean_ms": statistics.fmean(win), "min_ms": min(win), "malloc": malloc,
           "threads": torch.get_num_threads(), "page_faults_per_call": statistics.fmean(faults[w:w + n])}
    if spec.get("extra"):
        out["median_no_warmup_ms"] = statistics.median(times[:n])
        out["median_long_warmup_ms"] = statistics.median(times[-n:])
        out["long_warmup"] = len(times) - n
    return out


def run_case(name: str, threads: int, args) -> dict:
    what, settings, env_extra = CASES[name]
    spec = {"model": args.model, "shape": [1, *args.input], "threads": threads, "warmup": args.warmup,
            "runs": args.runs, **settings}
    if name == "plain":
        spec["extra"] = args.runs + 10  # a second window after 60 warm-up calls in all
    if "LD_PRELOAD" in env_extra:
        lib = find_preload(env_extra["LD_PRELOAD"])
        if not lib:
            return {"case": name, "threads": threads, "skipped": f"{PRELOADS[env_extra['LD_PRELOAD']][0]} not found"}
        env_extra = {"LD_PRELOAD": lib}
    env = {**os.environ, **env_extra}
    env.pop("SEGDISTILL_MALLOC", None)
    if "GLIBC_TUNABLES" not in env_extra:
        env.pop("GLIBC_TUNABLES", None)
    t0 = time.perf_counter()
    if settings.get("via") == "cli":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile.json"
            cmd = [sys.executable, "-m", "segdistill", "profile", args.model, "--input", "x".join(map(str, args.input)),
                   "--platforms", "torch-cpu", "--threads", str(threads), "--warmup", str(args.warmup), "--runs",
                   str(args.runs), "--out", str(out)]
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=args.case_timeout)
            data = json.loads(out.read_text())
        lat = data["latency"]["torch-cpu"]
        res = {"median_ms": lat["median_ms"], "mean_ms": lat["mean_ms"], "min_ms": lat["min_ms"],
               "malloc": lat.get("malloc"), "threads": data["threads"]}
    else:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=ROOT,
                              check=True, capture_output=True, text=True, timeout=args.case_timeout)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"case": name, "threads": threads, **res, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------- the comparison
def summarise(rows: list[dict], cases: list[str], threads: int, warmup: int = 10, runs: int = 50) -> list[dict]:
    """Per case: median over repeats of its median, and of its ratio to the plain loop of the same repeat."""
    mine = [r for r in rows if r["threads"] == threads and "median_ms" in r]  # stopped cases left out
    plain = {r["repeat"]: r for r in mine if r["case"] == "plain"}
    out = []
    for case in cases:
        rs = [r for r in mine if r["case"] == case and r["repeat"] in plain]
        if not rs:
            continue
        ratios = [r["median_ms"] / plain[r["repeat"]]["median_ms"] for r in rs]
        fastest = [r["min_ms"] / plain[r["repeat"]]["min_ms"] for r in rs]
        out.append({"case": case, "what": CASES[case][0].format(warmup=warmup, runs=runs),
                    "median_ms": statistics.median(r["median_ms"] for r in rs),
                    "mean_ms": statistics.median(r["mean_ms"] for r in rs),
                    "min_ms": statistics.median(r["min_ms"] for r in rs), "ratio": statistics.median(ratios),
                    "faults": (statistics.median(r["page_faults_per_call"] for r in rs)
                               if all("page_faults_per_call" in r for r in rs) else None),
                    "ratio_min": min(ratios), "ratio_max": max(ratios), "min_ratio": statistics.median(fastest),
                    "n": len(rs), "malloc": rs[0].get("malloc")})
    base = [plain[k] for k in sorted(plain)]
    if base and "median_no_warmup_ms" in base[0]:  # warm-up and window from the plain loop's own record
        for key, what in (("mean_ms", "plain, mean instead of median"),
                          ("median_no_warmup_ms", f"plain, no warm-up (calls 0-{runs - 1})"),
                          ("median_long_warmup_ms", f"plain, {base[0]['long_warmup']} warm-up calls")):
            ratios = [b[key] / b["median_ms"] for b in base]
            out.append({"case": f"plain:{key.replace('_ms', '')}", "what": what,
                        "median_ms": statistics.median(b[key] for b in base), "mean_ms": None, "min_ms": None,
                        "min_ratio": None,
                        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                        "n": len(base), "malloc": base[0].get("malloc")})
    return out


def format_table(summary: list[dict], threads: int, repeats: int) -> str:
    lines = [f"threads {threads}, {repeats} repeats. ms: the case's median latency, median over repeats; ratio: case / "
             "plain of the same repeat, median [min - max] over repeats; fastest-call ratio: the same for each "
             "run's fastest call (least disturbed by other load); page faults/call: minor page faults per timed call "
             "(getrusage; plain-loop cases only)",
             f"| {'case':<26} | {'what differs from plain':<60} | {'ms':>7} | {'ratio to plain':<22} | "
             f"{'fastest-call ratio':>18} | {'page faults/call':>16} |",
             f"|{'-' * 28}|{'-' * 62}|{'-' * 9}|{'-' * 24}|{'-' * 20}|{'-' * 18}|"]
    for s in summary:
        ratio = f"{s['ratio']:.3f} [{s['ratio_min']:.3f} - {s['ratio_max']:.3f}]"
        fast = "-" if s.get("min_ratio") is None else f"{s['min_ratio']:.3f}"
        faults = "-" if s.get("faults") is None else f"{s['faults']:.0f}"
        lines.append(f"| {s['case']:<26} | {s['what']:<60} | {s['median_ms']:7.2f} | {ratio:<22} | {fast:>18} | "
                     f"{faults:>16} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lraspp_mobilenetv2")
    p.add_argument("--input", default="3x180x240", help="C x H x W (batch 1)")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    p.add_argument("--seed", type=int, default=0, help="seed of the case order within each repeat")
    p.add_argument("--case-timeout", type=float, default=180, help="seconds before one case's process is stopped")
    p.add_argument("--out-dir", default=str(ROOT.parent / "runs" / "latency_gap"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit: subprocess.run kills the running case
    args.input = [int(v) for v in args.input.lower().split("x")]
    cases = ["plain"] + [c for c in args.cases if c != "plain"]
    import torch

    from segdistill.latency.standalone import library_versions, machine_info, now_iso

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["latency_gap.py", *argv])
    load_before = os.getloadavg()
    print(f"command: {command}")
    print(f"model {args.model} @ 1x{'x'.join(map(str, args.input))}; threads {args.threads}; repeats {args.repeats}; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"latency_gap-{time.strftime('%Y%m%d-%H%M%S')}.json"  # rewritten after every case
    rng = random.Random(args.seed)
    rows, t0 = [], time.perf_counter()
    for rep in range(args.repeats):
        for threads in args.threads:
            order = cases[:]
            rng.shuffle(order)
            for case in order:
                try:
                    row = run_case(case, threads, args)
                except subprocess.TimeoutExpired:  # e.g. 2 threads on 2 cores while another process runs
                    row = {"case": case, "threads": threads, "timeout": args.case_timeout}
                row.update(repeat=rep, load1=os.getloadavg()[0])
                rows.append(row)
                path.write_text(json.dumps({"command": command, "partial": True, "rows": rows}, indent=1))
                took = (f"{row['median_ms']:8.2f} ms" if "median_ms" in row else row.get("skipped") or
                        f"stopped after {args.case_timeout:.0f} s")
                print(f"  repeat {rep + 1} threads {threads} {case:<16} {took} (load {row['load1']:.2f}"
                      + (f", {row['seconds']:.1f} s)" if "seconds" in row else ")"), flush=True)
    load_after = os.getloadavg()
    result = {"command": command, "model": args.model, "input": [1, *args.input], "threads": args.threads,
              "repeats": args.repeats, "warmup": args.warmup, "runs": args.runs, "cases": cases,
              "load_before": load_before, "load_after": load_after,
              "load1_during": [min(r["load1"] for r in rows), max(r["load1"] for r in rows)],
              "stopped": [f"repeat {r['repeat'] + 1} threads {r['threads']} {r['case']}" for r in rows if "timeout" in r],
              "minutes": (time.perf_counter() - t0) / 60, "device": machine_info(), "versions": library_versions(),
              "date": now_iso(), "rows": rows,
              "summary": {str(t): summarise(rows, cases, t, args.warmup, args.runs) for t in args.threads}}
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; 1-minute load during "
          f"{result['load1_during'][0]:.2f} - {result['load1_during'][1]:.2f}; {result['minutes']:.1f} min")
    if result["stopped"]:
        print(f"stopped after {args.case_timeout:.0f} s (left out of the table): {', '.join(result['stopped'])}")
    for t in args.threads:
        print(format_table(result["summary"][str(t)], t, args.repeats))
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
