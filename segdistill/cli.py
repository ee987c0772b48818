"""The ``segdistill`` command line: train, distill, config, eval, predict, profile, export, models, demo, lut, latency,
ddnn, search, derive, pipeline, graph.

Every command that takes a config also takes ``section.key=value`` overrides after it, e.g.::

    segdistill train configs/camvid-cpu.yaml model.name=segformer_mitb0 train.iters=200
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SegDistillError
from .shapes import parse_shape


def _write_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- commands
def cmd_train(args, distill: bool = False):
    from .config import load_config
    from .engine.hooks import run_training
    from .errors import ConfigError

    cfg = load_config(args.config, args.overrides)
    if distill and not cfg.distill.teacher:
        raise ConfigError("segdistill distill needs a teacher: set distill.teacher=PATH/best.pt "
                          "(or a model name with distill.teacher_weights=PATH)")
    if not distill and cfg.distill.teacher:
        raise ConfigError(f"{args.config or 'the config'} sets distill.teacher: run `segdistill distill` to distil, "
                          "or set distill.teacher=null to train without a teacher")
    result, main_rank = run_training(cfg)
    if main_rank:
        what = "the student alone" if distill else "the model's weights"
        print(f"done: best val mIoU {100 * result['best_miou']:.2f}; checkpoints in {cfg.train.out_dir} "
              f"(best.pt: {what}, for eval/profile/export/predict; last.pt: the full run, to resume)")


def cmd_distill(args):
    cmd_train(args, distill=True)


def cmd_config(args):
    from .config_help import config_text

    print(config_text(args.config, args.overrides, section=args.section, as_yaml=args.yaml), end="")


def _set_depth(model, depth: str | None) -> dict:
    """``--depth NAME`` of a depth-level dynamic network (segdistill.dynamic); ``{"depth": NAME}`` or ``{}``."""
    if not depth:
        return {}
    from .dynamic.cli import select_depths, set_depth

    name = select_depths(model, depth, allow_all=False)[0]
    set_depth(model, name)
    return {"depth": name}


def cmd_eval(args):
    from .config import apply_overrides, from_dict, load_config
    from .data import build_dataset
    from .engine import distributed as dist
    from .engine.checkpoint import build_from_checkpoint
    from .engine.evaluate import evaluate
    from .engine.metrics import format_table
    from .errors import DataError

    device = dist.setup_distributed()
    model, meta = build_from_checkpoint(args.checkpoint)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:  # the run's own data and eval settings, recorded in the checkpoint
        cfg = apply_overrides(from_dict(meta.get("config") or {}), args.overrides)
    for flag in ("mode", "flip"):
        if getattr(args, flag) is not None:
            setattr(cfg.eval, flag, getattr(args, flag))
    if args.scales:
        cfg.eval.scales = args.scales
    if args.dataset:
        cfg.data.name = args.dataset
    ds = build_dataset(cfg.data, args.split or cfg.data.val_split, train=False, root=args.root)
    if ds.num_classes != model.num_classes:
        raise DataError(
            f"the checkpoint {args.checkpoint} predicts {model.num_classes} classes but dataset {cfg.data.name} "
            f"({ds.root}) has {ds.num_classes}; evaluate it on the dataset it was trained for"
        )
    ds.validate()
    model.to(device)
    if args.depth == "all":  # depth-level dynamic networks: every depth's mIoU, params and MACs
        from .dynamic.cli import eval_all_depths, select_depths

        select_depths(model, args.depth)
        eval_all_depths(model, ds, cfg, device, (1, *ds[0]["image"].shape), args.out)
        return dist.cleanup()
    depth = _set_depth(model, args.depth)
    metrics = evaluate(model, ds, cfg.eval, device, ds.num_classes, cfg.data.ignore_index)
    if dist.is_main():
        print(format_table(metrics, ds.class_names))
        if args.out:
            _write_json({"checkpoint": str(args.checkpoint), "split": ds.split, "root": str(ds.root),
                         "class_names": list(ds.class_names), "eval": vars(cfg.eval), **depth, **metrics}, args.out)
    dist.cleanup()


def cmd_predict(args):
    from .engine.checkpoint import build_from_checkpoint
    from .tools.predict import predict_paths

    model, meta = build_from_checkpoint(args.checkpoint)
    _set_depth(model, args.depth)
    data = meta.get("data", {})
    files = predict_paths(
        model, args.inputs, args.out_dir, mean=data.get("mean"), std=data.get("std"),
        palette=data.get("palette"), resize=data.get("resize"), ignore_index=data.get("ignore_index", 255),
    )
    print(f"wrote {len(files)} files to {args.out_dir}")


def cmd_profile(args):
    import torch

    from .engine.checkpoint import model_or_checkpoint
    from .latency.standalone import malloc_mode
    from .tools.profile import format_profile, profile_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = model_or_checkpoint(args.model, args.num_classes, args.width_mult)
    if args.depth == "all":
        from .dynamic.cli import profile_all_depths, select_depths

        select_depths(model, args.depth)
        with malloc_mode(args.malloc):  # every depth's profile_model measures in this mode
            profile_all_depths(model, parse_shape(args.input), args.platforms, args.runs, args.warmup, args.out)
        return
    depth = _set_depth(model, args.depth)
    result = profile_model(model, parse_shape(args.input), platforms=tuple(args.platforms), runs=args.runs,
                           warmup=args.warmup, malloc=args.malloc)
    result["model"] = args.model
    result.update(depth)
    print(format_profile(result))
    if args.out:
        _write_json(result, args.out)


def cmd_export(args):
    from .engine.checkpoint import model_or_checkpoint
    from .tools.export import export_onnx

    model, _ = model_or_checkpoint(args.model, args.num_classes, args.width_mult)
    if args.depth:  # one ONNX file per depth of a depth-level dynamic network
        from .dynamic.cli import export_depths, select_depths

        for res in export_depths(model, select_depths(model, args.depth), args.out, parse_shape(args.input),
                                 args.dynamic_batch):
            if not res["ok"]:
                raise SegDistillError(res.get("message", "ONNX output differs from PyTorch"))
        return
    res = export_onnx(model, args.out, parse_shape(args.input), dynamic_batch=args.dynamic_batch)
    print(f"exported {res['path']}: max |onnx - torch| = {res['max_abs_diff']:.3g}, argmax agreement {100 * res['argmax_agreement']:.2f}%")
    if not res["ok"]:
        raise SegDistillError(res.get("message", "ONNX output differs from PyTorch"))


def cmd_models(args):
    from tqdm import tqdm

    from .models import build_model, count_parameters, list_models
    from .tools.profile import count_flops

    names = [n for n in list_models() if not args.filter or args.filter in n]
    shape = parse_shape(args.input)
    rows = []
    for name in tqdm(names, desc="models", disable=not args.flops, leave=False):
        model = build_model(name, args.num_classes, width_mult=args.width_mult).eval()
        row = {"name": name, "params_m": count_parameters(model) / 1e6}
        if args.flops:
            row["gmacs"] = count_flops(model, shape)["macs"] / 1e9
        rows.append(row)
    head = f"{'model':<28}{'params (M)':>12}" + (f"{'GMACs @' + 'x'.join(map(str, shape[1:])):>22}" if args.flops else "")
    print(head)
    for r in rows:
        print(f"{r['name']:<28}{r['params_m']:>12.2f}" + (f"{r['gmacs']:>22.2f}" if args.flops else ""))
    if args.flops:
        print("(MACs = multiply-adds counted once, from torch.utils.flop_counter; FLOPs = 2 x MACs)")


def cmd_demo(args):
    from .tools.demo import run_demo

    run_demo(args.out_dir, fast=args.fast, overrides=args.overrides)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segdistill", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train", help="train a segmentation model from a YAML config")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="section.key=value")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("distill", help="train a student from a teacher with any combination of KD terms",
                       description="KD terms and their weights/schedules live under distill.* (see configs/kd-camvid-cpu.yaml); "
                                   "distill.method=skd|aicsd|heteroakd picks a paper's combination.")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="section.key=value, e.g. distill.teacher=runs/t/best.pt distill.pixel.weight=1")
    s.set_defaults(fn=cmd_distill)

    s = sub.add_parser("config", help="print a resolved config: every key with its value, meaning and allowed values",
                       description="Loads CONFIG with its overrides exactly as train/distill/search do (preset, file, "
                                   "overrides, checks) and prints one key a line, grouped by section.")
    s.add_argument("config", help="a YAML file or a shipped config name (e.g. camvid-cpu)")
    s.add_argument("overrides", nargs="*", help="section.key=value")
    s.add_argument("--section", help="only this section (e.g. train, distill, distill.pixel)")
    s.add_argument("--yaml", action="store_true", help="the plain resolved YAML only (what config.yaml beside a run holds)")
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy of a checkpoint on any split")
    s.add_argument("checkpoint")
    s.add_argument("overrides", nargs="*", help="section.key=value (e.g. data.resize=[180,240])")
    s.add_argument("--config", help="take data/eval settings from this config instead of the checkpoint's own")
    s.add_argument("--dataset", help="dataset name (camvid, cityscapes, voc, ade20k, folder, synthetic)")
    s.add_argument("--root", help="dataset folder")
    s.add_argument("--split", help="split name (default: the config's val split)")
    s.add_argument("--mode", choices=["whole", "slide"], default=None)
    s.add_argument("--flip", action="store_true", default=None)
    s.add_argument("--scales", type=float, nargs="+")
    s.add_argument("--out", help="write the metrics as JSON here")
    s.add_argument("--depth", help="ddnn_* models: evaluate this named depth (`all`: a table of every depth)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("predict", help="write colorized masks and overlays for images or folders")
    s.add_argument("checkpoint")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--out-dir", default="predictions")
    s.add_argument("--depth", help="ddnn_* models: predict with this named depth")
    s.set_defaults(fn=cmd_predict)

    for name, fn, helptext in (
        ("profile", cmd_profile, "parameters, FLOPs and latency on torch-cpu, onnxruntime-cpu (and CUDA)"),
        ("export", cmd_export, "export to ONNX and check it against PyTorch"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model", help="a registered model name or a checkpoint path")
        s.add_argument("--input", default="3x180x240", help="C x H x W (batch 1)")
        s.add_argument("--num-classes", type=int, default=11, help="for a model name (a checkpoint knows its own)")
        s.add_argument("--width-mult", type=float, default=1.0, help="for a model name")
        s.add_argument("--depth", help="ddnn_* models: this named depth (`all`: every depth, "
                       + ("a table)" if name == "profile" else "one ONNX file each, OUT_<depth>.onnx)"))
        s.set_defaults(fn=fn)
        if name == "profile":
            s.add_argument("--platforms", nargs="+", default=["torch-cpu", "onnxruntime-cpu", "torch-cuda"])
            s.add_argument("--runs", type=int, default=50)
            s.add_argument("--warmup", type=int, default=10)
            s.add_argument("--threads", type=int)
            s.add_argument("--malloc", choices=["steady", "default"], default=None,
                           help="torch-cpu allocator while timing: steady (default; glibc keeps freed memory, as "
                                "standalone.steady_malloc() sets it) or default (glibc untouched, as a plain process)")
            s.add_argument("--out", help="write the profile as JSON here")
        else:
            s.add_argument("--out", default="model.onnx")
            s.add_argument("--dynamic-batch", action="store_true")

    s = sub.add_parser("models", help="list the registered models with parameters and FLOPs")
    s.add_argument("--filter", help="only names containing this")
    s.add_argument("--no-flops", dest="flops", action="store_false", help="parameters only (faster)")
    s.add_argument("--input", default="3x180x240")
    s.add_argument("--num-classes", type=int, default=11)
    s.add_argument("--width-mult", type=float, default=1.0)
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("demo", help="train, distil, search, evaluate, profile and export on the built-in synthetic data, with a report")
    s.add_argument("--out-dir", default="runs/demo")
    s.add_argument("--fast", action="store_true", help="a much shorter run (for tests)")
    s.add_argument("overrides", nargs="*", help="section.key=value applied to every demo run (teacher, student, distilled student)")
    s.set_defaults(fn=cmd_demo)

    from .latency.cli import add_commands as add_latency_commands  # lut build/blocks/show, latency predict/fit/report

    add_latency_commands(sub)
    from .dynamic.cli import add_commands as add_ddnn_commands  # ddnn pick

    add_ddnn_commands(sub)
    from .search.cli import add_commands as add_search_commands  # search, graph

    add_search_commands(sub)
    for name in ("train", "distill", "search", "pipeline"):  # every command that takes a config
        sub.choices[name].epilog = ("Every config key, its meaning and allowed values: segdistill config CONFIG "
                                    "[overrides] (--section NAME, --yaml).")
    return p


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also come after options (`eval ckpt --split val data.resize=null`)
    late = [e for e in extra if "=" in e and not e.startswith("-")]
    if hasattr(args, "overrides") and len(late) == len(extra):
        args.overrides = list(args.overrides) + late
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.fn(args)
    except SegDistillError as e:
        print(f"segdistill {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
