"""``--malloc steady|default`` on ``profile``, ``latency report`` and ``lut build``: parsed, recorded, and a
``default`` measurement never calls ``steady_malloc`` (mallopt cannot be undone in a process, so after it a
``default`` measurement runs in a fresh process or is refused).

Timings are never asserted; measurements use one thread, a quarter-width model at 32x32 and a handful of runs.
"""
import json

import pytest
import torch

from segdistill.cli import build_parser, main
from segdistill.errors import LatencyError
from segdistill.latency import standalone as core
from segdistill.latency.lut import LatencyTable
from segdistill.latency.report import ReportConfig, run_report
from segdistill.models import build_model
from segdistill.tools.profile import format_profile, profile_model

TINY = {"warmup": 1, "min_runs": 2, "min_time": 0.0}
PROFILE = ["profile", "lraspp_mobilenetv2", "--width-mult", "0.25", "--input", "3x32x32", "--platforms", "torch-cpu",
           "--runs", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture
def spy(monkeypatch):
    """A fresh allocator state (steady not set in this process) and a steady_malloc that records its calls."""
    calls = []
    monkeypatch.setattr(core, "_STEADY_SET", None)
    monkeypatch.delenv("SEGDISTILL_MALLOC", raising=False)

    def fake_steady():
        calls.append(core.current_malloc_mode())
        return "glibc steady: M_MMAP_MAX=0, no trim"

    monkeypatch.setattr(core, "steady_malloc", fake_steady)
    return calls


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model("lraspp_mobilenetv2", 11, width_mult=0.25).eval()


def test_malloc_option_is_parsed_with_steady_as_today():
    parser = build_parser()
    assert parser.parse_args(PROFILE + ["--malloc", "default"]).malloc == "default"
    assert parser.parse_args(PROFILE).malloc is None  # None: $SEGDISTILL_MALLOC, else steady
    assert parser.parse_args(["latency", "report", "--malloc", "default"]).malloc == "default"
    assert parser.parse_args(["lut", "build", "--platform", "torch-cpu", "--out", "t.json",
                              "--malloc", "steady"]).malloc == "steady"
    with pytest.raises(SystemExit):
        parser.parse_args(PROFILE + ["--malloc", "jemalloc"])


def test_profile_default_never_calls_steady_malloc_and_records_it(spy, tiny_model):
    res = profile_model(tiny_model, (1, 3, 32, 32), platforms=("torch-cpu",), warmup=1, runs=2, threads=1,
                        min_time=0.0, malloc="default")
    assert spy == []
    assert res["malloc"] == "default" and res["latency"]["torch-cpu"]["malloc"].startswith("default")
    assert "malloc       default" in format_profile(res)
    assert core.current_malloc_mode() == "steady"  # the mode is restored after the profile


def test_profile_steady_calls_steady_malloc(spy, tiny_model):
    res = profile_model(tiny_model, (1, 3, 32, 32), platforms=("torch-cpu",), warmup=1, runs=2, threads=1,
                        min_time=0.0)
    assert spy == ["steady"] and res["malloc"] == "steady"
    assert res["latency"]["torch-cpu"]["malloc"].startswith("glibc steady")


def test_profile_cli_writes_the_malloc_mode(spy, tmp_path, capsys):
    out = tmp_path / "p.json"
    main(PROFILE + ["--malloc", "default", "--out", str(out)])
    data = json.loads(out.read_text())
    assert spy == [] and data["malloc"] == "default" and data["latency"]["torch-cpu"]["malloc"].startswith("default")
    assert "malloc       default" in capsys.readouterr().out
    main(PROFILE + ["--out", str(out)])
    assert spy == ["steady"] and json.loads(out.read_text())["malloc"] == "steady"


def test_default_after_steady_runs_in_a_fresh_process(spy, tiny_model, monkeypatch):
    monkeypatch.setattr(core, "_STEADY_SET", "glibc steady: M_MMAP_MAX=0, no trim")  # as after a steady profile
    isolated = []

    def fake_isolated(fn, *args, **kwargs):
        isolated.append((fn.__name__, kwargs, core.current_malloc_mode()))
        return {"latency": {}, "malloc": "default"}

    monkeypatch.setattr(core, "run_isolated", fake_isolated)
    res = profile_model(tiny_model, (1, 3, 32, 32), platforms=("torch-cpu",), warmup=1, runs=2, malloc="default")
    assert isolated == [("profile_model", {"malloc": "default"}, "default")] and "fresh" in res["malloc_process"]
    # measuring torch-cpu in this process with default after steady is refused, never silently steady
    with core.malloc_mode("default"), pytest.raises(LatencyError, match="fresh process"):
        core.get_platform("torch-cpu").prepare(tiny_model, (torch.zeros(1, 3, 32, 32),), 1)
    assert spy == []


def test_bad_malloc_values_are_errors(monkeypatch):
    with pytest.raises(LatencyError, match="unknown malloc mode"):
        with core.malloc_mode("tcmalloc"):
            pass
    monkeypatch.setenv("SEGDISTILL_MALLOC", "off")
    with pytest.raises(LatencyError, match="SEGDISTILL_MALLOC"):
        core.current_malloc_mode()


def test_lut_build_records_default_and_refuses_to_mix(spy, tmp_path):
    out = tmp_path / "lut.json"
    key = "conv:8-8:8x8:k3s1d1e1:relu"
    base = ["lut", "build", "--platform", "torch-cpu", "--threads", "1", "--out", str(out), "--quiet",
            "--warmup", "1", "--runs", "2", "--min-time", "0"]
    with core.malloc_mode("default"):
        table = LatencyTable(core.new_table("torch-cpu", 1, TINY))
    table.ensure([key], progress=False)  # extended in the table's own mode, whatever the process's is
    table.save(out)
    assert spy == [] and core.table_malloc_mode(table.data) == "default"
    with pytest.raises(SystemExit) as e:
        main(base + ["--model", "lraspp_mobilenetv2", "--width-mult", "0.25", "--input", "3x32x32", "--malloc", "steady"])
    assert e.value.code == 2 and spy == []


def test_default_table_is_extended_isolated_after_steady(spy, monkeypatch):
    monkeypatch.setattr(core, "_STEADY_SET", "glibc steady: M_MMAP_MAX=0, no trim")
    seen = []

    def fake_isolated(fn, *args, **kwargs):
        seen.append(core.current_malloc_mode())
        return {"median_ms": 1.0, "p90_ms": 1.0, "min_ms": 1.0, "runs": 2, "io_elems": 10}

    monkeypatch.setattr(core, "run_isolated", fake_isolated)
    with core.malloc_mode("default"):
        table = core.new_table("torch-cpu", 1, TINY)
    core.measure_into(table, ["conv:8-8:8x8:k3s1d1e1:relu"], progress=False)
    assert seen == ["default"] and spy == []


def test_report_with_default_records_it_and_never_sets_steady(spy, tmp_path):
    cfg = ReportConfig(platforms=["torch-cpu"], inputs=[(1, 3, 32, 48)], nets=6, repeats=1, threads=1, zoo=[],
                       block_timing=dict(TINY), net_timing=dict(TINY), out_dir=str(tmp_path), malloc="default")
    res = run_report(cfg, progress=False, log=lambda *_: None)
    assert spy == [] and res["config"]["malloc"] == "default"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["config"]["malloc"] == "default" and "torch-cpu malloc: default" in (tmp_path / "report.md").read_text()
    table = LatencyTable.load(tmp_path / "lut-torch-cpu.json")
    assert core.table_malloc_mode(table.data) == "default"
    cfg.malloc = "steady"  # the same folder in the other mode would mix both in one table
    with pytest.raises(LatencyError, match="measured with malloc default"):
        run_report(cfg, progress=False, log=lambda *_: None)
