"""Commands for depth-level dynamic networks, and the ``--depth`` option of eval / profile / export / predict.

    segdistill eval runs/ddnn/best.pt --depth r18          # one depth, as a plain model
    segdistill eval runs/ddnn/best.pt --depth all          # a table: every depth's mIoU, params, MACs
    segdistill profile runs/ddnn/best.pt --depth all       # a table: every depth's params, MACs, latency per platform
    segdistill export runs/ddnn/best.pt --depth all --out m.onnx   # m_r10.onnx, m_r18.onnx, ... (one per depth)
    segdistill predict runs/ddnn/best.pt img.png --depth r10
    segdistill latency predict --lut lut.json --model runs/ddnn/best.pt --depth all
    segdistill ddnn pick runs/ddnn/best.pt --lut lut.json --budget 40   # the most accurate depth within 40 ms

``ddnn pick`` takes each depth's validation mIoU from the checkpoint (``miou@NAME``, recorded by the EKD hook when
best.pt was written; ``--eval`` evaluates them on the run's val split instead), predicts each depth's latency from the
table, and names the most accurate depth whose prediction meets the budget. When the table was measured on this
machine (same device, platform available), the chosen depth is also measured whole; if the measurement exceeds the
budget, the next most accurate depth is tried.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, SegDistillError
from ..shapes import parse_shape
from .model import unwrap_dynamic


# ---------------------------------------------------------------------------- --depth helpers
def add_depth_option(parser, allow_all: bool = True) -> None:
    parser.add_argument("--depth", help="a depth-level dynamic model (ddnn_*): run this named depth"
                        + (" (`all`: every depth, one row or file each)" if allow_all else ""))


def select_depths(model, depth: str | None, allow_all: bool = True) -> list[str | None]:
    """``[None]`` without ``--depth``; the named depth (checked, clear error listing the depths); or every depth,
    shallowest first, for ``all``."""
    if not depth:
        return [None]
    ddnn = unwrap_dynamic(model)
    if depth == "all":
        if not allow_all:
            raise ConfigError(f"--depth all is not supported here; name one of {', '.join(ddnn.depth_names)}")
        return list(ddnn.depth_names)
    return [ddnn.resolve_depth(depth)]


def set_depth(model, depth: str | None):
    """Switch ``model`` to ``depth`` (None: leave it); returns the model."""
    if depth:
        unwrap_dynamic(model).set_depth(depth)
    return model


def depth_path(path: str | Path, depth: str) -> Path:
    """``model.onnx`` -> ``model_r18.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{depth}{path.suffix}")


def depth_cost(model, input_shape) -> dict:
    """Inference parameters and MACs of ``model`` at its active depth."""
    from ..tools.profile import count_flops, count_inference_params

    return {"params": count_inference_params(model, input_shape), "macs": count_flops(model, input_shape)["macs"]}


def format_depth_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Rows of dicts as a plain-text table; ``columns``: (key, header, format)."""
    widths = [max(14, len(h) + 2) for _, h, _ in columns]
    bw = max([16] + [len(str(r['blocks'])) + 2 for r in rows])  # MobileNetV2 depths name 7 stages
    head = f"{'depth':<8}{'blocks':<{bw}}" + "".join(f"{h:>{w}}" for (_, h, _), w in zip(columns, widths))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{(format(r[k], f) if isinstance(r.get(k), (int, float)) else str(r.get(k, '-'))):>{w}}"
                        for (k, _, f), w in zip(columns, widths))
        lines.append(f"{r['depth']:<8}{str(r['blocks']):<{bw}}{cells}")
    return "\n".join(lines)


def eval_all_depths(model, ds, cfg, device, shape, out: str | None = None) -> list[dict]:
    """``segdistill eval --depth all``: every depth's mIoU on ``ds`` with its params and MACs at ``shape``."""
    from ..engine.evaluate import evaluate

    ddnn = unwrap_dynamic(model)
    rows = []
    for d in ddnn.depth_names:
        ddnn.set_depth(d)
        m = evaluate(model, ds, cfg.eval, device, ds.num_classes, cfg.data.ignore_index)
        rows.append({"depth": d, "blocks": ddnn.depth, "miou": m["miou"], "pixel_acc": m["pixel_acc"], "iou": m["iou"],
                     **depth_cost(ddnn, shape)})
    ddnn.set_depth(ddnn.full_depth)
    print(format_depth_table([{**r, "miou": 100 * r["miou"], "params": r["params"] / 1e6, "macs": r["macs"] / 1e9}
                              for r in rows],
                             [("miou", "mIoU %", ".2f"), ("params", "params (M)", ".3f"), ("macs", "GMACs", ".3f")]))
    print(f"(params used at inference; MACs = multiply-adds counted once, at {'x'.join(map(str, shape[1:]))})")
    if out:
        _write(out, {"split": ds.split, "root": str(ds.root), "class_names": list(ds.class_names),
                     "input_shape": list(shape), "depths": rows})
    return rows


def profile_all_depths(model, shape, platforms, runs, warmup, out: str | None = None) -> list[dict]:
    """``segdistill profile --depth all``: params, MACs and latency per platform of every depth."""
    from ..tools.profile import profile_model

    ddnn = unwrap_dynamic(model)
    rows = []
    for d in ddnn.depth_names:
        ddnn.set_depth(d)
        res = profile_model(model, shape, platforms=tuple(platforms), runs=runs, warmup=warmup)
        row = {"depth": d, "blocks": ddnn.depth, "params": res["params_inference"], "macs": res["macs"]}
        for p, lat in res["latency"].items():
            row[p] = lat.get("median_ms", "skipped" if "skipped" in lat else "failed")
        rows.append({**row, "profile": res})
    ddnn.set_depth(ddnn.full_depth)
    plats = list(rows[0]["profile"]["latency"]) if rows else []
    print(format_depth_table([{**r, "params": r["params"] / 1e6, "macs": r["macs"] / 1e9} for r in rows],
                             [("params", "params (M)", ".3f"), ("macs", "GMACs", ".3f")]
                             + [(p, f"{p} ms", ".2f") for p in plats]))
    print(f"(latency: median ms, batch 1, {'x'.join(map(str, shape[1:]))}, >= {runs} runs; params used at inference)")
    if out:
        _write(out, {"input_shape": list(shape), "depths": rows})
    return rows


def export_depths(model, depths: list[str | None], out, shape, dynamic_batch: bool) -> list[dict]:
    """One ONNX file per depth (``OUT`` itself for a single depth, ``OUT_<depth>`` for several), each checked."""
    from ..tools.export import export_onnx

    results = []
    for d in depths:
        set_depth(model, d)
        path = depth_path(out, d) if len(depths) > 1 else Path(out)
        res = export_onnx(model, path, shape, dynamic_batch=dynamic_batch)
        print(f"exported {res['path']}{f' (depth {d})' if d else ''}: max |onnx - torch| = {res['max_abs_diff']:.3g}, "
              f"argmax agreement {100 * res['argmax_agreement']:.2f}%")
        results.append({"depth": d, **res})
    return results


def _write(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- ddnn pick
def depth_mious(ckpt, model, meta, evaluate_now: bool) -> dict[str, float]:
    """Validation mIoU per depth: recorded in the checkpoint (``miou@NAME``), or evaluated now."""
    ddnn = unwrap_dynamic(model)
    metrics = meta.get("metrics") or {}
    found = {d: metrics[f"miou@{d}"] for d in ddnn.depth_names if f"miou@{d}" in metrics}
    if evaluate_now or len(found) < len(ddnn.depth_names):
        if not evaluate_now:
            raise ConfigError(f"{ckpt} records no per-depth mIoU (miou@DEPTH: written by EKD training); add --eval to "
                              "evaluate every depth on the run's val split")
        import torch

        from ..config import from_dict
        from ..data import build_dataset
        from ..engine.evaluate import evaluate

        cfg = from_dict(meta.get("config") or {})
        ds = build_dataset(cfg.data, cfg.data.val_split, train=False)
        found = {}
        for d in ddnn.depth_names:
            ddnn.set_depth(d)
            found[d] = evaluate(model, ds, cfg.eval, torch.device("cpu"), ds.num_classes, cfg.data.ignore_index,
                                progress=False)["miou"]
        ddnn.set_depth(ddnn.full_depth)
    return found


def pick_depth(model, mious: dict[str, float], table, budget_ms: float, shape, measure_missing: bool = True,
               measure_local: bool = True, runs: int = 30) -> dict:
    """The most accurate depth whose predicted latency (and, on the table's own machine, measured latency) is within
    ``budget_ms``. Returns ``{"depth": name or None, "rows": [...], "platform", "budget_ms", "measured_on_this_machine"}``."""
    from ..latency import standalone as core
    from ..latency.predictor import LatencyPredictor
    from ..latency.zoo import decompose_model
    from ..models.output import deploy_copy

    ddnn = unwrap_dynamic(model)
    predictor = LatencyPredictor(table, measure=measure_missing, progress=False)
    local = measure_local and table.local_problem() is None
    rows = []
    for d in ddnn.depth_names:
        ddnn.set_depth(d)
        net = decompose_model(ddnn.model_name, shape, ddnn.num_classes, ddnn.backbone.width_mult,
                              ddnn.output_stride, model=ddnn).net
        rows.append({"depth": d, "blocks": ddnn.depth, "miou": mious[d], "predicted_ms": predictor.predict(net)["predicted_ms"]})
    chosen = None
    for r in sorted(rows, key=lambda r: -r["miou"]):
        if r["predicted_ms"] > budget_ms:
            continue
        if local:
            import torch

            ddnn.set_depth(r["depth"])
            x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0))
            lat = core.measure_module(table.platform, deploy_copy(ddnn), (x,), table.threads, min_runs=runs)
            r["measured_ms"] = lat["median_ms"]
            if lat["median_ms"] > budget_ms:
                continue
        chosen = r["depth"]
        break
    ddnn.set_depth(ddnn.full_depth)
    return {"depth": chosen, "rows": rows, "platform": table.platform, "threads": table.threads,
            "budget_ms": budget_ms, "measured_on_this_machine": local, "input_shape": list(shape)}


def cmd_ddnn_pick(args):
    from ..engine.checkpoint import build_from_checkpoint
    from ..latency.lut import LatencyTable

    model, meta = build_from_checkpoint(args.checkpoint)
    unwrap_dynamic(model)
    table = LatencyTable.load(args.lut)
    before = len(table)
    res = pick_depth(model, depth_mious(args.checkpoint, model, meta, args.eval), table, args.budget,
                     parse_shape(args.input), measure_missing=not args.no_measure, measure_local=not args.no_local)
    if len(table) > before:
        table.save()
    print(format_depth_table([{**r, "miou": 100 * r["miou"]} for r in res["rows"]],
                             [("miou", "val mIoU %", ".2f"), ("predicted_ms", "predicted ms", ".2f"),
                              ("measured_ms", "measured ms", ".2f")]))
    where = "predicted and measured here" if res["measured_on_this_machine"] else "predicted (the table is from another machine)"
    if res["depth"] is None:
        raise SegDistillError(f"no depth of {args.checkpoint} meets {args.budget:g} ms on {table.platform} ({where}); "
                              "the fastest is " + min(res["rows"], key=lambda r: r["predicted_ms"])["depth"])
    print(f"pick: {res['depth']} (most accurate depth within {args.budget:g} ms on {table.platform}, "
          f"{table.threads} threads; {where})")
    if args.out:
        _write(args.out, {"checkpoint": str(args.checkpoint), "lut": str(args.lut), **res})


def add_commands(sub) -> None:
    """Register ``ddnn`` on the segdistill argparse sub-parsers."""
    p = sub.add_parser("ddnn", help="depth-level dynamic networks: pick the depth for a device's latency budget")
    dsub = p.add_subparsers(dest="ddnn_command", required=True)
    s = dsub.add_parser("pick", help="the most accurate depth of a DDNN checkpoint within a latency budget")
    s.add_argument("checkpoint")
    s.add_argument("--lut", required=True, help="a latency table of the target platform (segdistill lut build)")
    s.add_argument("--budget", type=float, required=True, help="milliseconds")
    s.add_argument("--input", default="3x180x240", help="C x H x W (batch 1)")
    s.add_argument("--eval", action="store_true", help="evaluate every depth now instead of reading miou@DEPTH")
    s.add_argument("--no-measure", action="store_true", help="never measure blocks missing from the table")
    s.add_argument("--no-local", action="store_true", help="prediction only, even on the table's own machine")
    s.add_argument("--out", help="write the choice and every depth's numbers as JSON here")
    s.set_defaults(fn=cmd_ddnn_pick)
