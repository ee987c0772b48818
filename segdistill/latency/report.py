"""The predictor's accuracy report: predicted versus measured latency of random networks and every zoo model.

For each platform and input size (``segdistill latency report``):

1. sample ``nets`` random networks from the block library (``network.sample_network``; the same networks on every
   platform) and decompose every zoo model (``zoo.decompose_model``);
2. measure every block and fixed part they use into the platform's table (``lut-PLATFORM.json`` in the output folder;
   an existing one is reused and extended, so a rerun measures only what is new);
3. measure each network whole ``repeats`` times: random networks round-robin (repeat r of every network before
   repeat r + 1, so slow drifts of the machine show up as spread, not as error), zoo models back to back;
   the measured latency is the median of the repeat medians;
4. fit the correction on the random networks of all input sizes (``predictor.select_correction``); a random network's
   prediction is *out of fold* (5-fold: the correction that predicts it never saw it), a zoo model's uses the
   correction fitted on all random networks (zoo models are never fitted on). A second protocol fits on random and
   zoo networks together, every network predicted out of fold with folds grouped by network (a zoo model's two input
   sizes share a fold); its correction is the one stored in the table;
5. report, per input and overall: share within +-10%, mean absolute percentage error (MAPE), Spearman's rank
   correlation, the same for the raw sum (no correction), and the *measurement noise* beside them: the spread of the
   repeats ((max - min) / median) and the repeat MAPE (each repeat taken as a prediction of the median of the others),
   the error a perfect predictor would show against a single measurement. Scatter plots (PNG), ``report.json`` and
   ``report.md`` (platforms run separately into the same folder with the same settings are merged).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import LatencyError
from . import standalone as core
from .lut import LatencyTable
from .network import ChainNet, NetSpec, build_chain_net, sample_networks
from .predictor import LatencyPredictor, apply_correction, cross_val_predictions, select_correction


@dataclass
class ReportConfig:
    platforms: list[str] = field(default_factory=lambda: ["torch-cpu", "onnxruntime-cpu"])
    inputs: list[tuple[int, ...]] = field(default_factory=lambda: [(1, 3, 180, 240), (1, 3, 360, 480)])
    nets: int = 50
    repeats: int = 3
    threads: int = 2
    seed: int = 0
    num_classes: int = 11
    zoo: list[str] | None = None  # None: every registered model
    zoo_width: float = 1.0
    block_timing: dict = field(default_factory=lambda: dict(core.DEFAULT_TIMING))
    net_timing: dict = field(default_factory=lambda: {"warmup": 5, "min_runs": 20, "min_time": 1.0})
    exporter: str = "auto"
    isolate: bool = False
    out_dir: str = "benchmarks/latency"
    folds: int = 5
    malloc: str = "steady"  # torch-cpu allocator: steady (standalone.steady_malloc) or default (glibc untouched)

    @classmethod
    def quick(cls, **kw) -> "ReportConfig":
        """A smoke run of a minute or two: tiny input, few networks, few runs, three small zoo models."""
        tiny = {"warmup": 2, "min_runs": 5, "min_time": 0.02}
        base = dict(inputs=[(1, 3, 64, 80)], nets=8, repeats=2,
                    zoo=["lraspp_mobilenetv2", "fcn_resnet18", "segformer_mitb0"], zoo_width=0.25,
                    block_timing=tiny, net_timing=tiny, exporter="torchscript", threads=1, out_dir="runs/latency-quick")
        return cls(**{**base, **{k: v for k, v in kw.items() if v is not None}})


# ---------------------------------------------------------------------------- statistics
def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # ties share their mean rank
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks, ties at their mean rank)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den else float("nan")


def accuracy(pred, measured) -> dict:
    """``n``, ``within10_pct`` (share with |pred - y| <= 10% of y), ``mape_pct``, ``max_ape_pct``, ``spearman``."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if not len(y):
        return {"n": 0}
    ape = np.abs(pred - y) / y * 100
    return {"n": int(len(y)), "within10_pct": float((ape <= 10 + 1e-9).mean() * 100), "mape_pct": float(ape.mean()),
            "max_ape_pct": float(ape.max()), "spearman": spearman(pred, y)}


def noise(repeats: list[list[float]]) -> dict:
    """Spread of repeated measurements of the same networks: ``spread_median_pct`` / ``spread_p90_pct`` of
    (max - min) / median per network, ``repeat_mape_pct`` and ``repeat_within10_pct`` of each repeat taken as a
    prediction of the median of the other repeats."""
    spreads, apes = [], []
    for reps in repeats:
        if len(reps) < 2:
            continue
        med = statistics.median(reps)
        spreads.append((max(reps) - min(reps)) / med * 100)
        for i, r in enumerate(reps):
            others = statistics.median(reps[:i] + reps[i + 1:])
            apes.append(abs(r - others) / others * 100)
    if not spreads:
        return {}
    return {"spread_median_pct": float(np.median(spreads)), "spread_p90_pct": float(np.percentile(spreads, 90)),
            "repeat_mape_pct": float(np.mean(apes)),
            "repeat_within10_pct": float(np.mean(np.array(apes) <= 10 + 1e-9) * 100)}


# ---------------------------------------------------------------------------- measuring networks
def _zoo_module(spec: str):
    """(model + final resize, [input shape]) of a zoo model spec: picklable, for an isolated measurement."""
    from ..models import DeployModel
    from .zoo import decomposition, parse_model_spec

    return DeployModel(decomposition(spec).model).eval(), [parse_model_spec(spec)["input_shape"][1:]]


def _measure_built(builder, arg, platform: str, threads: int, timing: dict, repeats: int, plugins=()) -> list[float]:
    """Build a network and time it ``repeats`` times on one prepared runner; medians in ms."""
    for p in plugins:
        core.load_plugin(p)
    module, shapes = builder(arg)
    plat = core.get_platform(platform)
    with core.torch_threads(threads):
        runner = plat.prepare(module.eval(), core.example_inputs(shapes), threads)
        return [core.measure_latency(runner.fn, sync=False, **timing)["median_ms"] for _ in range(repeats)]


class NetTimer:
    """Times networks on one platform; round-robin repeats share one prepared runner per network unless isolated."""

    def __init__(self, cfg: ReportConfig, platform: str):
        self.cfg, self.platform = cfg, platform

    def once(self, builder, arg) -> list[float]:
        cfg = self.cfg
        args = (builder, arg, self.platform, cfg.threads, cfg.net_timing)
        if cfg.isolate:
            return [core.run_isolated(_measure_built, *args, 1, list(core.LOADED_PLUGINS))[0]
                    for _ in range(cfg.repeats)]
        return _measure_built(*args, cfg.repeats)

    def round_robin(self, nets: list[NetSpec], progress) -> dict[str, list[float]]:
        cfg, out = self.cfg, {n.name: [] for n in nets}
        if cfg.isolate:
            for r in range(cfg.repeats):
                for net in progress(nets, f"{self.platform}: random networks, repeat {r + 1}/{cfg.repeats}"):
                    out[net.name] += core.run_isolated(_measure_built, build_chain_net, net.to_dict(), self.platform,
                                                       cfg.threads, cfg.net_timing, 1, list(core.LOADED_PLUGINS))
            return out
        plat = core.get_platform(self.platform)
        with core.torch_threads(cfg.threads):
            runners = {n.name: plat.prepare(ChainNet(n).eval(), core.example_inputs([n.input_shape[1:]]), cfg.threads)
                       for n in progress(nets, f"{self.platform}: preparing random networks")}
            for r in range(cfg.repeats):
                for net in progress(nets, f"{self.platform}: random networks, repeat {r + 1}/{cfg.repeats}"):
                    res = core.measure_latency(runners[net.name].fn, sync=False, **cfg.net_timing)
                    out[net.name].append(res["median_ms"])
        return out


# ---------------------------------------------------------------------------- the report
def _table_for(cfg: ReportConfig, platform: str) -> LatencyTable:
    path = Path(cfg.out_dir) / f"lut-{platform}.json"
    if path.is_file():
        table = LatencyTable.load(path)
        if table.threads == cfg.threads and table.data["timing"] == cfg.block_timing and not table.local_problem():
            core.check_table_malloc(table.data, cfg.malloc, f"{path} (use another --out-dir)")
            return table
        raise LatencyError(f"{path} was measured with other settings or elsewhere (threads {table.threads}, timing "
                           f"{table.data['timing']}); use another --out-dir or delete it")
    table = LatencyTable.new(platform, cfg.threads, cfg.block_timing)  # inside malloc_mode: records cfg.malloc
    table.path = path
    return table


def run_report(cfg: ReportConfig, progress: bool = True, log=print) -> dict:
    """Run the whole report (see the module docstring); writes into ``cfg.out_dir`` and returns the results.
    torch-cpu is measured in malloc mode ``cfg.malloc``; ``default`` in a process that already set the steady
    allocator measures every network and block in a fresh process (``isolate``), since mallopt cannot be undone."""
    if core.default_needs_fresh_process(cfg.malloc) and not cfg.isolate:
        log("malloc default: this process already set the steady allocator, so every measurement runs isolated")
        cfg = replace(cfg, isolate=True)
    with core.malloc_mode(cfg.malloc):
        return _run_report(cfg, progress, log)


def _run_report(cfg: ReportConfig, progress: bool, log) -> dict:
    from ..models import list_models
    from .zoo import decomposition, model_spec

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    def bar(items, desc):
        return core.progress_bar(items, desc, progress)

    zoo_names = cfg.zoo if cfg.zoo is not None else list_models()
    results = {"config": asdict(cfg), "device": core.machine_info(), "versions": core.library_versions(),
               "date": core.now_iso(), "platforms": {}}
    nets_by_input = {tuple(s): sample_networks(cfg.nets, s, cfg.seed, cfg.num_classes) for s in cfg.inputs}
    for platform in cfg.platforms:
        plat = core.get_platform(platform)
        if plat.available():
            log(f"{platform}: skipped ({plat.available()})")
            results["platforms"][platform] = {"skipped": plat.available()}
            continue
        t0 = time.perf_counter()
        table = _table_for(cfg, platform)
        predictor = LatencyPredictor(table, measure=True, progress=progress)
        timer = NetTimer(cfg, platform)
        rows = []
        for shape in cfg.inputs:
            size = "x".join(map(str, shape[1:]))
            nets = nets_by_input[tuple(shape)]
            log(f"{platform} @ {size}: measuring blocks of {len(nets)} random networks")
            table.ensure([k for n in nets for k in n.keys()], progress=progress, isolate=cfg.isolate)
            table.note_built_for(f"{len(nets)} random networks (seed {cfg.seed}) @ 1x{size}")
            table.save()
            measured = timer.round_robin(nets, bar)
            for net in nets:
                row = _row(predictor, net, measured[net.name])
                rows.append({"name": net.name, "kind": "random", "input": size, **row})
            for name in bar(zoo_names, f"{platform} @ {size}: zoo models"):
                spec = model_spec(name, cfg.num_classes, cfg.zoo_width, None, shape[-2:])
                net = decomposition(spec).net
                table.ensure(net.keys(), progress=False, isolate=cfg.isolate)
                table.note_built_for(f"model {name} (width {cfg.zoo_width:g}) @ 1x{size}")
                table.save()
                row = _row(predictor, net, timer.once(_zoo_module, spec))
                rows.append({"name": name, "kind": "zoo", "input": size, **row})
        res = _conclude(cfg, out, platform, table, rows)
        res["minutes"] = (time.perf_counter() - t0) / 60
        results["platforms"][platform] = res
        log(_summary_line(platform, res))
    _merge_earlier(out / "report.json", results)
    _write(out, results, log)
    return results


def _conclude(cfg: ReportConfig, out: Path, platform: str, table: LatencyTable, rows: list[dict]) -> dict:
    """Evaluate one platform's measured rows, store the correction in its table, draw its scatter plot."""
    res = _evaluate(cfg, rows)
    table.correction = res["correction_all"]  # the table keeps the fit on every measured network
    table.save()
    res["table"] = str(table.path)
    res["scatter"] = str(_scatter(out / f"scatter-{platform}.png", platform, rows, res))
    return res


def _write(out: Path, results: dict, log) -> None:
    (out / "report.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "report.md").write_text(format_markdown(results))
    log(f"wrote {out / 'report.md'}, {out / 'report.json'} and the scatter plots")


def refit_report(out_dir: str, log=print) -> dict:
    """Recompute a finished report's predictions from its saved measurements and tables, measuring nothing
    (``segdistill latency report --refit --out-dir DIR``): after the correction candidates change, the same measured
    networks are predicted again (random ones out of fold, zoo ones by the fit on all random networks). Each network's
    raw sum is checked against the one saved, so a table changed since the report is refused."""
    from .zoo import decomposition, model_spec

    out = Path(out_dir)
    try:
        results = json.loads((out / "report.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatencyError(f"cannot read {out / 'report.json'} ({e}); run the report first") from e
    c = dict(results["config"])
    c["inputs"] = [tuple(s) for s in c["inputs"]]
    cfg = ReportConfig(**c)
    nets = {n.name: n for s in cfg.inputs for n in sample_networks(cfg.nets, s, cfg.seed, cfg.num_classes)}
    for platform, res in results["platforms"].items():
        if "skipped" in res:
            continue
        table = LatencyTable.load(out / f"lut-{platform}.json")
        predictor = LatencyPredictor(table, measure=False)
        rows = []
        for r in res["rows"]:
            if r["kind"] == "random":
                net = nets[r["name"]]
            else:
                hw = tuple(int(v) for v in r["input"].split("x")[-2:])
                net = decomposition(model_spec(r["name"], cfg.num_classes, cfg.zoo_width, None, hw)).net
            new = _row(predictor, net, r["repeats_ms"])
            if not math.isclose(new["raw_ms"], r["raw_ms"], rel_tol=1e-9):
                raise LatencyError(f"{r['name']} @ {r['input']}: raw sum {new['raw_ms']:.4f} ms from "
                                   f"{table.path} but {r['raw_ms']:.4f} ms in the report; the table changed since")
            rows.append({"name": r["name"], "kind": r["kind"], "input": r["input"], **new})
        res.update(_conclude(cfg, out, platform, table, rows), refitted=core.now_iso())
        log(_summary_line(platform, res))
    _write(out, results, log)
    return results


def _merge_earlier(path: Path, results: dict) -> None:
    """Keep the other platforms of an earlier report in the same folder made with the same settings, so that each
    platform can be run on its own (``--platforms torch-cpu``, then ``--platforms onnxruntime-cpu``)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    def settings(r: dict) -> dict:
        conf = {"malloc": "steady", **json.loads(json.dumps(r["config"]))}  # reports before --malloc were steady
        return {k: v for k, v in conf.items() if k != "platforms"}

    if settings(old) != settings(results):
        return
    earlier = {k: v for k, v in old.get("platforms", {}).items() if k not in results["platforms"]}
    results["platforms"] = {**earlier, **results["platforms"]}
    results["config"]["platforms"] = list(results["platforms"])


def _row(predictor: LatencyPredictor, net: NetSpec, reps: list[float]) -> dict:
    b = predictor.breakdown(net)
    return {"measured_ms": statistics.median(reps), "repeats_ms": reps, "raw_ms": b["raw_ms"],
            "n_blocks": b["n_blocks"], "fixed_ms": b["fixed_ms"], "features": b["features"]}


def _evaluate(cfg: ReportConfig, rows: list[dict]) -> dict:
    """Fit the correction on the random rows; out-of-fold predictions for them, the full fit for zoo rows; metrics."""
    rnd = [r for r in rows if r["kind"] == "random"]
    feats, y = [r["features"] for r in rnd], [r["measured_ms"] for r in rnd]
    corr = select_correction(feats, y, cfg.folds, cfg.seed)
    oof = cross_val_predictions(corr["model"], feats, y, cfg.folds, cfg.seed)
    for r, p in zip(rnd, oof):
        r["predicted_ms"] = float(p)
    for r in rows:
        if r["kind"] == "zoo":
            r["predicted_ms"] = float(apply_correction(corr, r["features"]))
    # second protocol: fit on random + zoo networks, folds grouped by network (a model's two inputs share a fold)
    names = [r["name"].split("@")[0] for r in rows]
    feats_all, y_all = [r["features"] for r in rows], [r["measured_ms"] for r in rows]
    corr_all = select_correction(feats_all, y_all, cfg.folds, cfg.seed, names)
    for r, p in zip(rows, cross_val_predictions(corr_all["model"], feats_all, y_all, cfg.folds, cfg.seed, names)):
        r["predicted_all_ms"] = float(p)
    groups = {}
    sizes = ["x".join(map(str, s[1:])) for s in cfg.inputs]
    for size in (["all"] if len(sizes) > 1 else []) + sizes:
        sel = [r for r in rows if size == "all" or r["input"] == size]
        g = {}
        for kind in ("random", "zoo", "all"):
            rr = [r for r in sel if kind == "all" or r["kind"] == kind]
            g[kind] = accuracy([r["predicted_ms"] for r in rr], [r["measured_ms"] for r in rr])
            g[kind]["raw"] = accuracy([r["raw_ms"] for r in rr], [r["measured_ms"] for r in rr])
            g[kind]["fit_all"] = accuracy([r["predicted_all_ms"] for r in rr], [r["measured_ms"] for r in rr])
            g[kind]["noise"] = noise([r["repeats_ms"] for r in rr])
        groups[size] = g
    return {"correction": corr, "correction_all": corr_all, "metrics": groups, "rows": rows}


def _summary_line(platform: str, res: dict) -> str:
    a = next(iter(res["metrics"].values()))["all"]
    nz = a.get("noise", {})
    return (f"{platform}: {a['n']} networks, {a['within10_pct']:.1f}% within +-10%, MAPE {a['mape_pct']:.2f}%, "
            f"Spearman {a['spearman']:.4f} (correction {res['correction']['model']}); measurement noise: repeat "
            f"spread median {nz.get('spread_median_pct', float('nan')):.2f}%, repeat MAPE "
            f"{nz.get('repeat_mape_pct', float('nan')):.2f}%; fitted on random + zoo (grouped CV): "
            f"{a['fit_all']['within10_pct']:.1f}% within +-10%, MAPE {a['fit_all']['mape_pct']:.2f}%, Spearman "
            f"{a['fit_all']['spearman']:.4f} ({res['correction_all']['model']})")


def _scatter(path: Path, platform: str, rows: list[dict], res: dict) -> Path:
    from .._optional import require

    matplotlib = require("matplotlib", "plot", "the latency report's scatter plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    sizes = list(dict.fromkeys(r["input"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for kind, marker, color in (("random", "o", "tab:blue"), ("zoo", "^", "tab:red")):
            rr = [r for r in rows if r["input"] == size and r["kind"] == kind]
            ax.scatter([r["measured_ms"] for r in rr], [r["predicted_ms"] for r in rr], s=18, marker=marker, c=color,
                       alpha=0.8, label=f"{kind} ({len(rr)})")
        vals = [v for r in rows if r["input"] == size for v in (r["measured_ms"], r["predicted_ms"])]
        lo, hi = min(vals) * 0.8, max(vals) * 1.25
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=1, label="predicted = measured")
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="gray", alpha=0.2, label="+-10%")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)",
               ylabel="predicted latency (ms)")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2, 5 x 10^k instead of overlapping powers
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        m = res["metrics"][size]["all"]
        ax.set_title(f"{platform} @ 1x{size}\n{m['within10_pct']:.0f}% within +-10%, MAPE {m['mape_pct']:.1f}%, "
                     f"Spearman {m['spearman']:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coef_text(coef: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in coef.items() if v) or "-"


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_markdown(results: dict) -> str:
    """The report as markdown: per platform, accuracy per input size beside the measurement noise, then the zoo."""
    cfg = results["config"]
    lines = [
        "# Latency predictor accuracy", "",
        f"Device: {results['device'].get('cpu')} ({results['device'].get('cpu_count')} CPUs), torch "
        f"{results['versions'].get('torch')}, onnxruntime {results['versions'].get('onnxruntime')}, {results['date']}. "
        f"Threads: {cfg['threads']}. torch-cpu malloc: {cfg.get('malloc', 'steady')}. Random networks: {cfg['nets']} per input (seed {cfg['seed']}); zoo: "
        f"{'all registered models' if cfg['zoo'] is None else ', '.join(cfg['zoo'])} at width {cfg['zoo_width']:g}. "
        f"Blocks: warm-up {cfg['block_timing']['warmup']}, >= {cfg['block_timing']['min_runs']} runs and >= "
        f"{cfg['block_timing']['min_time']} s each; networks: {cfg['repeats']} repeats of warm-up "
        f"{cfg['net_timing']['warmup']}, >= {cfg['net_timing']['min_runs']} runs and >= "
        f"{cfg['net_timing']['min_time']} s "
        f"(median of the repeat medians). Random networks are predicted out of fold ({cfg['folds']}-fold), zoo models "
        "with the correction fitted on all random networks.", "",
    ]
    for platform, res in results["platforms"].items():
        if "skipped" in res:
            lines += [f"## {platform}", "", f"Skipped: {res['skipped']}", ""]
            continue
        corr = res["correction"]
        cv = ", ".join(f"{m} {v:.2f}%" for m, v in corr["cv_mape"].items())
        lines += [f"## {platform}", "",
                  f"Correction: **{corr['model']}** (coefficients {_coef_text(corr['coef'])}; CV MAPE {cv}). "
                  f"Table: `{res['table']}`; {res['minutes']:.0f} min. Plot: `{Path(res['scatter']).name}`.", "",
                  "| input | networks | n | within +-10% | MAPE % | Spearman | raw sum: within +-10% / MAPE % | "
                  "repeat spread median / p90 % | repeat MAPE % (noise floor) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for size, g in res["metrics"].items():
            for kind in ("random", "zoo", "all"):
                m = g[kind]
                if not m.get("n"):
                    continue
                nz = m.get("noise", {})
                lines.append(f"| {size} | {kind} | {m['n']} | {_fmt(m['within10_pct'])}% | "
                             f"{_fmt(m['mape_pct'], '.2f')} | "
                             f"{_fmt(m['spearman'], '.4f')} | {_fmt(m['raw']['within10_pct'])}% / "
                             f"{_fmt(m['raw']['mape_pct'], '.2f')} | {_fmt(nz.get('spread_median_pct'), '.2f')} / "
                             f"{_fmt(nz.get('spread_p90_pct'), '.2f')} | {_fmt(nz.get('repeat_mape_pct'), '.2f')} |")
        ca = res.get("correction_all")
        if ca:
            cv = ", ".join(f"{m} {v:.2f}%" for m, v in ca["cv_mape"].items())
            lines += ["", f"Fitted on random + zoo networks (second protocol): every network predicted out of fold, "
                      f"{cfg['folds']} folds grouped by network so a model's two inputs share a fold. Correction "
                      f"**{ca['model']}** (coefficients {_coef_text(ca['coef'])}; CV MAPE {cv}); this one is stored "
                      "in the table.", "",
                      "| input | networks | n | within +-10% | MAPE % | Spearman |", "|---|---|---|---|---|---|"]
            for size, g in res["metrics"].items():
                for kind in ("random", "zoo", "all"):
                    m = g[kind].get("fit_all", {})
                    if m.get("n"):
                        lines.append(f"| {size} | {kind} | {m['n']} | {_fmt(m['within10_pct'])}% | "
                                     f"{_fmt(m['mape_pct'], '.2f')} | {_fmt(m['spearman'], '.4f')} |")
        lines += ["", "| zoo model | input | measured ms | predicted ms | error % | fixed parts % of raw |",
                  "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if r["kind"] == "zoo":
                err = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100
                lines.append(f"| {r['name']} | {r['input']} | {r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | "
                             f"{err:+.1f} | {100 * r['fixed_ms'] / r['raw_ms']:.0f} |")
        lines.append("")
    return "\n".join(lines)
