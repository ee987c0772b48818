"""How far apart two rows must be before the search benchmark can tell them apart: seed spread against network spread.

Reads the retrained rows of ``benchmarks/camvid_search.py`` archives (``<archive>/<row>/seed<k>/result.json``; the
superseded ``seed<k>-before-*`` runs are left out), keeps the rows that match ``--rows`` (shell patterns) and the
budget, and treats each row as one network retrained with several seeds. Then:

* **within a network** (seed noise): the pooled standard deviation ``s_w`` of the seeds about their row's mean;
* **between networks**: a one-way ANOVA (``F = MS_between / MS_within``, its p-value from scipy) and the random-effects
  variance component ``s_b^2 = max(0, (MS_between - MS_within) / n0)`` (n0: the effective seeds per row), i.e. how
  much of the spread among the rows' means is more than seed noise;
* **contrasts** (``--contrast 'A:B'``, patterns): the difference of the mean of A's seeds and the mean of B's seeds with
  its 95% interval from the pooled ``s_w`` (t on the ANOVA's within df). It counts seeds, not networks, so it holds
  when the networks in A or B do not differ beyond seed noise (``s_b`` near 0); the ANOVA above says whether they do;
* **the teacher's ceiling** (``--teacher RESULT_JSON``, a camvid_baselines.py teacher result): per class, the teacher's
  IoU beside the mean over every seed of the rows. Distilled students that reach the teacher on every class it
  segments (and stay at 0 where it does) have no room left for an architecture to show;
* **resolution**: the smallest difference between two rows' means that a two-sided t-test (alpha 0.05) finds with
  power 0.8 when each row has n seeds, ``d = (t_{1-alpha/2, df} + t_{0.8, df}) * s_w * sqrt(2 / n)`` with
  ``df = 2n - 2`` (the usual normal-to-t approximation), and the seeds per row a difference of 1 or 2 mIoU needs.

    python benchmarks/seed_spread.py                                   # the Xeon set's 20 ms rows
    python benchmarks/seed_spread.py --archive benchmarks/results/camvid_search --rows 'torch20,abl_*,random?,p_*,w_*'
    python benchmarks/seed_spread.py --contrast 'torch20:random?' --contrast 'torch20:abl_cekd'
    python benchmarks/seed_spread.py --png ../runs/seed_spread.png    # a dot plot: every seed of every row

Needs scipy (``pip install -e .[bench]``; ``.[all]`` has it).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = re.compile(r"seed\d+")


@dataclass
class Row:
    name: str
    mious: list[float]  # val mIoU in percent, one per seed
    seeds: list[int]
    ious: list[list[float]]  # per seed, per-class IoU in percent
    class_names: list[str]

    @property
    def mean(self) -> float:
        return sum(self.mious) / len(self.mious)


def load_rows(archive: Path, patterns: list[str], budget: float | None, platform: str) -> tuple[list[Row], set[str]]:
    """Rows of one archive whose name matches a pattern (and whose budget is ``budget`` on ``platform``, when given);
    also the set of (recipe, iterations, batch, teacher) keys they were retrained with, which must be one."""
    if not archive.is_dir():
        raise SystemExit(f"{archive}: no such archive folder (benchmarks/camvid_search.py --archive writes one)")
    rows, recipes = [], set()
    for row_dir in sorted(p for p in archive.iterdir() if p.is_dir()):
        if not any(fnmatch.fnmatchcase(row_dir.name, pat) for pat in patterns):
            continue
        mious, seeds, ious, names = [], [], [], []
        for seed_dir in sorted(row_dir.iterdir()):
            f = seed_dir / "result.json"
            if not (SEED_DIR.fullmatch(seed_dir.name) and f.is_file()):
                continue
            try:
                res = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise SystemExit(f"{f}: not valid JSON ({e}); run the row again with camvid_search.py --force") from e
            if budget is not None and (res.get("budget_ms") != budget or res.get("platform") != platform):
                break
            mious.append(100 * res["miou"])
            seeds.append(res["seed"])
            ious.append([100 * v for v in res.get("iou", [])])
            names = res.get("class_names", names)
            teacher = (res.get("teacher") or {}).get("sha256", "the first teacher")
            recipes.add(f"recipe {res.get('recipe')}, {res.get('iters')} iterations at batch {res.get('batch_size')}, "
                        f"teacher {teacher}")
        if mious:
            rows.append(Row(row_dir.name, mious, seeds, ious, names))
    return rows, recipes


def anova(rows: list[Row]) -> dict:
    """One-way ANOVA with unequal seeds per row, and the random-effects variance components (Searle's n0)."""
    from scipy import stats

    n_tot = sum(len(r.mious) for r in rows)
    k = len(rows)
    grand = sum(sum(r.mious) for r in rows) / n_tot
    ss_w = sum((x - r.mean) ** 2 for r in rows for x in r.mious)
    ss_b = sum(len(r.mious) * (r.mean - grand) ** 2 for r in rows)
    df_w, df_b = n_tot - k, k - 1
    if df_w < 1 or df_b < 1:
        raise SystemExit(f"{k} rows with {n_tot} seeds in all: the ANOVA needs two rows and a row with two seeds")
    ms_w, ms_b = ss_w / df_w, ss_b / df_b
    n0 = (n_tot - sum(len(r.mious) ** 2 for r in rows) / n_tot) / df_b
    f = ms_b / ms_w if ms_w > 0 else math.inf
    return {"rows": k, "seeds": n_tot, "grand_mean": grand, "s_within": math.sqrt(ms_w), "df_within": df_w,
            "F": f, "df_between": df_b, "p": float(stats.f.sf(f, df_b, df_w)),
            "s_between": math.sqrt(max(0.0, (ms_b - ms_w) / n0)), "n0": n0}


def detectable(s_w: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference of two rows' means (n seeds each) a two-sided t-test finds at this alpha and power."""
    from scipy import stats

    df = 2 * n - 2
    return (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * s_w * math.sqrt(2 / n)


def contrast(rows: list[Row], a_pat: str, b_pat: str, s_w: float, df: int) -> tuple[float, float, int, int]:
    """Mean of the seeds of the rows matching ``a_pat`` minus that of ``b_pat``, and its 95% half-width."""
    from scipy import stats

    def seeds(pat):
        xs = [x for r in rows if fnmatch.fnmatchcase(r.name, pat) for x in r.mious]
        if not xs:
            raise SystemExit(f"--contrast: no row matches {pat!r} (rows: {', '.join(r.name for r in rows)})")
        return xs

    xa, xb = seeds(a_pat), seeds(b_pat)
    half = stats.t.ppf(0.975, df) * s_w * math.sqrt(1 / len(xa) + 1 / len(xb))
    return sum(xa) / len(xa) - sum(xb) / len(xb), half, len(xa), len(xb)


def teacher_ceiling(rows: list[Row], teacher_json: Path) -> tuple[float, list[tuple[str, float, float]]]:
    """The teacher's mIoU, and (class, teacher IoU, mean IoU over every seed of ``rows``) per class, in percent."""
    try:
        t = json.loads(teacher_json.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--teacher {teacher_json}: cannot read it ({e}); give a teacher's result.json") from e
    if "iou" not in t or "class_names" not in t:
        raise SystemExit(f"--teacher {teacher_json}: no per-class 'iou' and 'class_names' in it")
    seeds = [x for r in rows for x in r.ious]
    if any(r.class_names != t["class_names"] or any(len(x) != len(t["iou"]) for x in r.ious) for r in rows):
        raise SystemExit(f"--teacher {teacher_json}: its classes are not the rows' classes")
    return 100 * t["miou"], [(name, 100 * t["iou"][i], sum(x[i] for x in seeds) / len(seeds))
                             for i, name in enumerate(t["class_names"])]


def seeds_needed(s_w: float, diff: float, limit: int = 10_000) -> int | None:
    """Seeds per row for ``detectable`` to reach ``diff`` (None past ``limit``)."""
    return next((n for n in range(2, limit) if detectable(s_w, n) <= diff), None)


def plot(rows: list[Row], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r.mean)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    for y, r in enumerate(rows):
        ax.scatter(r.mious, [y] * len(r.mious), s=18, color="tab:blue", zorder=3)
        ax.plot([r.mean, r.mean], [y - 0.3, y + 0.3], color="black", lw=2)
    ax.set_yticks(range(len(rows)), [f"{r.name} ({len(r.mious)})" for r in rows])
    ax.set_xlabel("val mIoU (%): dots = seeds, bar = mean")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", default=str(REPO / "benchmarks" / "results" / "camvid_search_xeon"),
                   help="a camvid_search.py --archive folder")
    p.add_argument("--rows", default="torch20,abl_cekd,long_*,random?",
                   help="comma-separated shell patterns of row names")
    p.add_argument("--budget", type=float, default=20.0, help="keep rows searched or drawn at this budget (ms); "
                                                              "0 keeps every matching row")
    p.add_argument("--platform", default="torch-cpu")
    p.add_argument("--contrast", action="append", default=[], metavar="A:B",
                   help="difference of mean mIoU of the rows matching A and those matching B, with its 95%% interval")
    p.add_argument("--teacher", help="the teacher's result.json: per-class IoU of the teacher beside the rows' mean")
    p.add_argument("--png", help="write a dot plot of every seed here")
    args = p.parse_args()
    print(f"command: python benchmarks/seed_spread.py {shlex.join(sys.argv[1:])}")
    rows, recipes = load_rows(Path(args.archive), args.rows.split(","), args.budget or None, args.platform)
    if len(recipes) > 1:
        raise SystemExit("these rows were retrained at different budgets or from different teachers, so their seeds do "
                         "not share one noise:\n  " + "\n  ".join(sorted(recipes)))
    print(f"protocol: camvid-cpu val mIoU of each seed's best.pt; retrained with {next(iter(recipes), '?')}")
    print("\n| row | seeds | mIoU mean | sd | per seed |\n|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r.mean):
        sd = math.sqrt(sum((x - r.mean) ** 2 for x in r.mious) / (len(r.mious) - 1)) if len(r.mious) > 1 else float("nan")
        print(f"| {r.name} | {len(r.mious)} | {r.mean:.2f} | {sd:.2f} | "
              + ", ".join(f"{x:.2f} (seed {s})" for x, s in zip(r.mious, r.seeds)) + " |")
    a = anova(rows)
    print(f"\n{a['rows']} networks, {a['seeds']} retrained seeds, mean {a['grand_mean']:.2f}")
    print(f"within a network (seed noise): pooled sd s_w = {a['s_within']:.2f} mIoU (df {a['df_within']})")
    print(f"between networks: F({a['df_between']}, {a['df_within']}) = {a['F']:.2f}, p = {a['p']:.2g}; "
          f"variance component s_b = {a['s_between']:.2f} mIoU (n0 {a['n0']:.2f})")
    for item in args.contrast:
        a_pat, _, b_pat = item.partition(":")
        d, half, na, nb = contrast(rows, a_pat, b_pat, a["s_within"], a["df_within"])
        print(f"contrast {a_pat} ({na} seeds) - {b_pat} ({nb} seeds): {d:+.2f} mIoU, 95% interval "
              f"[{d - half:+.2f}, {d + half:+.2f}]")
    if args.teacher:
        t_miou, table = teacher_ceiling(rows, Path(args.teacher))
        print(f"\nthe teacher's ceiling: teacher {t_miou:.2f} mIoU, the rows' seeds {a['grand_mean']:.2f} "
              f"({a['grand_mean'] / t_miou:.1%} of it)")
        print("| class | teacher IoU | rows' mean IoU | rows - teacher |\n|---|---|---|---|")
        for name, ti, ri in table:
            print(f"| {name} | {ti:.1f} | {ri:.1f} | {ri - ti:+.1f} |")
    print("\nresolution (two-sided t-test, alpha 0.05, power 0.8, s_w as above):")
    print("| seeds per row | smallest difference found (mIoU) |\n|---|---|")
    for n in (2, 4, 8, 16):
        print(f"| {n} | {detectable(a['s_within'], n):.2f} |")
    for diff in (1.0, 2.0):
        n = seeds_needed(a["s_within"], diff)
        print(f"a {diff:g} mIoU difference needs {n if n else 'over 10,000'} seeds per row")
    if args.png:
        plot(rows, f"{Path(args.archive).name}: {args.rows} (budget {args.budget:g} ms)\nseed sd s_w {a['s_within']:.2f}, "
                   f"network sd s_b {a['s_between']:.2f}, ANOVA p {a['p']:.2g}", Path(args.png))


if __name__ == "__main__":
    main()
