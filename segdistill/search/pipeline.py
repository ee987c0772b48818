"""``segdistill pipeline CONFIG [overrides]``: teacher -> search -> retrain -> eval -> profile -> export -> report.

What a user runs to go from data (and maybe a teacher) to a searched, distilled, measured and exported student. Every
stage writes into its own subfolder of ``train.out_dir``::

    teacher/   the teacher, trained first when ``distill.teacher`` is null: ``pipeline.teacher_model`` (null: the
               config's ``model.*``) for ``pipeline.teacher_iters`` (null: ``train.iters``), plain cross-entropy,
               then ``pipeline.teacher_overrides``; ``best.pt`` is the teacher of every later stage
    search/    ``segdistill search`` with the config's ``search.*`` and ``train.*`` and that teacher (KD, GED):
               ``genotype.json``, ``arch_*.png`` (alpha heatmaps), ``search_log.jsonl``, its own ``report.md``
    retrain/   the derived network as ``model.name=searched``, ``model.arch.genotype=search/genotype.json``, trained
               from scratch with the config's distillation terms (``distill.*``) from the same teacher for
               ``pipeline.retrain_iters`` (null: ``train.iters``), then ``pipeline.retrain_overrides``;
               ``best.pt`` is the product
    eval/      ``metrics.json``: val mIoU (one confusion matrix over the split, ``eval.*``) of the student and teacher
    profile/   ``profile.json``: per budgeted platform (``search.budget``; torch-cpu when none) the student's
               measured latency (the benchmark protocol, ``pipeline.profile_runs`` runs, ``train.threads``) beside
               its predicted latency (the search's table) and the budget; the teacher measured the same way; where
               the table keeps the networks its correction was fitted on, the state control's ratio (three of them
               timed again, ``segdistill/latency/state.py``), the prediction scaled by it, and whether the
               measured latency over the ratio (the table's machine as fitted) is within the budget
    export/    ``student.onnx`` (checked against PyTorch; a mismatch stops the pipeline) and ``export.json``
    report.md, pareto.png   the one report (always rewritten; cheap): stages, accuracy, latency, the Pareto plot of
               mIoU against measured latency (searched student, teacher, and any ``extra_points``)

Resume: a stage is finished when its folder holds ``done.json`` (written last, atomically); a re-run skips it. A
stage that was killed restarts from its ``last.pt`` (``train.resume=auto``). ``done.json`` records the stage's
settings (and its inputs' settings); a re-run whose settings differ is refused with a ConfigError naming the first
difference, rather than mixing two runs: use a new ``train.out_dir``, or delete that stage's folder and the later ones.

Retrain budget: ``pipeline.retrain_iters`` defaults to ``train.iters``, the search's own iteration count, so a
pipeline spends the same number of weight steps on the search and on the product; the CamVid benchmark sets it to
the hand-designed students' budget so that the comparison is at equal cost.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch

from ..config import Config, apply_overrides, to_dict
from ..errors import ConfigError, SegDistillError

STAGES = ("teacher", "search", "retrain", "eval", "profile", "export")
SUPERNETS = ("chain_supernet", "lgcnet_supernet")


# ---------------------------------------------------------------------------- checks
def _teacher_given(cfg) -> bool:
    return bool(cfg.distill.teacher)


def teacher_model_name(cfg) -> str:
    return cfg.pipeline.teacher_model or cfg.model.name


def check_pipeline(cfg: Config, source: str = "the config") -> None:
    """Every input problem as a ConfigError before any work (a missing teacher, no search space, a platform
    without table or device, overrides that do not parse)."""
    from ..models import list_models
    from .objective import check_budgets, platform_availability

    if not cfg.search.space:
        raise ConfigError(f"{source} sets no search space: the pipeline searches a student, so set search.space=chain "
                          "(and search.budget.<platform>=MS); to distil a fixed model run `segdistill distill`")
    check_budgets(cfg.search)
    platform_availability(cfg.search)
    d = cfg.distill
    if _teacher_given(cfg):
        spec = d.teacher
        if Path(spec).is_file():
            pass
        elif spec in list_models():
            if not d.teacher_weights or not Path(d.teacher_weights).is_file():
                raise ConfigError(f"distill.teacher={spec!r} is a model name; its weights distill.teacher_weights="
                                  f"{d.teacher_weights!r} are not a file: give the trained weights, or a teacher "
                                  "checkpoint as distill.teacher=PATH/best.pt")
        else:
            raise ConfigError(f"distill.teacher={spec}: no such teacher checkpoint file; give an existing best.pt, "
                              "or set distill.teacher=null to train a teacher first (pipeline.teacher_model=NAME)")
    else:
        name = teacher_model_name(cfg)
        if name in SUPERNETS or name.split(":")[0] == "searched":
            raise ConfigError(f"no teacher: distill.teacher is null and model.name={name} cannot be trained as one; "
                              "set distill.teacher=PATH/best.pt, or pipeline.teacher_model=NAME (e.g. "
                              "deeplabv3plus_resnet18) to train a teacher first")
        if name not in list_models() and ":" not in name:
            raise ConfigError(f"pipeline.teacher_model={name!r} is not a registered model (segdistill models lists "
                              "them)")
    for stage in ("teacher", "retrain"):
        key = f"pipeline.{stage}_overrides"
        try:
            apply_overrides(copy.deepcopy(cfg), getattr(cfg.pipeline, f"{stage}_overrides"))
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None


# ---------------------------------------------------------------------------- stage configs
def _base(cfg: Config, stage: str) -> Config:
    c = copy.deepcopy(cfg)
    c.train.out_dir = str(Path(cfg.train.out_dir) / stage)
    c.train.resume = None
    return c


def teacher_config(cfg: Config) -> Config:
    """The teacher run: the teacher model trained alone (no search, no distillation)."""
    c = _base(cfg, "teacher")
    p = cfg.pipeline
    if p.teacher_model and p.teacher_model != cfg.model.name:
        c.model.name, c.model.width_mult, c.model.output_stride, c.model.aux, c.model.arch = (
            p.teacher_model, 1.0, None, False, {})
    c.search.space, c.distill.teacher, c.distill.cache = None, None, None
    c.train.iters = p.teacher_iters or cfg.train.iters
    return apply_overrides(c, p.teacher_overrides)


def search_config(cfg: Config, teacher: str) -> Config:
    c = _base(cfg, "search")
    c.distill.teacher = teacher
    return c


def retrain_config(cfg: Config, teacher: str, genotype: str | Path) -> Config:
    """The derived network trained from scratch with the config's distillation terms."""
    c = _base(cfg, "retrain")
    c.search.space = None
    m = c.model
    m.name, m.arch, m.width_mult, m.output_stride, m.aux, m.pretrained = (
        "searched", {"genotype": str(genotype)}, 1.0, None, False, None)
    c.distill.teacher = teacher
    c.train.iters = cfg.pipeline.retrain_iters or cfg.train.iters
    return apply_overrides(c, cfg.pipeline.retrain_overrides)


# ---------------------------------------------------------------------------- stage bookkeeping
def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(c: Config, drop: tuple[str, ...] = ()) -> dict:
    """What a training stage's result depends on: its config less the keys that only steer the process, the
    ``pipeline`` section (its effect is in the stage's own keys) and the sections in ``drop`` (unused there)."""
    d = {k: v for k, v in to_dict(c).items() if k not in ("pipeline", *drop)}
    for k in ("resume", "progress"):
        d["train"].pop(k, None)
    return d


class StageBook:
    """``done.json`` per stage: skip finished stages, refuse a re-run with other settings."""

    def __init__(self, root: Path):
        self.root = root
        self.records: dict[str, dict] = {}

    def folder(self, stage: str) -> Path:
        return self.root / stage

    def done(self, stage: str, key: dict) -> dict | None:
        f = self.folder(stage) / "done.json"
        if not f.is_file():
            return None
        try:
            rec = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{f} is damaged; delete it to run the {stage} stage again") from None
        if rec.get("key") != json.loads(json.dumps(key, default=str)):
            old, new = _flat(rec.get("key", {})), _flat(json.loads(json.dumps(key, default=str)))
            diff = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), "?")
            raise ConfigError(f"the {stage} stage in {self.folder(stage)} was finished with other settings ({diff}: "
                              f"{old.get(diff)!r} then, {new.get(diff)!r} now); use a new train.out_dir, or delete "
                              f"{self.folder(stage)} and the stages after it to redo them")
        self.records[stage] = {**rec, "skipped": True}
        return rec

    def finish(self, stage: str, key: dict, outputs: dict, elapsed: float) -> dict:
        from ..latency.standalone import write_json_atomic

        rec = {"stage": stage, "key": json.loads(json.dumps(key, default=str)), "outputs": outputs,
               "elapsed_s": round(elapsed, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(rec, self.folder(stage) / "done.json")
        self.records[stage] = {**rec, "skipped": False}
        return rec


def train_stage(c: Config) -> dict:
    """Run (or resume from ``last.pt``) one training stage; returns the trainer's result."""
    from ..engine.hooks import build_hooks
    from ..engine.trainer import Trainer

    out = Path(c.train.out_dir)
    c.train.resume = "auto" if (out / "last.pt").is_file() else None
    return Trainer(c, build_hooks(c)).train()


# ---------------------------------------------------------------------------- measuring
def _predictor(cfg: Config, search_dir: Path, platform: str):
    """The search's latency table of ``platform`` (measured during the search, or ``search.lut``)."""
    from ..latency.lut import LatencyTable
    from ..latency.predictor import LatencyPredictor

    path = search_dir / f"lut_{platform}.json"
    if not path.is_file():
        path = Path(cfg.search.lut.get(platform, ""))
    if not path.is_file():
        return None
    return LatencyPredictor(LatencyTable.load(path), measure=True, progress=False)


def profile_platforms(cfg: Config) -> list[str]:
    return list(cfg.search.budget) or ["torch-cpu"]


def measure(cfg: Config, student, teacher, search_dir: Path) -> dict:
    """Measured (student and teacher) and predicted (student) latency per platform at ``search.input``."""
    from ..tools.profile import profile_model

    shape = tuple(cfg.search.input)
    plats = profile_platforms(cfg)
    runs = cfg.pipeline.profile_runs
    prof = {who: profile_model(m, shape, platforms=plats, runs=runs, threads=cfg.train.threads)
            for who, m in (("student", student), ("teacher", teacher))}
    rows = {}
    for p in plats:
        row = {"budget_ms": cfg.search.budget.get(p)}
        pred = _predictor(cfg, search_dir, p)
        if pred is not None and hasattr(student, "latency_netspec"):
            try:
                row["predicted_ms"] = float(pred.predict(student.latency_netspec(shape))["predicted_ms"])
            except SegDistillError as e:
                row["predicted_error"] = str(e).splitlines()[0]
        for who in ("student", "teacher"):
            lat = prof[who]["latency"].get(p, {})
            if "median_ms" in lat:
                row[f"{who}_ms"], row[f"{who}_p90_ms"] = lat["median_ms"], lat["p90_ms"]
            else:
                row[f"{who}_note"] = lat.get("skipped") or lat.get("error") or "not measured"
        from ..latency import state

        if "predicted_ms" in row and state.kept_networks(pred.table) and not pred.table.local_problem():
            row["state"] = state.measure_state(pred.table, repeats=3)  # the state control
            row["predicted_now_ms"] = row["predicted_ms"] * row["state"]["ratio"]
        if "student_ms" in row and "predicted_ms" in row:
            row["measured_over_predicted"] = row["student_ms"] / row["predicted_ms"]
            if "predicted_now_ms" in row:
                row["measured_over_predicted_now"] = row["student_ms"] / row["predicted_now_ms"]
        if "student_ms" in row and row["budget_ms"]:
            row["within_budget"] = row["student_ms"] <= row["budget_ms"]
            if "state" in row:  # the budget is the table's machine as fitted: measured / ratio is that machine now
                row["within_budget_at_fit_state"] = row["student_ms"] / row["state"]["ratio"] <= row["budget_ms"]
        rows[p] = row
    return {"input": list(shape), "threads": prof["student"]["threads"], "platforms": rows, "student": prof["student"],
            "teacher": prof["teacher"]}


# ---------------------------------------------------------------------------- pipeline
def run_pipeline(cfg: Config, extra_points: dict | None = None, title: str = "segdistill pipeline",
                 command: str | None = None) -> dict:
    """Run every stage not yet finished (module docstring); returns the summary written to ``summary.json``.

    ``extra_points``: more models for the Pareto plot and the accuracy table, ``{label: {"miou": float,
    "ms": {platform: measured ms}}}`` (the demo adds its hand-designed student)."""
    from .._optional import require

    check_pipeline(cfg)
    for mod, extra in (("matplotlib", "plot"), ("onnxruntime", "onnx"), ("onnxscript", "onnx")):
        require(mod, extra, "segdistill pipeline")  # fail before training, not an hour in
    root = Path(cfg.train.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    book = StageBook(root)
    t_all = time.perf_counter()

    def begin(stage: str, what: str):
        print(f"\n== pipeline stage {stage}: {what}")
        return time.perf_counter()

    # 1. teacher
    if _teacher_given(cfg):
        teacher = cfg.distill.teacher
        teacher_key = {"given": teacher, "weights": cfg.distill.teacher_weights,
                       "sha256": file_digest(cfg.distill.teacher_weights or teacher)}  # a new teacher file: redo
    else:
        tc = teacher_config(cfg)
        teacher_key = run_key(tc, drop=("search", "distill"))  # neither is used
        teacher = str(book.folder("teacher") / "best.pt")
        if book.done("teacher", teacher_key) is None:
            t = begin("teacher", f"train {tc.model.name} for {tc.train.iters} iterations")
            res = train_stage(tc)
            book.finish("teacher", teacher_key, {"best.pt": teacher, "best_miou": res["best_miou"]},
                        time.perf_counter() - t)
    after = {"teacher": fingerprint(teacher_key)}

    # 2. search
    sc = search_config(cfg, teacher)
    search_key = {**run_key(sc), "after": dict(after)}
    genotype = book.folder("search") / "genotype.json"
    if book.done("search", search_key) is None:
        budgets = ", ".join(f"{p} {b:g} ms" for p, b in cfg.search.budget.items()) or "no budget"
        t = begin("search", f"{cfg.search.space} space, {sc.train.iters} iterations, {budgets}")
        train_stage(sc)
        if not genotype.is_file():
            raise SegDistillError(f"the search in {genotype.parent} finished without writing genotype.json")
        book.finish("search", search_key, {"genotype.json": str(genotype)}, time.perf_counter() - t)
    after["search"] = fingerprint(search_key)

    # 3. retrain
    rc = retrain_config(cfg, teacher, genotype)
    retrain_key = {**run_key(rc, drop=("search",)), "after": dict(after)}
    student_ckpt = book.folder("retrain") / "best.pt"
    if book.done("retrain", retrain_key) is None:
        t = begin("retrain", f"the derived network, distilled, {rc.train.iters} iterations")
        res = train_stage(rc)
        book.finish("retrain", retrain_key, {"best.pt": str(student_ckpt), "best_miou": res["best_miou"]},
                    time.perf_counter() - t)
    after["retrain"] = fingerprint(retrain_key)

    # the models of the last three stages
    from ..engine.checkpoint import build_from_checkpoint

    models: dict = {}

    def student_and_teacher():
        if not models:
            from ..data import build_dataset
            from ..distill.distiller import load_teacher

            val = build_dataset(cfg.data, cfg.data.val_split, train=False)
            models["val"] = val
            models["student"] = build_from_checkpoint(student_ckpt)[0].eval()
            d = copy.deepcopy(cfg.distill)
            d.teacher = teacher
            models["teacher"] = load_teacher(d, val.num_classes, val.class_names)[0].eval()
        return models

    # 4. eval
    eval_key = {"data": to_dict(cfg.data), "eval": to_dict(cfg.eval), "after": dict(after)}
    eval_file = book.folder("eval") / "metrics.json"
    if book.done("eval", eval_key) is None:
        from ..engine.evaluate import evaluate
        from ..engine.trainer import resolve_device
        from ..latency.standalone import write_json_atomic

        t = begin("eval", f"val mIoU of the searched student and the teacher ({cfg.data.name}, {cfg.data.val_split})")
        m = student_and_teacher()
        val, device = m["val"], resolve_device(cfg.train.device)
        metrics = {"class_names": list(val.class_names), "split": val.split}
        for who in ("student", "teacher"):
            r = evaluate(m[who].to(device), val, cfg.eval, device, val.num_classes, cfg.data.ignore_index,
                         progress=False)
            m[who].cpu()
            metrics[who] = {k: r[k] for k in ("miou", "pixel_acc", "iou") if k in r}
            print(f"{who}: val mIoU {100 * r['miou']:.2f}")
        write_json_atomic(json.loads(json.dumps(metrics, default=float)), eval_file)
        book.finish("eval", eval_key, {"metrics.json": str(eval_file)}, time.perf_counter() - t)
    after["eval"] = fingerprint(eval_key)

    # 5. profile
    profile_key = {"input": list(cfg.search.input), "platforms": profile_platforms(cfg), "budget": cfg.search.budget,
                   "runs": cfg.pipeline.profile_runs, "threads": cfg.train.threads, "after": dict(after)}
    profile_file = book.folder("profile") / "profile.json"
    if book.done("profile", profile_key) is None:
        from ..latency.standalone import write_json_atomic

        t = begin("profile", f"{', '.join(profile_platforms(cfg))} at {'x'.join(map(str, cfg.search.input))}")
        m = student_and_teacher()
        prof = measure(cfg, m["student"], m["teacher"], book.folder("search"))
        for p, row in prof["platforms"].items():
            print(f"{p}: student measured {_ms(row.get('student_ms'))}, predicted {_ms(row.get('predicted_ms'))}, "
                  f"budget {_ms(row.get('budget_ms'))}; teacher measured {_ms(row.get('teacher_ms'))}")
        write_json_atomic(json.loads(json.dumps(prof, default=float)), profile_file)
        book.finish("profile", profile_key, {"profile.json": str(profile_file)}, time.perf_counter() - t)
    after["profile"] = fingerprint(profile_key)

    # 6. export
    export_key = {"input": list(cfg.search.input), "after": {k: after[k] for k in ("teacher", "search", "retrain")}}
    onnx_file = book.folder("export") / "student.onnx"
    if book.done("export", export_key) is None:
        from ..latency.standalone import write_json_atomic
        from ..tools.export import export_onnx

        t = begin("export", f"ONNX at {'x'.join(map(str, cfg.search.input))}, checked against PyTorch")
        exp = export_onnx(student_and_teacher()["student"], onnx_file, tuple(cfg.search.input))
        print(exp["message"])
        write_json_atomic(json.loads(json.dumps(exp, default=float)), book.folder("export") / "export.json")
        book.finish("export", export_key, {"student.onnx": str(onnx_file)}, time.perf_counter() - t)

    # report (always rewritten)
    summary = {
        "out_dir": str(root), "teacher": teacher, "genotype": str(genotype), "student": str(student_ckpt),
        "onnx": str(onnx_file), "eval": json.loads(eval_file.read_text()),
        "profile": {k: v for k, v in json.loads(profile_file.read_text()).items() if k not in ("student", "teacher")},
        "export": json.loads((book.folder("export") / "export.json").read_text()),
        "stages": {s: {"skipped": r["skipped"], "elapsed_s": r["elapsed_s"]} for s, r in book.records.items()},
        "threads": torch.get_num_threads() if cfg.train.threads is None else cfg.train.threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "extra_points": extra_points or {},
    }
    summary["pareto_png"] = str(pareto_plot(summary, root / "pareto.png"))
    summary["total_s"] = round(time.perf_counter() - t_all, 2)
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(cfg, summary, root / "report.md", title, command)
    print(f"\npipeline finished: student {student_ckpt}, ONNX {onnx_file}, report {root / 'report.md'}")
    return summary


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f} ms"


# ---------------------------------------------------------------------------- report
def pareto_plot(summary: dict, path: Path) -> Path | None:
    """mIoU against measured latency, one panel per platform: the searched student (its predicted latency as a
    hollow marker joined to the measured one), the teacher, the extra points and the budget."""
    from ..viz import new_figure, save_figure

    plats = [p for p, r in summary["profile"]["platforms"].items() if "student_ms" in r]
    try:
        fig = new_figure(5.2 * max(1, len(plats)), 4.0, "the pipeline's Pareto plot")
    except SegDistillError as e:
        warnings.warn(str(e))
        return None
    ev = summary["eval"]
    if not plats:
        fig.text(0.5, 0.5, "no platform could be measured on this machine", ha="center")
        return save_figure(fig, path)
    axes = fig.subplots(1, len(plats), squeeze=False)[0]
    for ax, p in zip(axes, plats):
        r = summary["profile"]["platforms"][p]
        s_miou, t_miou = 100 * ev["student"]["miou"], 100 * ev["teacher"]["miou"]
        ax.scatter([r["student_ms"]], [s_miou], marker="*", s=180, color="tab:red", zorder=3, label="searched student")
        if "predicted_ms" in r:
            ax.scatter([r["predicted_ms"]], [s_miou], marker="*", s=180, facecolors="none", edgecolors="tab:red",
                       zorder=3, label="searched, predicted")
            ax.plot([r["predicted_ms"], r["student_ms"]], [s_miou, s_miou], color="tab:red", lw=0.8, ls=":")
        if "teacher_ms" in r:
            ax.scatter([r["teacher_ms"]], [t_miou], marker="o", s=60, color="tab:blue", zorder=3, label="teacher")
        for i, (label, pt) in enumerate(summary.get("extra_points", {}).items()):
            if p in pt.get("ms", {}):
                ax.scatter([pt["ms"][p]], [100 * pt["miou"]], marker="s", s=50, color=f"C{2 + i}", zorder=3,
                           label=label)
        if r.get("budget_ms"):
            ax.axvline(r["budget_ms"], color="gray", ls="--", lw=1, label=f"budget {r['budget_ms']:g} ms")
        ax.set_xlabel(f"measured latency on {p} (ms, batch 1, torch threads: {summary['threads']})")
        ax.set_ylabel("val mIoU (%)")
        ax.set_title(f"{p}: mIoU vs latency (upper left is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.25)  # room for the legend
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def write_report(cfg: Config, summary: dict, path: Path, title: str = "segdistill pipeline",
                 command: str | None = None) -> Path:
    from .genotype import load_genotype

    root = Path(summary["out_dir"])
    ev, prof, exp = summary["eval"], summary["profile"], summary["export"]
    rel = lambda p: os.path.relpath(p, path.parent)  # noqa: E731
    load = summary.get("load_average")
    lines = [f"# {title}: {root}", ""]
    if command:
        lines += [f"Command: `{command}`.", ""]
    lines += [f"Data {cfg.data.name} (val split `{ev['split']}`), search space `{cfg.search.space}` at "
              f"{'x'.join(map(str, cfg.search.input))} (latency input), {summary['threads']} torch threads"
              + (f", machine load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else "")
              + ".", "", "## Stages", "", "| stage | folder | status | elapsed s |", "|---|---|---|---|"]
    for s in STAGES:
        r = summary["stages"].get(s)
        if r is None:
            lines.append(f"| {s} | - | not run (teacher given: `{summary['teacher']}`) | - |" if s == "teacher"
                         else f"| {s} | - | - | - |")
            continue
        status = "skipped (finished before)" if r["skipped"] else "ran"
        lines.append(f"| {s} | `{s}/` | {status} | {r['elapsed_s']:.1f} |")
    lines += ["", "Elapsed seconds of a skipped stage are those of the run that finished it.", "",
              "## Accuracy (val, one confusion matrix over the split)", "", "| model | mIoU % | pixel acc % |",
              "|---|---|---|",
              f"| searched student (`retrain/best.pt`) | {100 * ev['student']['miou']:.2f} | "
              f"{100 * ev['student']['pixel_acc']:.2f} |",
              f"| teacher (`{rel(summary['teacher']) if Path(summary['teacher']).exists() else summary['teacher']}`) | "
              f"{100 * ev['teacher']['miou']:.2f} | {100 * ev['teacher']['pixel_acc']:.2f} |"]
    for label, pt in summary.get("extra_points", {}).items():
        lines.append(f"| {label} | {100 * pt['miou']:.2f} | {100 * pt['pixel_acc']:.2f} |" if "pixel_acc" in pt
                     else f"| {label} | {100 * pt['miou']:.2f} | - |")
    lines += ["", f"## Latency at {'x'.join(map(str, prof['input']))} (batch 1, {prof['threads']} threads)", "",
              "| platform | budget ms | predicted ms | measured ms (p90) | measured / predicted | within budget | "
              "teacher measured ms |", "|---|---|---|---|---|---|---|"]
    for p, r in prof["platforms"].items():
        measured = (f"{r['student_ms']:.3f} ({r['student_p90_ms']:.3f})" if "student_ms" in r
                    else f"not measured: {r.get('student_note')}")
        lines.append(f"| {p} | {_num(r.get('budget_ms'))} | {_num(r.get('predicted_ms'))} | {measured} | "
                     f"{_num(r.get('measured_over_predicted'), '.2f')} | "
                     f"{ {True: 'yes', False: 'no'}.get(r.get('within_budget'), '-') } | {_num(r.get('teacher_ms'))} |")
    lines += ["", "Predicted: the search's latency table summed over the network's blocks (with the table's "
              "correction, if fitted); measured: the whole network (`segdistill profile`'s protocol, median). "
              "A gap between them is the table's error on this machine, not hidden."]
    for p, r in prof["platforms"].items():
        if "state" in r:
            lines.append(f"State control on {p}: {len(r['state']['nets'])} of the networks the table was fitted on "
                         f"run {r['state']['ratio']:.2f} x their fit times now (spread {r['state']['spread']:.2f}), so "
                         f"the table predicts {r['predicted_now_ms']:.3f} ms for the machine as it runs now"
                         + (f"; measured / that: {r['measured_over_predicted_now']:.2f}"
                            if "measured_over_predicted_now" in r else "")
                         + (f"; measured / ratio {r['student_ms'] / r['state']['ratio']:.3f} ms is "
                            f"{'at or under' if r['within_budget_at_fit_state'] else 'over'} the budget in the "
                            "table's fit state" if "within_budget_at_fit_state" in r else "") + ".")
    lines.append("")
    if summary.get("pareto_png"):
        lines += ["## Pareto plot", "", f"![mIoU vs measured latency]({rel(summary['pareto_png'])})", ""]
    g = load_genotype(summary["genotype"])
    lines += ["## Searched architecture", "", f"Genotype `{rel(summary['genotype'])}` (space `{g['space']}`); "
              f"search report `{rel(root / 'search' / 'report.md')}`.", ""]
    if g.get("space") == "chain":
        lines += ["| stage | width | strided op | layers |", "|---|---|---|---|"]
        for name, st in zip(("stride 8", "stride 16", "stride 32"), g["stages"]):
            layers = ", ".join(f"{la['op']}<-{la['inputs']}" for la in st["layers"]) or "(none)"
            lines.append(f"| {name} | {st['width']} | {st['down']} | {layers} |")
        lines.append("")
    heat = last_heatmap(root / "search")
    if heat:
        lines += [f"![architecture weights]({rel(heat)})", ""]
    if (root / "search" / "latency.png").is_file():
        lines += [f"![latency over the search]({rel(root / 'search' / 'latency.png')})", ""]
    lines += ["## Export", "", f"`{rel(summary['onnx'])}`: {exp['message']}; argmax agreement "
              f"{100 * exp['argmax_agreement']:.2f}%.", ""]
    path.write_text("\n".join(lines))
    return path


def _num(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def last_heatmap(search_dir: Path) -> Path | None:
    """The search's last alpha heatmap (``arch_<iter>.png``), if drawn."""
    pngs = sorted(Path(search_dir).glob("arch_*.png"))
    return pngs[-1] if pngs else None


# ---------------------------------------------------------------------------- command
def cmd_pipeline(args):
    from ..config import load_config

    cfg = load_config(args.config, args.overrides)
    command = " ".join(["segdistill pipeline", str(args.config), *args.overrides])
    run_pipeline(cfg, command=command)
