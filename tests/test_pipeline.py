"""``segdistill pipeline`` (segdistill/search/pipeline.py): end to end on tiny synthetic data (teacher trained first,
search, distilled retrain, eval, profile, export, report with the Pareto plot), a re-run skips finished stages, a
killed stage resumes from its last.pt, changed settings are refused, and bad input is a clear ConfigError.

Tiny on purpose: 48x64 images, the tiny chain space and the fake torch-cpu table of tests/test_search_hook.py, two
iterations per training stage, one thread; nothing is timed.
"""
from __future__ import annotations

import json

import pytest
import yaml
from test_search_hook import search_cfg

from segdistill.cli import main
from segdistill.config import load_config, save_config
from segdistill.engine.checkpoint import build_from_checkpoint
from segdistill.errors import ConfigError
from segdistill.latency import standalone as core
from segdistill.search import pipeline as pl

OUTPUTS = ("teacher/best.pt", "teacher/done.json", "search/genotype.json", "search/report.md", "retrain/best.pt",
           "retrain/config.yaml", "eval/metrics.json", "profile/profile.json", "export/student.onnx",
           "export/export.json", "report.md", "pareto.png", "summary.json")


@pytest.fixture(autouse=True)
def one_thread():
    with core.torch_threads(1):
        yield


def pipeline_cfg(tmp_path, out="pipe"):
    """The tiny search config of the search tests, plus a teacher trained first (LR-ASPP x0.25) and pixel KD."""
    cfg = search_cfg(tmp_path, out=out, iters=2, budget=10.0)
    cfg.pipeline.teacher_model = "lraspp_mobilenetv2"
    cfg.pipeline.teacher_overrides = ["model.width_mult=0.25"]
    cfg.pipeline.retrain_iters = 2
    cfg.pipeline.profile_runs = 3
    cfg.distill.pixel.weight = 1.0
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole pipeline run (through the command line, from a saved YAML) and its summary."""
    tmp = tmp_path_factory.mktemp("pipeline")
    with core.torch_threads(1):
        cfg = pipeline_cfg(tmp)
        save_config(cfg, tmp / "pipe.yaml")
        main(["pipeline", str(tmp / "pipe.yaml")])
    return tmp, json.loads((tmp / "pipe" / "summary.json").read_text())


def test_pipeline_end_to_end_writes_every_stage(finished):
    tmp, summary = finished
    out = tmp / "pipe"
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    student, meta = build_from_checkpoint(out / "retrain" / "best.pt")
    assert meta["model"]["name"] == "searched"
    genotype = json.loads((out / "search" / "genotype.json").read_text())
    assert student.arch_spec["genotype"] == genotype  # the searched student is the derived network
    rc = yaml.safe_load((out / "retrain" / "config.yaml").read_text())
    assert rc["distill"]["teacher"] == str(out / "teacher" / "best.pt") and rc["train"]["iters"] == 2
    assert rc["search"]["space"] is None and rc["model"]["arch"]["genotype"] == str(out / "search" / "genotype.json")
    assert "kd_pixel" in (out / "retrain" / "metrics.jsonl").read_text()  # retrained with distillation
    tc = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    assert tc["model"]["name"] == "lraspp_mobilenetv2" and tc["model"]["width_mult"] == 0.25
    row = summary["profile"]["platforms"]["torch-cpu"]
    assert row["budget_ms"] == 10.0 and row["predicted_ms"] > 0 and row["student_ms"] > 0 and row["teacher_ms"] > 0
    assert 0 <= summary["eval"]["student"]["miou"] <= 1 and 0 <= summary["eval"]["teacher"]["miou"] <= 1
    assert summary["export"]["ok"] and summary["export"]["max_abs_diff"] < 1e-3
    assert all(not s["skipped"] for s in summary["stages"].values()) and set(summary["stages"]) == set(pl.STAGES)
    report = (out / "report.md").read_text()
    for words in ("pareto.png", "torch-cpu", "search/genotype.json", "export/student.onnx", "measured / predicted",
                  "teacher", "threads", "arch_", "search/latency.png"):
        assert words in report, words


def test_rerun_skips_finished_stages_and_refuses_other_settings(finished, capsys):
    tmp, _ = finished
    out = tmp / "pipe"
    stamps = {s: (out / s / "done.json").stat().st_mtime_ns for s in pl.STAGES}
    weights = (out / "retrain" / "best.pt").read_bytes()
    main(["pipeline", str(tmp / "pipe.yaml")])
    printed = capsys.readouterr().out
    assert "== pipeline stage" not in printed  # nothing ran again
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in pl.STAGES} == stamps
    assert (out / "retrain" / "best.pt").read_bytes() == weights
    summary = json.loads((out / "summary.json").read_text())
    assert all(s["skipped"] for s in summary["stages"].values())
    assert "skipped (finished before)" in (out / "report.md").read_text()
    # another retrain budget in the same folder: refused, naming the stage and the key
    cfg = load_config(tmp / "pipe.yaml", ["pipeline.retrain_iters=3"])
    with pytest.raises(ConfigError, match=r"retrain stage .*train\.iters: 2 then, 3 now"):
        pl.run_pipeline(cfg)


@pytest.mark.slow  # ~21 s on 2 loaded cores: the retrain, eval, profile and export again
def test_a_killed_stage_resumes_and_later_stages_run(tmp_path, monkeypatch):
    """The retrain stage killed after its checkpoint: the re-run skips teacher and search and resumes retrain."""
    cfg = pipeline_cfg(tmp_path)
    calls = []
    real = pl.train_stage

    def dies_in_retrain(c):
        calls.append((c.train.out_dir, c.train.resume))
        if c.train.out_dir.endswith("retrain") and len([x for x in calls if x[0].endswith("retrain")]) == 1:
            c.train.iters = 1  # stands for a run killed after iteration 1 (its last.pt is written)
            real(c)
            raise KeyboardInterrupt
        return real(c)

    monkeypatch.setattr(pl, "train_stage", dies_in_retrain)
    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(pipeline_cfg(tmp_path))
    out = tmp_path / "pipe"
    assert (out / "retrain" / "last.pt").is_file() and not (out / "retrain" / "done.json").exists()
    calls.clear()
    monkeypatch.setattr(pl, "train_stage", lambda c: calls.append((c.train.out_dir, c.train.resume)) or real(c))
    summary = pl.run_pipeline(cfg)
    assert [c[0].rsplit("/", 1)[-1] for c in calls] == ["retrain"]
    assert summary["stages"]["teacher"]["skipped"] and summary["stages"]["search"]["skipped"]
    assert not summary["stages"]["retrain"]["skipped"] and (out / "export" / "student.onnx").is_file()
    _, meta = build_from_checkpoint(out / "retrain" / "last.pt")
    assert meta["iteration"] == 2  # resumed at 1, finished the 2 iterations


@pytest.mark.slow  # ~14 s on 2 loaded cores: a second pipeline (GED on)
def test_given_teacher_skips_the_teacher_stage(finished, tmp_path):
    tmp, _ = finished
    cfg = pipeline_cfg(tmp_path, out="given")
    cfg.distill.teacher = str(tmp / "pipe" / "teacher" / "best.pt")
    cfg.search.lambda_ged, cfg.search.ged_timeout = 0.5, 1.0
    summary = pl.run_pipeline(cfg)
    assert "teacher" not in summary["stages"] and not (tmp_path / "given" / "teacher").exists()
    assert summary["teacher"] == cfg.distill.teacher
    assert "not run (teacher given" in (tmp_path / "given" / "report.md").read_text()


@pytest.mark.parametrize("override, words", [
    ("distill.teacher={tmp}/missing/best.pt", "missing/best.pt: no such teacher checkpoint file"),
    ("search.space=null", "sets no search space"),
    ("pipeline.teacher_model=null", "model.name=chain_supernet cannot be trained as one"),
    ("pipeline.teacher_model=no_such_net", "pipeline.teacher_model='no_such_net' is not a registered model"),
    ("pipeline.retrain_overrides=[train.iterz=3]", "pipeline.retrain_overrides: unknown config key 'train.iterz'"),
    ("pipeline.retrain_iters=0", "pipeline.retrain_iters=0 is not allowed"),
    ("search.budget.gpu-far-away=3", "gpu-far-away"),
])
def test_bad_input_is_a_clear_config_error_before_any_work(tmp_path, capsys, override, words):
    cfg = pipeline_cfg(tmp_path)
    cfg.model.name = "chain_supernet"
    save_config(cfg, tmp_path / "pipe.yaml")
    with pytest.raises(SystemExit) as e:
        main(["pipeline", str(tmp_path / "pipe.yaml"), override.format(tmp=tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "pipe").exists()  # nothing was started


def test_shipped_pipeline_config_loads_and_is_checked():
    cfg = load_config("pipeline-camvid-cpu")
    assert cfg.search.space == "chain" and cfg.search.budget and cfg.pipeline.retrain_iters
    with pytest.raises(ConfigError, match="no such teacher checkpoint file"):
        pl.check_pipeline(load_config("pipeline-camvid-cpu", ["distill.teacher=/nowhere/best.pt"]))


def test_profile_scales_the_prediction_by_the_state_control_when_the_table_keeps_its_fit(finished, tmp_path):
    """A table whose correction kept its timed networks: the profile stage times three of them again and gives the
    prediction scaled by their ratio now/then beside the plain one; the report says so."""
    from test_search_hook import fake_lut

    from segdistill.latency.lut import LatencyTable
    from segdistill.latency.network import sample_networks
    from segdistill.latency.state import fit_record

    tmp, _ = finished
    cfg = load_config(tmp / "pipe.yaml")
    table = LatencyTable.load(fake_lut(tmp_path / "lut_torch-cpu.json"))
    nets = sample_networks(3, (1, 3, 16, 16), seed=3, num_classes=3)
    table.correction = {"model": "none", "coef": {}, "measured": fit_record(nets, [1e-3, 2e-3, 3e-3], {}, "then")}
    table.save()
    student, _ = build_from_checkpoint(tmp / "pipe" / "retrain" / "best.pt")
    teacher, _ = build_from_checkpoint(tmp / "pipe" / "teacher" / "best.pt")
    row = pl.measure(cfg, student, teacher, tmp_path)["platforms"]["torch-cpu"]
    st = row["state"]
    assert len(st["nets"]) == 3 and st["table"]["fit_date"] == "then" and st["ratio"] > 1  # µs-scale "fit times"
    assert row["predicted_now_ms"] == pytest.approx(row["predicted_ms"] * st["ratio"])
    assert row["measured_over_predicted_now"] == pytest.approx(row["student_ms"] / row["predicted_now_ms"])
    assert row["within_budget_at_fit_state"] == (row["student_ms"] / st["ratio"] <= row["budget_ms"])
    plain = pl.measure(cfg, student, teacher, tmp / "pipe" / "search")["platforms"]["torch-cpu"]
    assert "state" not in plain and "predicted_now_ms" not in plain  # the fake table kept no networks
    summary = json.loads((tmp / "pipe" / "summary.json").read_text())
    summary["profile"]["platforms"]["torch-cpu"] = row
    text = pl.write_report(cfg, summary, tmp_path / "report.md").read_text()
    assert f"State control on torch-cpu: 3 of the networks the table was fitted on run {st['ratio']:.2f} x" in text
    assert f"the table predicts {row['predicted_now_ms']:.3f} ms for the machine as it runs now" in text
    assert f"measured / ratio {row['student_ms'] / st['ratio']:.3f} ms is at or under the budget" in text
