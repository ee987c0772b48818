"""``segdistill search CONFIG [overrides]``, ``segdistill derive SUPERNET``, ``segdistill pipeline CONFIG`` (:mod:`.pipeline`)
and ``segdistill graph MODEL [--teacher T] [--png PATH]``."""
from __future__ import annotations

import sys
from pathlib import Path

from ..shapes import parse_shape


def cmd_search(args):
    from ..config import load_config
    from ..engine.hooks import run_training
    from ..errors import ConfigError

    cfg = load_config(args.config, args.overrides)
    if not cfg.search.space:
        raise ConfigError(f"{args.config} sets no search space: add search.space=chain (and search.budget.<platform>"
                          "=MS), or run `segdistill train` / `segdistill distill` for a fixed model")
    result, main_rank = run_training(cfg)
    if main_rank:
        out = Path(cfg.train.out_dir)
        print(f"done: searched architecture in {out / 'genotype.json'} (report: {out / 'report.md'}); supernet best "
              f"val mIoU {100 * result['best_miou']:.2f}. Train the derived student with "
              f"model.name=searched:{out / 'genotype.json'}")


def _pairs(items: list[str], what: str, number: bool) -> dict:
    from ..errors import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--{what} {item!r}: write PLATFORM={'MS' if number else 'PATH'}, e.g. torch-cpu="
                              + ("20" if number else "lut-torch-cpu.json"))
        try:
            out[key] = float(value) if number else value
        except ValueError:
            raise ConfigError(f"--{what} {item!r}: {value!r} is not a number of ms") from None
    return out


def cmd_derive(args):
    """Derive a network from a search's supernet checkpoint, for the run's budgets or new ones."""
    import json
    from types import SimpleNamespace

    import yaml

    from ..engine.checkpoint import build_from_checkpoint
    from ..errors import ConfigError
    from .genotype import derive, genotype_netspec, op_preference, preference_line, save_genotype
    from .objective import check_budgets, derive_within_budget, platform_predictors

    ckpt = Path(args.supernet)
    if ckpt.is_dir():
        ckpt = ckpt / "last.pt"
    net, _ = build_from_checkpoint(ckpt)
    if not hasattr(net, "arch_parameters"):
        raise ConfigError(f"{ckpt} holds a {type(net).__name__}, not a search supernet; give a search run's folder "
                          "or its last.pt / best.pt")
    run_cfg = ckpt.parent / "config.yaml"
    saved = yaml.safe_load(run_cfg.read_text()).get("search", {}) if run_cfg.is_file() else {}
    budgets = _pairs(args.budget, "budget", True) or dict(saved.get("budget") or {})
    luts = {**{p: v for p, v in (saved.get("lut") or {}).items() if p in budgets}, **_pairs(args.lut, "lut", False)}
    band = [float(v) for v in args.band.split(",")] if args.band else list(saved.get("band") or [0.9, 1.0])
    search = SimpleNamespace(budget=budgets, lut=luts, band=band, input=list(net.space.input_shape))
    check_budgets(search)
    preds = platform_predictors(search, net.space, ckpt.parent, args.threads)
    out = Path(args.out) if args.out else ckpt.parent / "genotype.json"
    ops = getattr(args, "ops", None) or saved.get("derive_ops") or "priced"
    ranked = None
    if ops == "perturb":
        net, ranked = _rank_by_perturbation(net, ckpt, out, args)
        ops = "weights"
    if args.argmax or not preds:
        g, info = derive(net), {"rule": "argmax", "mu": 0.0}
        spec = genotype_netspec(g, tuple(net.space.input_shape), net.num_classes)
        info["predicted_ms"] = info["argmax_ms"] = {p: float(pr.predict(spec)["predicted_ms"]) for p, pr in preds.items()}
    else:
        g, info = derive_within_budget(net, preds, budgets, tuple(band), ops=ops)
        info["ops"] = "perturb" if ranked else ops
    if ranked:
        info["perturbation"] = ranked
    save_genotype(g, out)
    for p, b in budgets.items():
        print(f"{p}: budget {b:g} ms, derived {info['predicted_ms'][p]:.3f} ms ({info['predicted_ms'][p] / b:.2f} x), "
              f"plain argmax {info['argmax_ms'][p]:.3f} ms")
    picker = {"weights": ", ops picked by the weights", "perturb": ", ops ranked by perturbation"}.get(info.get("ops"), "")
    print(f"rule {info['rule']} (mu {info['mu']:.4g}{picker}); wrote {out}")
    if info.get("weights_ops"):
        same, kept = info["weights_ops"]
        who = "the perturbation ranking's" if ranked else "the weights' own"
        print(f"{same} of the {kept} ops (strided ones and kept layers) are {who} pick; the price chose {kept - same}")
    pref = op_preference(net)
    print(preference_line(pref))
    info["op_preference"] = pref
    if args.json:
        print(json.dumps({"genotype": str(out), **info}))


def _rank_by_perturbation(net, ckpt: Path, out: Path, args):
    """``--ops perturb``: score every op of ``net`` by the loss its removal costs on the run's architecture batches
    (:mod:`.perturb`), write the scores beside ``out`` (the genotype). Returns ``(the supernet with its logits
    reordered by the scores, a summary)``."""
    from ..latency.standalone import write_json_atomic
    from .perturb import arch_batches, rank, summary_lines

    ranked, batches, loss = arch_batches(ckpt.parent, args.batches, args.threads)
    ranked.load_state_dict(net.state_dict())  # the checkpoint derive loaded (last.pt or best.pt)
    record, summary = rank(ranked, batches, loss, progress=sys.stderr.isatty())
    path = out.with_name(out.stem + "-perturbation.json")
    write_json_atomic({"checkpoint": str(ckpt), **record}, path)
    print("\n".join(summary_lines(summary, path)))
    return ranked, {"file": str(path), **summary}


def load_any_model(spec: str, num_classes: int):
    """A genotype JSON file, a checkpoint, or a registered model name (``family:ARG`` too)."""
    from ..engine.checkpoint import model_or_checkpoint
    from ..models import build_model

    if spec.endswith(".json") and Path(spec).is_file():
        return build_model("searched", num_classes, genotype=spec).eval()
    return model_or_checkpoint(spec, num_classes)[0]


def cmd_graph(args):
    from .ged import correspondence_ged, exact_ged, graph_size
    from .graph import draw_graph, graph_summary, model_graph

    shape = parse_shape(args.input)
    g = model_graph(load_any_model(args.model, args.num_classes), shape)
    g.graph["model"] = args.model
    print(graph_summary(g, max_nodes=args.max_nodes))
    if args.png:
        print(f"wrote {draw_graph(g, args.png)}")
    if args.teacher:
        t = model_graph(load_any_model(args.teacher, args.num_classes), shape, stages=args.teacher_stages)
        res = exact_ged(g, t, timeout=args.timeout)
        corr = correspondence_ged(g, t)
        size = max(1, graph_size(t))
        kind = "exact" if res.exact else f"upper bound (search stopped after {args.timeout:g} s)"
        print(f"teacher {args.teacher}: {t.number_of_nodes()} nodes, {t.number_of_edges()} edges")
        print(f"GED to the teacher: {res.value:g} ({kind}); normalised by the teacher's size {size}: "
              f"{res.value / size:.3f}")
        print(f"fixed-correspondence GED: {corr:g}; normalised: {corr / size:.3f}")


def add_commands(sub) -> None:
    """Register ``search``, ``pipeline`` and ``graph`` on the segdistill argparse sub-parsers."""
    s = sub.add_parser("search", help="search a student architecture for latency budgets (chain space, KD, GED)",
                       description="search.* keys: space, budget.<platform>=MS, lut.<platform>=TABLE, lambda_kd, "
                                   "lambda_ged, lambda_lat, penalty, band, arch_lr, warmup_iters, gumbel ... "
                                   "(see configs/search-camvid-cpu.yaml); writes genotype.json and report.md.")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="section.key=value, e.g. search.budget.torch-cpu=20")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("derive", help="derive a network from a search's supernet for its budgets or new ones",
                       description="The priced argmax of objective.derive_within_budget (or --argmax) of a search run's "
                                   "supernet (its folder, last.pt or best.pt), for the run's search.budget or the "
                                   "--budget given; one search, any budget's network. Tables: --lut, else the run's.")
    s.add_argument("supernet", help="a search run folder, or its last.pt / best.pt")
    s.add_argument("--budget", action="append", help="PLATFORM=MS (repeat per platform; default: the run's budgets)")
    s.add_argument("--lut", action="append", help="PLATFORM=TABLE.json (default: the run's tables)")
    s.add_argument("--band", help="lo,hi fractions of the budget (default: the run's, else 0.9,1.0)")
    s.add_argument("--argmax", action="store_true", help="the plain argmax instead of the priced one")
    s.add_argument("--ops", choices=("priced", "weights", "perturb"), help="who picks the ops (default: the run's "
                   "search.derive_ops, else priced): priced (weights and latency price together) | weights (each "
                   "layer's likeliest non-skip op; the price sets depth, inputs and widths only) | perturb (chain: "
                   "each layer's op whose removal costs the trained supernet the most loss on --batches batches of "
                   "the run's architecture half, then as weights; scores in <out>-perturbation.json)")
    s.add_argument("--batches", type=int, default=8, help="architecture batches for --ops perturb")
    s.add_argument("--threads", type=int, default=2, help="threads for blocks measured here (a local platform)")
    s.add_argument("--out", help="genotype JSON to write (default: genotype.json in the run folder)")
    s.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    s.set_defaults(fn=cmd_derive)

    from .pipeline import cmd_pipeline

    s = sub.add_parser("pipeline", help="teacher -> search -> distilled retrain -> eval -> profile -> ONNX -> report",
                       description="What a user runs end to end: the teacher (distill.teacher, or trained first: "
                                   "pipeline.teacher_model / teacher_iters), the search (search.*), the derived network "
                                   "retrained with distill.* (pipeline.retrain_iters, default train.iters), val mIoU, "
                                   "measured vs predicted latency per budgeted platform, a checked ONNX file, and "
                                   "report.md with a Pareto plot. One subfolder of train.out_dir per stage; a re-run "
                                   "skips finished stages and resumes a killed one (see configs/pipeline-camvid-cpu.yaml).")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="section.key=value, e.g. distill.teacher=runs/t/best.pt")
    s.set_defaults(fn=cmd_pipeline)

    s = sub.add_parser("graph", help="an architecture as a block graph, and its graph edit distance to a teacher")
    s.add_argument("model", help="a genotype JSON, a checkpoint, or a registered model name")
    s.add_argument("--teacher", help="a checkpoint or model name: print the exact and correspondence GED to it")
    s.add_argument("--png", help="draw the graph to this PNG")
    s.add_argument("--input", default="3x180x240", help="C x H x W (batch 1) of the dry run")
    s.add_argument("--num-classes", type=int, default=11, help="for a model name or genotype")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds of exact GED search (else an upper bound)")
    s.add_argument("--max-nodes", type=int, default=60, help="node lines printed")
    s.add_argument("--teacher-stages", choices=("stride", "nominal"), default="stride",
                   help="the teacher's node stages for the correspondence GED, as search.ged_stages")
    s.set_defaults(fn=cmd_graph)
