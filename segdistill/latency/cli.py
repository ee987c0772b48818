"""``segdistill lut ...`` and ``segdistill latency ...``: build tables, predict, fit the correction, report accuracy.

    segdistill lut build --platform torch-cpu --input 3x180x240 --model lraspp_mobilenetv2 --out lut.json
    segdistill lut build --platform onnxruntime-cpu --space chain --out lut-ort.json
    segdistill lut blocks --model all --input 3x180x240 --out blocks.json   # for a table built on another device
    segdistill lut show lut.json
    segdistill latency predict --lut lut.json --model lraspp_mobilenetv2
    segdistill latency fit --lut lut.json --nets 30
    segdistill latency state --lut lut.json        # how much slower or faster this machine runs than at the fit
    segdistill latency report --platforms torch-cpu onnxruntime-cpu --inputs 3x180x240 3x360x480 --out-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from ..errors import LatencyError
from ..shapes import parse_shape


@contextmanager
def _exporter(name: str | None):
    """Set the ONNX exporter of the onnxruntime-cpu platform (inherited by isolated measurement processes)."""
    old = os.environ.get("SEGDISTILL_ONNX_EXPORTER")
    if name:
        os.environ["SEGDISTILL_ONNX_EXPORTER"] = name
    try:
        yield
    finally:
        if name:
            if old is None:
                os.environ.pop("SEGDISTILL_ONNX_EXPORTER", None)
            else:
                os.environ["SEGDISTILL_ONNX_EXPORTER"] = old


def _model_names(names: list[str]) -> list[str]:
    from ..models import list_models

    known = list_models()
    out = []
    for n in names or []:
        if n == "all":
            out += known
        elif n not in known:
            raise LatencyError(f"unknown model {n!r}; `segdistill models` lists the {len(known)} known ones")
        else:
            out.append(n)
    return list(dict.fromkeys(out))


def space_options(items) -> dict:
    """``["base_widths=[96, 192, 320]", "layers=4"]`` -> ``{"base_widths": [96, 192, 320], "layers": 4}`` (YAML values)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LatencyError(f"--space-option {item!r}: expected KEY=VALUE, e.g. base_widths=[96,192,320]")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _groups(args):
    """(description, keys) for every model, space and random-network set asked for, at every input."""
    from .network import sample_networks
    from .spaces import build_space
    from .zoo import decomposition, model_spec

    models = _model_names(args.model)
    if not (models or args.space or args.nets):
        raise LatencyError("say what to measure: --model NAME (or all), --space NAME and/or --nets N")
    for shape in [parse_shape(s) for s in args.input or ["3x180x240"]]:
        size = "x".join(map(str, shape))
        for name in models:
            spec = model_spec(name, args.num_classes, args.width_mult, args.output_stride, shape[-2:])
            yield f"model {name} (width {args.width_mult:g}) @ {size}", decomposition(spec).net.keys()
        for space in args.space or []:
            opts = space_options(getattr(args, "space_option", None))
            shown = "".join(f" {k}={v}" for k, v in opts.items())
            yield f"space {space}{shown} @ {size}", build_space(space, shape, args.num_classes, **opts).keys()
        if args.nets:
            nets = sample_networks(args.nets, shape, args.seed, args.num_classes)
            yield f"{args.nets} random networks (seed {args.seed}) @ {size}", [k for n in nets for k in n.keys()]


def cmd_lut_build(args):
    import torch

    from . import standalone as core
    from .lut import LatencyTable

    for p in args.plugin:
        core.load_plugin(p)
    args.threads = args.threads or torch.get_num_threads()
    timing = {"warmup": args.warmup, "min_runs": args.runs, "min_time": args.min_time}
    with _exporter(args.exporter), core.malloc_mode(args.malloc):
        if Path(args.out).is_file():
            table = LatencyTable.load(args.out)
            if (table.platform, table.threads) != (args.platform, args.threads):
                raise LatencyError(f"{args.out} is a {table.platform} table with {table.threads} threads, not "
                                   f"{args.platform} with {args.threads}; choose another --out")
            core.check_table_malloc(table.data, args.malloc, args.out)
        else:
            table = LatencyTable.new(args.platform, args.threads, timing)
            table.path = Path(args.out)
        total = 0
        for what, keys in _groups(args):
            done = table.ensure(keys, progress=not args.quiet, isolate=args.isolate)
            table.note_built_for(what)
            table.save()
            total += len(done)
            print(f"{what}: {len(set(keys))} keys, {len(done)} measured")
    print(f"wrote {args.out}: {len(table)} entries ({total} new) on {table.platform}, {table.threads} threads")


def cmd_lut_blocks(args):
    from . import standalone as core

    keys, built_for = [], []
    for what, ks in _groups(args):
        keys += ks
        built_for.append(what)
    keys = list(dict.fromkeys(keys))
    core.write_json_atomic({"format": core.BLOCKS_FORMAT, "version": 1, "built_for": built_for, "keys": keys}, args.out)
    fixed = sum(k.startswith(core.FIXED_PREFIX) for k in keys)
    print(f"wrote {args.out}: {len(keys)} keys ({fixed} fixed parts of zoo models). On the device: python "
          f"segdistill/latency/standalone.py --blocks {Path(args.out).name} --platform PLATFORM --threads N "
          "--out lut.json")


def cmd_lut_show(args):
    from .lut import LatencyTable
    from .state import kept_networks

    table = LatencyTable.load(args.table)
    print(table.summary())
    kinds = Counter("fixed" if k.startswith("fixed:") else k.split(":")[0] for k in table.entries)
    print("entries by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    for what in table.data.get("built_for", []):
        print(f"  built for {what}")
    if table.correction:
        c = table.correction
        on = f", fitted on {c['networks']}" if c.get("networks") else ""
        print(f"correction {c['model']} {c['coef']} (CV MAPE {c.get('cv_mape')}{on})")
        kept = kept_networks(table)
        print(f"state control: {len(kept)} timed networks kept ({c['measured']['date']}): `segdistill latency state "
              f"--lut {args.table}`" if kept else "state control: none (the fit kept no timed networks; fit again)")


def cmd_latency_predict(args):
    from ..dynamic.cli import select_depths, set_depth
    from ..engine.checkpoint import model_or_checkpoint
    from .lut import LatencyTable
    from .predictor import LatencyPredictor
    from .zoo import decompose_model, decomposition, model_spec

    table = LatencyTable.load(args.lut)
    predictor = LatencyPredictor(table, measure=not args.no_measure, progress=True)
    before = len(table)
    note = table.device_note()
    print(note)
    results = []
    # checkpoints and family:ARG models (and, with --depth, every model: a depth is set on a built model)
    names = [n for n in args.model if Path(n).is_file() or ":" in n or args.depth]
    for name in _model_names([n for n in args.model if n not in names]) + names:
        for text in args.input or ["3x180x240"]:
            shape = parse_shape(text)
            if name in names:  # built once per input: its meta (or the flags) give width and stride
                model, meta = model_or_checkpoint(name, args.num_classes, args.width_mult)
                m = meta.get("model", {})
                nets = []
                for depth in select_depths(model, args.depth):  # [None] without --depth (ddnn_* models)
                    set_depth(model, depth)
                    nets.append((depth, decompose_model(model.model_name, shape, model.num_classes,
                                                        m.get("width_mult", args.width_mult),
                                                        m.get("output_stride", args.output_stride), model=model).net))
            else:
                spec = model_spec(name, args.num_classes, args.width_mult, args.output_stride, shape[-2:])
                nets = [(None, decomposition(spec).net)]
            for depth, net in nets:
                p = predictor.predict(net)
                results.append({"model": name, **({"depth": depth} if depth else {}), "input": list(shape),
                                "table_device": note, **{k: v for k, v in p.items() if k != "entries"},
                                "entries": [[k, ms] for k, ms in p["entries"]]})
                print(f"{name}{f' --depth {depth}' if depth else ''} @ {'x'.join(map(str, shape))} on {table.platform} "
                      f"({table.threads} threads): {p['predicted_ms']:.3f} ms predicted (correction {p['correction']}; "
                      f"raw sum {p['raw_ms']:.3f} ms = {p['blocks_ms']:.3f} library blocks + {p['fixed_ms']:.3f} fixed "
                      f"parts, {p['n_blocks']} nodes)")
    if len(table) > before:
        table.save()
        print(f"added {len(table) - before} on-demand measurements to {args.lut}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


def cmd_latency_fit(args):
    from ..search.genotype import space_networks
    from . import standalone as core
    from .lut import LatencyTable
    from .network import sample_networks
    from .predictor import LatencyPredictor, select_correction
    from .report import NetTimer, ReportConfig
    from .state import fit_record

    table = LatencyTable.load(args.lut)
    why = table.local_problem()
    if why:
        raise LatencyError(f"fitting measures networks on the table's device, but {why}; fit there")
    predictor = LatencyPredictor(table, measure=True, progress=True)
    malloc = core.table_malloc_mode(table.data) or "steady"  # networks timed as the table's blocks were
    cfg = ReportConfig(threads=table.threads, repeats=args.repeats, net_timing={"warmup": args.warmup, "min_runs": args.runs,
                                                                      "min_time": args.min_time}, malloc=malloc)
    opts = space_options(args.space_option)
    if (opts or args.price_span) and not args.space:
        raise LatencyError("--space-option and --price-span need --space (the search space whose networks the fit "
                           "measures)")
    feats, y, timed = [], [], []
    with _exporter(args.exporter), core.malloc_mode(malloc):
        for text in args.input or ["3x180x240"]:
            nets = (space_networks(args.space, args.nets, parse_shape(text), args.seed, args.num_classes,
                                   predictor=predictor, price_span=args.price_span, **opts)
                    if args.space else sample_networks(args.nets, parse_shape(text), args.seed, args.num_classes))
            measured = NetTimer(cfg, table.platform).round_robin(nets, lambda it, d: core.progress_bar(it, d, True))
            for net in nets:
                feats.append(predictor.breakdown(net)["features"])
                y.append(statistics.median(measured[net.name]))  # over --repeats round-robin passes
                timed.append(net)
    table.correction = select_correction(feats, y)
    table.correction["measured"] = fit_record(timed, y, cfg.net_timing, core.now_iso())  # the state control's reference
    shown = "".join(f" {k}={v}" for k, v in opts.items())
    table.correction["space"] = args.space  # None: the generic sampler; a search in another space warns
    spanned = f", priced from -{args.price_span:g} to +{args.price_span:g} nats" if args.price_span else ""
    table.correction["networks"] = (f"{args.nets} random networks of search space {args.space}{shown} (seed "
                                    f"{args.seed}{spanned})" if args.space
                                    else f"{args.nets} random networks (seed {args.seed})")
    table.save()
    c = table.correction
    print(f"correction {c['model']} {c['coef']} fitted on {len(y)} networks ({c['networks']}); CV MAPE: "
          + ", ".join(f"{m} {v:.2f}%" for m, v in c["cv_mape"].items()) + f"; saved in {args.lut}")


def cmd_latency_state(args):
    from . import standalone as core
    from .lut import LatencyTable
    from .state import describe, measure_state

    table = LatencyTable.load(args.lut)
    with _exporter(args.exporter):
        state = measure_state(table, args.nets, args.repeats, args.warmup, args.runs, args.min_time)
    print(f"{table.platform} ({args.lut}, fitted {state['table']['fit_date']}): {describe(state)}")
    print(f"predictions from this table x {state['ratio']:.3f} are for this machine as it runs now")
    if args.out:
        core.write_json_atomic(state, Path(args.out))
        print(f"wrote {args.out}")


def cmd_latency_report(args):
    from . import standalone as core
    from .report import ReportConfig, refit_report, run_report

    if args.refit:
        refit_report(args.out_dir or "benchmarks/latency")
        return
    for p in args.plugin:
        core.load_plugin(p)
    given = dict(platforms=args.platforms, inputs=[parse_shape(s) for s in args.inputs] if args.inputs else None,
                 nets=args.nets, repeats=args.repeats, threads=args.threads, seed=args.seed, zoo=args.zoo,
                 zoo_width=args.zoo_width, exporter=args.exporter, out_dir=args.out_dir, isolate=args.isolate or None,
                 malloc=args.malloc or core.current_malloc_mode())
    if args.quick:
        cfg = ReportConfig.quick(**given)
    else:
        cfg = ReportConfig(**{k: v for k, v in given.items() if v is not None})
        for timing, field, value in ((cfg.net_timing, "min_runs", args.net_runs),
                                     (cfg.block_timing, "min_runs", args.block_runs),
                                     (cfg.net_timing, "min_time", args.net_min_time),
                                     (cfg.block_timing, "min_time", args.block_min_time)):
            if value is not None:
                timing[field] = value
    with _exporter(cfg.exporter):
        run_report(cfg)


# ---------------------------------------------------------------------------- parser
def _selection(s: argparse.ArgumentParser) -> None:
    s.add_argument("--input", action="append", help="C x H x W, repeatable (default 3x180x240)")
    s.add_argument("--model", action="append", help="a registered model, repeatable, or `all`")
    s.add_argument("--space", action="append", help="a search space (chain, lgcnet, mbv2-chain), repeatable")
    s.add_argument("--space-option", action="append", metavar="KEY=VALUE",
                   help="an option of the space as search.* sets it, repeatable, e.g. base_widths=[96,192,320]")
    s.add_argument("--nets", type=int, default=0, help="also the blocks of N random networks (the report's sampler)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random networks")
    _model_options(s)


def _model_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--num-classes", type=int, default=11)
    s.add_argument("--width-mult", type=float, default=1.0)
    s.add_argument("--output-stride", type=int, default=None, help="default: the model's own")


def _malloc_option(s: argparse.ArgumentParser, recorded: str) -> None:
    s.add_argument("--malloc", choices=["steady", "default"], default=None,
                   help="torch-cpu allocator while timing: steady (default; glibc keeps freed memory, as "
                        f"standalone.steady_malloc() sets it) or default (glibc untouched, as a plain process) {recorded}")


def _measure_options(s: argparse.ArgumentParser, runs: int = 50, min_time: float = 0.5, warmup: int = 10) -> None:
    s.add_argument("--warmup", type=int, default=warmup)
    s.add_argument("--runs", type=int, default=runs, help="minimum timed runs per measurement")
    s.add_argument("--min-time", type=float, default=min_time, help="minimum seconds of timed runs per measurement")
    s.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default=None,
                   help="ONNX exporter for onnxruntime-cpu (default auto: dynamo, TorchScript as fallback)")


def add_commands(sub) -> None:
    """Register ``lut`` and ``latency`` on the segdistill argparse sub-parsers."""
    lut = sub.add_parser("lut", help="latency lookup tables: build, list the blocks for another device, show")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    s = lsub.add_parser("build", help="measure every block a model, space or random-network set uses into a table")
    s.add_argument("--platform", required=True,
                   help="torch-cpu, onnxruntime-cpu, torch-cuda, torch-cuda-fp16, or a plug-in's")
    s.add_argument("--out", required=True, help="the table (an existing one is extended)")
    s.add_argument("--threads", type=int, help="CPU threads, fixed and recorded (default: torch's current count)")
    s.add_argument("--isolate", action="store_true", help="each measurement in its own process")
    s.add_argument("--plugin", action="append", default=[], help="a .py file or module registering a Platform")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _malloc_option(s, "(recorded in the table; an existing table is extended in its own mode)")
    _selection(s)
    _measure_options(s)
    s.set_defaults(fn=cmd_lut_build)
    s = lsub.add_parser("blocks", help="write the keys a model/space uses, for `standalone.py` on another device")
    s.add_argument("--out", required=True)
    _selection(s)
    s.set_defaults(fn=cmd_lut_blocks)
    s = lsub.add_parser("show", help="a table's platform, device, versions, entries and correction")
    s.add_argument("table")
    s.set_defaults(fn=cmd_lut_show)

    lat = sub.add_parser("latency", help="predict latency from a table, fit its correction, report its accuracy")
    lsub = lat.add_subparsers(dest="latency_command", required=True)
    s = lsub.add_parser("predict", help="predicted latency of a model: sum of its blocks and fixed parts, corrected")
    s.add_argument("--lut", required=True)
    s.add_argument("--model", action="append", required=True,
                   help="a registered model, `all`, a checkpoint or a `family:ARG` model (searched:genotype.json); repeatable")
    s.add_argument("--input", action="append", help="C x H x W, repeatable (default 3x180x240)")
    s.add_argument("--no-measure", action="store_true", help="never measure missing blocks (error instead)")
    s.add_argument("--out", help="write predictions with per-block entries as JSON here")
    s.add_argument("--depth", help="ddnn_* models: this named depth (`all`: every depth)")
    _model_options(s)
    s.set_defaults(fn=cmd_latency_predict)
    s = lsub.add_parser("fit", help="measure random networks whole and fit the table's correction")
    s.add_argument("--lut", required=True)
    s.add_argument("--nets", type=int, default=30)
    s.add_argument("--input", action="append", help="C x H x W, repeatable (default 3x180x240)")
    s.add_argument("--seed", type=int, default=1, help="seed of the random networks (the report uses 0)")
    s.add_argument("--num-classes", type=int, default=11)
    s.add_argument("--space", choices=("chain", "lgcnet"),
                   help="fit on random networks of this search space (as a search derives them) instead of the "
                        "report's generic sampler: a table used by searches of one space predicts its networks best")
    s.add_argument("--space-option", action="append", metavar="KEY=VALUE",
                   help="an option of that space as search.* sets it, repeatable, e.g. base_widths=[96,192,320]")
    s.add_argument("--repeats", type=int, default=1,
                   help="round-robin passes over the networks; each one's time is the median over passes (a steadier "
                        "reference for `latency state` on a machine whose speed drifts)")
    s.add_argument("--price-span", type=float, default=0.0, metavar="NATS",
                   help="derive the space's networks with a latency price from -NATS (dearest) to +NATS (cheapest), "
                        "so that they span the costs searches derive at any budget (e.g. 64; default 0: plain "
                        "random argmax, the middle of the space)")
    _measure_options(s, runs=20, min_time=1.0, warmup=5)
    s.set_defaults(fn=cmd_latency_fit)
    s = lsub.add_parser("state", help="time a few of the networks the table's correction was fitted on again: how "
                                      "much slower or faster this machine runs now (segdistill/latency/state.py)")
    s.add_argument("--lut", required=True)
    s.add_argument("--nets", type=int, default=3, help="reference networks (fastest, slowest, evenly between)")
    s.add_argument("--repeats", type=int, default=3, help="round-robin passes over the reference networks")
    s.add_argument("--out", help="write the ratio and the networks' times as JSON")
    _measure_options(s, runs=20, min_time=1.0, warmup=5)
    s.set_defaults(fn=cmd_latency_state)
    s = lsub.add_parser("report", help="accuracy of the predictor on random networks and the zoo, per platform")
    s.add_argument("--platforms", "--platform", nargs="+", dest="platforms", help="default: torch-cpu onnxruntime-cpu")
    s.add_argument("--inputs", nargs="+", help="C x H x W (default: 3x180x240 3x360x480)")
    s.add_argument("--nets", type=int, help="random networks per input (default 50)")
    s.add_argument("--repeats", type=int, help="measurements of each network, for the noise estimate (default 3)")
    s.add_argument("--threads", type=int, help="CPU threads (default 2)")
    s.add_argument("--seed", type=int, help="seed of the random networks (default 0)")
    s.add_argument("--zoo", nargs="*", help="zoo models (default: all registered; none with an empty list)")
    s.add_argument("--zoo-width", type=float, help="width multiplier of the zoo models (default 1.0)")
    s.add_argument("--net-runs", type=int, help="minimum timed runs per network measurement (default 20)")
    s.add_argument("--block-runs", type=int, help="minimum timed runs per block (default 50)")
    s.add_argument("--net-min-time", type=float, help="minimum seconds per network measurement (default 1.0)")
    s.add_argument("--block-min-time", type=float, help="minimum seconds per block (default 0.5)")
    s.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], help="ONNX exporter (default auto)")
    s.add_argument("--isolate", action="store_true", help="each measurement in its own process")
    s.add_argument("--plugin", action="append", default=[], help="a .py file or module registering a Platform")
    _malloc_option(s, "(recorded in report.json and the tables; a folder holds one mode)")
    s.add_argument("--out-dir", help="default benchmarks/latency (quick: runs/latency-quick)")
    s.add_argument("--quick", action="store_true", help="a tiny smoke run (1-2 minutes)")
    s.add_argument("--refit", action="store_true",
                   help="measure nothing: predict the report in --out-dir again from its saved measurements")
    s.set_defaults(fn=cmd_latency_report)
