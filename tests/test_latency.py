"""Latency tables and the predictor: keys, table files, sums, corrections, expected latency, errors, CLI.

Timings are never asserted here (they are measured in `segdistill latency report`); measurements that do run use one
thread, tiny inputs and a handful of runs.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill.cli import main
from segdistill.errors import LatencyError, SegDistillError
from segdistill.latency import standalone as core
from segdistill.latency import state
from segdistill.latency.lut import LatencyTable, MissingBlocksError
from segdistill.latency.network import ChainNet, NetSpec, Node, sample_networks
from segdistill.latency.predictor import LatencyPredictor, apply_correction, cross_val_predictions, select_correction
from segdistill.latency.report import (
    ReportConfig,
    _evaluate,
    _scatter,
    accuracy,
    format_markdown,
    noise,
    refit_report,
    run_report,
    spearman,
)
from segdistill.latency.spaces import build_space
from segdistill.latency.standalone import BlockKey
from segdistill.latency.zoo import decompose_model

TINY = {"warmup": 1, "min_runs": 3, "min_time": 0.0}
FOREIGN_DEVICE = {"cpu": "ARMv8 Processor rev 1 (v8l)", "cpu_count": 6, "machine": "aarch64",
                  "os": "Linux-5.10.120-tegra-aarch64-with-glibc2.31", "gpu": "Orin"}


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def fake_table(entries: dict, platform="onnxruntime-cpu", device=None, **extra) -> dict:
    """A table as another machine would have written it (nothing measured here)."""
    return {"format": "segdistill-latency-table", "version": 1, "platform": platform,
            "platform_info": {"onnxruntime": "1.16.3", "torch": "2.1.0"}, "threads": 4, "timing": dict(TINY),
            "device": device or FOREIGN_DEVICE,
            "versions": {"python": "3.8.10", "torch": "2.1.0", "onnxruntime": "1.16.3"},
            "date": "2025-03-01T10:00:00+01:00", "units": "ms", "built_for": [],
            "entries": {k: {"median_ms": v, "p90_ms": v, "runs": 50} for k, v in entries.items()}, **extra}


def tiny_net() -> NetSpec:
    """stem conv -> MBConv -> residual add -> classifier -> resize, on 3x16x16."""
    keys = [BlockKey("conv", 3, 8, 16, 16, 3, 2, act="relu"), BlockKey("mbconv", 8, 8, 8, 8, 3, 1, 1, 6, "relu6"),
            BlockKey("add", 8, 8, 8, 8, act="relu"), BlockKey("conv", 8, 4, 8, 8, 1, act="none"),
            BlockKey("resize", 4, 4, 8, 8, out_h=16, out_w=16)]
    nodes = [Node(str(keys[0]), (-1,)), Node(str(keys[1]), (0,)), Node(str(keys[2]), (1, 0)), Node(str(keys[3]), (2,)),
             Node(str(keys[4]), (3,))]
    return NetSpec("tiny", (1, 3, 16, 16), nodes)


# ---------------------------------------------------------------------------- keys and blocks
def test_every_block_kind_builds_round_trips_and_has_its_shape():
    keys = [BlockKey("conv", 4, 8, 9, 11, 3, 2, act="relu"), BlockKey("dilconv", 4, 4, 9, 11, 3, 1, 2, act="relu6"),
            BlockKey("dwsep", 4, 8, 9, 11, 5, 2, act="hswish"), BlockKey("mbconv", 8, 8, 9, 11, 5, 1, 1, 3, "relu6"),
            BlockKey("mbconv", 4, 8, 9, 11, 3, 2, 1, 2.5, "relu6"), BlockKey("zoomconv", 4, 8, 9, 11, 3, 2, act="relu"),
            BlockKey("skip", 4, 4, 9, 11), BlockKey("skip", 4, 8, 9, 11, 1, 2), BlockKey("maxpool", 4, 4, 9, 11, 3, 2),
            BlockKey("avgpool", 4, 4, 9, 11, 3, 1), BlockKey("gpool", 4, 4, 9, 11, 3),
            BlockKey("resize", 4, 4, 5, 6, out_h=9, out_w=11), BlockKey("concat", 4, 12, 9, 11, expansion=3),
            BlockKey("add", 4, 4, 9, 11, act="relu"), BlockKey("basic", 4, 8, 9, 11, 3, 2, act="relu"),
            BlockKey("bottleneck", 8, 16, 9, 11, 3, 1, 2, 4, "relu"), BlockKey("zero", 4, 4, 9, 11)]
    assert {k.kind for k in keys} == set(core.BLOCKS)
    for key in keys:
        assert BlockKey.parse(str(key)) == key
        module, shapes = core.build_from_key(str(key))
        with torch.no_grad():
            out = module(*core.example_inputs(shapes))
        assert tuple(out.shape) == (1, *key.out_shape()), key
    assert str(keys[4]) == "mbconv:4-8:9x11:k3s2d1e2.5:relu6"
    assert str(keys[11]) == "resize:4-4:5x6:k1s1d1e1:none:9x11"


def test_bad_keys_are_clear_errors():
    with pytest.raises(LatencyError, match="not a block key"):
        BlockKey.parse("conv 3x3")
    with pytest.raises(LatencyError, match="unknown block kind 'octconv'.*mbconv"):
        core.build_from_key("octconv:4-4:8x8:k3s1d1e1:relu")
    with pytest.raises(LatencyError, match="needs cin == cout"):
        core.build_block(BlockKey("maxpool", 4, 8, 8, 8, 3))
    with pytest.raises(LatencyError, match="dilation >= 2"):
        core.build_block(BlockKey("dilconv", 4, 4, 8, 8, 3))


# ---------------------------------------------------------------------------- tables
def test_table_round_trip(tmp_path):
    net = tiny_net()
    table = LatencyTable.new("torch-cpu", 1, TINY)
    measured = table.ensure(net.keys(), progress=False)
    assert sorted(measured) == sorted(net.keys())
    path = table.save(tmp_path / "sub" / "lut.json")
    loaded = LatencyTable.load(path)
    assert loaded.data == json.loads(json.dumps(table.data))
    assert loaded.platform == "torch-cpu" and loaded.threads == 1 and len(loaded) == 5
    for field in ("device", "versions", "date", "timing", "platform_info"):
        assert loaded.data[field]
    assert loaded.data["versions"]["torch"] == torch.__version__
    assert loaded.data["platform_info"]["malloc"] == core.steady_malloc()  # how the allocator was set is recorded
    for key in net.keys():
        e = loaded.entries[key]
        assert e["runs"] >= 3 and 0 < e["min_ms"] <= e["median_ms"] <= e["p90_ms"]
    assert loaded.local_problem() is None and loaded.ensure(net.keys()) == []  # nothing re-measured
    assert sorted(p.name for p in path.parent.iterdir()) == ["lut.json"]  # written atomically


def test_bad_table_files_are_clear_errors(tmp_path):
    cases = {"notjson.json": "{ nope", "other.json": json.dumps({"format": "nn-meter", "entries": {}}),
             "newer.json": json.dumps(fake_table({}, version=2)),
             "partial.json": json.dumps({k: v for k, v in fake_table({}).items() if k != "threads"})}
    words = {"notjson.json": "not valid JSON", "other.json": "not a segdistill latency table",
             "newer.json": "format version 2", "partial.json": "threads"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LatencyError, match=words[name]) as e:
            LatencyTable.load(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(LatencyError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_table_from_another_machine_loads_predicts_and_names_missing_blocks(tmp_path):
    net = tiny_net()
    entries = dict(zip(net.keys(), [0.5, 1.25, 0.125, 0.25, 2.0]))
    (tmp_path / "orin.json").write_text(json.dumps(fake_table(entries)))
    table = LatencyTable.load(tmp_path / "orin.json")
    assert "another device" in table.local_problem()
    note = table.device_note()  # said beside every prediction: the figures are the table's device's
    assert "ANOTHER device" in note and repr(table.data["device"]["cpu"]) in note
    assert "this device" in LatencyTable.new("torch-cpu", 1, TINY).device_note()
    pred = LatencyPredictor(table).predict(net)
    assert pred["raw_ms"] == pytest.approx(4.125) and pred["predicted_ms"] == pytest.approx(4.125)
    # a key it lacks: not measured here (other device), an error naming it
    other = NetSpec("wider", (1, 3, 16, 16), [Node("conv:3-16:16x16:k3s2d1e1:relu")])
    with pytest.raises(MissingBlocksError, match="conv:3-16:16x16:k3s2d1e1:relu") as e:
        LatencyPredictor(table).predict(other)
    assert e.value.keys == ["conv:3-16:16x16:k3s2d1e1:relu"] and "standalone.py" in str(e.value)
    assert isinstance(e.value, SegDistillError)
    # a table of a runtime not installed here (a TensorRT plug-in's) loads and predicts too
    (tmp_path / "trt.json").write_text(json.dumps(fake_table(entries, platform="tensorrt-fp16")))
    trt = LatencyTable.load(tmp_path / "trt.json")
    assert "not registered" in trt.local_problem()
    assert LatencyPredictor(trt).predict(net)["raw_ms"] == pytest.approx(4.125)


def test_local_table_measures_missing_blocks_on_demand_unless_told_not_to():
    table = LatencyTable.new("torch-cpu", 1, TINY)
    key = "conv:3-8:16x16:k3s2d1e1:relu"
    with pytest.raises(MissingBlocksError, match="measuring on demand is off"):
        table.ensure([key], measure=False)
    assert table.ensure([key], progress=False) == [key] and key in table
    assert table.latency("zero:4-4:8x8:k1s1d1e1:none") == 0.0  # free op: never measured


# ---------------------------------------------------------------------------- prediction
def test_prediction_is_the_hand_sum_of_a_zoo_models_entries():
    dec = decompose_model("deeplabv3_resnet18", (1, 3, 32, 32), num_classes=5, width_mult=0.25)
    keys = dec.net.keys()
    fixed = [k.rpartition(":")[2] for k in keys if k.startswith("fixed:")]
    # the first block of each dilated stage has convs of two dilations: no library block reproduces it exactly
    assert fixed == ["backbone.layer3.0", "backbone.layer4.0", "head"]
    assert keys[0].startswith("conv:3-16:32x32:k7s2") and keys[1].startswith("maxpool:16-16:16x16:k3s2")
    assert sum(k.startswith("basic:") for k in keys) == 6 and keys[-1] == "resize:5-5:4x4:k1s1d1e1:none:32x32"
    values = {k: 0.1 * (i + 1) for i, k in enumerate(dict.fromkeys(keys))}
    table = LatencyTable(fake_table(values, device=core.machine_info()))
    hand = sum(values[k] for k in keys)
    pred = LatencyPredictor(table, measure=False).predict(dec.net)
    assert pred["raw_ms"] == pytest.approx(hand) and pred["n_blocks"] == len(keys)
    assert pred["fixed_ms"] == pytest.approx(sum(values[k] for k in keys if k.startswith("fixed:")))
    table.correction = {"model": "linear+count", "coef": {"raw": 1.5, "const": 0.25, "count": 0.01}}
    pred = LatencyPredictor(table, measure=False).predict(dec.net)
    assert pred["predicted_ms"] == pytest.approx(1.5 * hand + 0.25 + 0.01 * len(keys))
    io = sum(table.io_elems(k) for k in keys) / 1e6
    assert pred["features"]["io"] == pytest.approx(io) and io > 0
    table.correction = {"model": "linear+io", "coef": {"raw": 1.0, "const": 0.0, "io": -0.5}}
    assert LatencyPredictor(table, measure=False).predict(dec.net)["predicted_ms"] == pytest.approx(hand - 0.5 * io)


def test_fixed_parts_rebuild_from_their_keys_alone():
    dec = decompose_model("segformer_mitb0", (1, 3, 32, 32), num_classes=3, width_mult=0.25)
    assert [k.rpartition(":")[2] for k in dec.net.keys()[:5]] == [f"backbone.stage{i}" for i in (1, 2, 3, 4)] + ["head"]
    head = dec.net.keys()[4]
    module, shapes = core.build_from_key(head)
    assert shapes == [(8, 8, 8), (64, 1, 1), (40, 2, 2), (16, 4, 4)]  # the features the head reads, in its order
    with torch.no_grad():
        assert module(*core.example_inputs(shapes)).shape == (1, 3, 8, 8)
    with pytest.raises(LatencyError, match="no fixed part 'nothing'"):
        core.build_from_key(head.rpartition(":")[0] + ":nothing")


def test_expected_latency_gradient_sign_and_value():
    space = build_space("mbv2-chain", (1, 3, 32, 32), num_classes=4)
    rng = np.random.default_rng(0)
    values = {k: 0.0 if core.is_free(k) else float(rng.uniform(0.1, 2.0)) for k in space.keys()}
    assert sum(core.is_free(k) for k in values) >= 3  # identity skips: no op in a deployed graph
    table = LatencyTable(fake_table(values, device=core.machine_info()))
    table.correction = {"model": "linear", "coef": {"raw": 2.0, "const": 0.5}}
    predictor = LatencyPredictor(table, measure=False)
    alpha = [torch.zeros(len(layer), requires_grad=True) for layer in space.layers]
    e = space.expected_latency(predictor, alpha)
    lat = [np.array([values[str(k)] for k in layer]) for layer in space.layers]
    fixed = sum(values[str(k)] for k in space.stem + space.head)
    assert e.item() == pytest.approx(2.0 * (fixed + sum(t.mean() for t in lat)) + 0.5, rel=1e-5)
    e.backward()
    for a, t in zip(alpha, lat):
        g = a.grad.numpy()
        assert g[t.argmax()] > 0 > g[t.argmin()]  # more weight on the slowest op raises the expected latency
        np.testing.assert_allclose(g, 2.0 * (t - t.mean()) / len(t), rtol=1e-4, atol=1e-7)
    # near one-hot weights: the expected latency is that network's prediction
    choices = [int(t.argmin()) for t in lat]
    sharp = [torch.full((len(layer),), -30.0).index_fill(0, torch.tensor(c), 30.0)
             for layer, c in zip(space.layers, choices)]
    assert space.expected_latency(predictor, sharp).item() == pytest.approx(
        predictor.predict(space.net(choices))["predicted_ms"], rel=1e-4)


def test_correction_fits_and_only_pays_when_better():
    rng = np.random.default_rng(0)
    feats = [{"raw": r, "count": float(n), "io": io, "io:conv": io * f, "io:merge": io * (1 - f)} for r, n, io, f in
             zip(rng.uniform(1, 50, 40), rng.integers(5, 40, 40), rng.uniform(0.1, 5, 40), rng.uniform(0, 1, 40))]
    raw = np.array([f["raw"] for f in feats])
    sel = select_correction(feats, 1.2 * raw + 0.5)
    assert sel["model"] == "linear" and sel["coef"] == pytest.approx({"raw": 1.2, "const": 0.5}, rel=1e-6)
    assert sel["cv_mape"]["linear"] < 1e-6 < sel["cv_mape"]["none"]
    y2 = raw + np.array([0.3 * f["count"] for f in feats])  # a per-block overhead the linear fit cannot explain
    sel2 = select_correction(feats, y2)
    assert sel2["model"] == "linear+count"
    assert sel2["coef"] == pytest.approx({"raw": 1.0, "const": 0.0, "count": 0.3}, abs=1e-6)
    assert apply_correction(sel2, {"raw": torch.tensor(10.0), "count": 4}).item() == pytest.approx(11.2)
    y3 = raw + 10 - np.array([2.0 * f["io:merge"] for f in feats])  # merges that cost less inside a whole graph
    sel3 = select_correction(feats, y3)
    assert sel3["model"] == "linear+io-by-kind" and sel3["coef"]["io:merge"] == pytest.approx(-2.0, rel=1e-6)
    assert sel3["coef"]["const"] == pytest.approx(10.0, rel=1e-6)
    assert sel3["coef"]["io:conv"] == pytest.approx(0, abs=1e-6)


def test_grouped_cross_validation_never_predicts_a_group_from_itself():
    feats = [{"raw": float(r)} for r in range(1, 13)]
    groups = [f"m{i // 2}" for i in range(12)]  # 6 models at two inputs each
    y = np.array([f["raw"] * (3.0 if g == "m0" else 1.0) for f, g in zip(feats, groups)])  # m0 alone runs 3x slower
    pred = cross_val_predictions("linear", feats, y, folds=6, groups=groups)
    assert pred[0] < 0.5 * y[0] and pred[1] < 0.5 * y[1]  # both m0 rows predicted by a fit that saw neither
    ungrouped = cross_val_predictions("linear", feats, y, folds=6)
    assert not np.allclose(pred, ungrouped)


# ---------------------------------------------------------------------------- networks and report
def test_sampled_networks_run_and_are_reproducible():
    nets = sample_networks(6, (1, 3, 48, 64), seed=3, num_classes=5)
    assert [n.keys() for n in nets] == [n.keys() for n in sample_networks(6, (1, 3, 48, 64), seed=3, num_classes=5)]
    assert len({tuple(n.keys()) for n in nets}) == 6
    kinds = {k.split(":")[0] for n in sample_networks(30, (1, 3, 48, 64), seed=0) for k in n.keys()}
    assert {"conv", "mbconv", "dwsep", "resize", "add", "concat"} <= kinds
    for net in nets:
        with torch.no_grad():
            assert ChainNet(net)(torch.randn(1, 3, 48, 64)).shape == (1, 5, 48, 64)
    bad = NetSpec("bad", (1, 3, 16, 16), [Node("conv:4-8:16x16:k3s1d1e1:relu")])
    with pytest.raises(LatencyError, match="expects inputs"):
        bad.check()


def test_report_statistics_and_outputs(tmp_path):
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486833, rel=1e-6)  # scipy.stats.spearmanr
    acc = accuracy([1.0, 2.2, 2.5], [1.0, 2.0, 3.0])
    assert acc["within10_pct"] == pytest.approx(200 / 3) and acc["mape_pct"] == pytest.approx((0 + 10 + 100 / 6) / 3)
    nz = noise([[10.0, 10.0, 11.0]])
    assert nz["spread_median_pct"] == pytest.approx(10.0)
    assert nz["repeat_mape_pct"] == pytest.approx((2 * 0.5 / 10.5 * 100 + 10) / 3)  # each vs the others' median
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        raw, n = float(rng.uniform(1, 20)), int(rng.integers(5, 20))
        m = 1.1 * raw + 0.2
        rows.append({"name": f"r{i}", "kind": "random", "input": "3x16x16", "raw_ms": raw, "n_blocks": n,
                     "fixed_ms": 0.0, "measured_ms": m, "repeats_ms": [m, m * 1.01],
                     "features": {"raw": raw, "count": n}})
    rows.append({"name": "z", "kind": "zoo", "input": "3x16x16", "raw_ms": 5.0, "n_blocks": 9, "fixed_ms": 2.0,
                 "measured_ms": 5.7, "repeats_ms": [5.7], "features": {"raw": 5.0, "count": 9}})
    cfg = ReportConfig(inputs=[(1, 3, 16, 16)], nets=12, zoo=["z"])
    res = _evaluate(cfg, rows)
    assert res["correction"]["model"] == "linear"
    assert res["metrics"]["3x16x16"]["all"]["within10_pct"] == pytest.approx(100.0)
    assert rows[-1]["predicted_ms"] == pytest.approx(5.7, rel=1e-6)
    assert res["correction_all"]["fitted_on"] == 13 and res["metrics"]["3x16x16"]["zoo"]["fit_all"]["n"] == 1
    res["table"], res["minutes"] = "lut.json", 0.1
    res["scatter"] = str(_scatter(tmp_path / "s.png", "torch-cpu", rows, res))
    assert (tmp_path / "s.png").stat().st_size > 1000
    md = format_markdown({"config": vars(cfg), "device": core.machine_info(), "versions": core.library_versions(),
                          "date": "today", "platforms": {"torch-cpu": res, "torch-cuda": {"skipped": "no GPU"}}})
    assert "| 3x16x16 | random | 12 | 100.0%" in md and "Skipped: no GPU" in md and "| z | 3x16x16 |" in md


def test_steady_malloc_is_recorded_and_can_be_turned_off(monkeypatch):
    import platform as pyplatform

    first = core.steady_malloc()
    if sys.platform.startswith("linux") and pyplatform.libc_ver()[0] == "glibc":
        assert first.startswith("glibc steady")
    assert core.steady_malloc() == first  # idempotent
    monkeypatch.setattr(core, "_STEADY_SET", None)  # a process that never set it: the env var leaves it alone
    monkeypatch.setenv("SEGDISTILL_MALLOC", "default")
    assert core.steady_malloc().startswith("default") and not core.steady_malloc_applied()


def test_report_runs_and_refits_from_its_saved_measurements(tmp_path):
    tiny = {"warmup": 1, "min_runs": 2, "min_time": 0.0}
    cfg = ReportConfig(platforms=["torch-cpu"], inputs=[(1, 3, 32, 48)], nets=7, repeats=2, threads=1,
                       zoo=["lraspp_mobilenetv2"], zoo_width=0.25, block_timing=tiny, net_timing=tiny,
                       out_dir=str(tmp_path))
    first = run_report(cfg, progress=False, log=lambda *_: None)
    rows = first["platforms"]["torch-cpu"]["rows"]
    assert [r["kind"] for r in rows] == ["random"] * 7 + ["zoo"] and all(len(r["repeats_ms"]) == 2 for r in rows)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "scatter-torch-cpu.png").is_file()
    again = refit_report(str(tmp_path), log=lambda *_: None)["platforms"]["torch-cpu"]  # measures nothing
    assert [r["measured_ms"] for r in again["rows"]] == [r["measured_ms"] for r in rows]
    assert [r["predicted_ms"] for r in again["rows"]] == pytest.approx([r["predicted_ms"] for r in rows], rel=1e-9)
    table = LatencyTable.load(tmp_path / "lut-torch-cpu.json")
    key = next(k for k in table.entries if not core.is_free(k))
    table.entries[key]["median_ms"] *= 2
    table.save()
    with pytest.raises(LatencyError, match="the table changed"):
        refit_report(str(tmp_path))
    with pytest.raises(LatencyError, match="run the report first"):
        refit_report(str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------- command line and standalone builder
def test_cli_lut_build_show_predict(tmp_path, capsys):
    lut = tmp_path / "lut.json"
    common = ["--input", "3x32x32", "--width-mult", "0.25", "--num-classes", "3"]
    main(["lut", "build", "--platform", "torch-cpu", "--threads", "1", "--model", "lraspp_mobilenetv2", *common,
          "--runs", "3", "--min-time", "0", "--warmup", "1", "--quiet", "--out", str(lut)])
    table = LatencyTable.load(lut)
    assert table.data["built_for"] == ["model lraspp_mobilenetv2 (width 0.25) @ 1x3x32x32"] and table.threads == 1
    main(["latency", "predict", "--lut", str(lut), "--model", "lraspp_mobilenetv2", *common, "--no-measure",
          "--out", str(tmp_path / "p.json")])
    pred = json.loads((tmp_path / "p.json").read_text())[0]
    assert pred["predicted_ms"] == pytest.approx(sum(ms for _, ms in pred["entries"]))
    assert pred["raw_ms"] == pytest.approx(sum(table.latency(k) for k, _ in pred["entries"]))
    main(["latency", "fit", "--lut", str(lut), "--nets", "5", "--input", "3x32x32", "--num-classes", "3", "--runs", "3",
          "--min-time", "0", "--warmup", "1"])
    fitted = LatencyTable.load(lut)
    corr = fitted.correction  # which model wins depends on the timings: not asserted
    assert corr["fitted_on"] == 5 and {"none", "linear"} <= set(corr["cv_mape"]) and len(fitted) > len(table)
    main(["latency", "predict", "--lut", str(lut), "--model", "lraspp_mobilenetv2", *common, "--no-measure"])
    main(["lut", "show", str(lut)])
    out = capsys.readouterr().out
    assert "predicted" in out and "entries by kind" in out and "mbconv" in out and f"correction {corr['model']}" in out
    # a missing block with --no-measure: one clear line naming it
    with pytest.raises(SystemExit) as e:
        main(["latency", "predict", "--lut", str(lut), "--model", "fcn_mobilenetv2", *common, "--no-measure"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "fixed:fcn_mobilenetv2" in err and "Traceback" not in err


def test_standalone_builder_runs_without_segdistill_and_plugins_register(tmp_path):
    blocks = tmp_path / "blocks.json"
    main(["lut", "blocks", "--space", "mbv2-chain", "--input", "3x16x16", "--out", str(blocks)])
    keys = json.loads(blocks.read_text())["keys"]
    assert keys == list(dict.fromkeys(build_space("mbv2-chain", (1, 3, 16, 16)).keys()))
    assert len(keys) > 50 and all(not k.startswith("fixed:") for k in keys)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"format": "segdistill-latency-blocks", "version": 1, "keys": keys[:3]}))
    # the single file, copied alone, with segdistill made unimportable
    script = tmp_path / "standalone.py"
    script.write_text(Path(core.__file__).read_text())
    code = ("import runpy, sys; sys.modules['segdistill'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = tmp_path / "device.json"
    proc = subprocess.run([sys.executable, "-c", code, str(script), "--blocks", str(small), "--platform", "torch-cpu",
                           "--threads", "1", "--runs", "2", "--min-time", "0", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = LatencyTable.load(out)
    assert sorted(table.entries) == sorted(keys[:3]) and table.threads == 1
    # a user's platform plug-in, from a file
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(
        "from segdistill.latency.standalone import Platform, Runner, register_platform\n"
        "import torch\n"
        "class Inference(Platform):\n"
        "    name, description = 'torch-cpu-inference', 'torch eager under inference_mode'\n"
        "    def prepare(self, module, inputs, threads):\n"
        "        def fn():\n"
        "            with torch.inference_mode():\n"
        "                return module(*inputs)\n"
        "        return Runner(fn, {'mode': 'inference'})\n"
        "register_platform(Inference())\n")
    core.load_plugin(str(plugin))
    try:
        res = core.measure_key(keys[0], "torch-cpu-inference", threads=1, **TINY)
        assert res["mode"] == "inference" and res["runs"] >= 3
        rc = core.main(["--blocks", str(small), "--platform", "torch-cpu-inference", "--threads", "1", "--runs", "2",
                        "--min-time", "0", "--warmup", "0", "--out", str(tmp_path / "plug.json")])
        assert rc == 0 and LatencyTable.load(tmp_path / "plug.json").platform == "torch-cpu-inference"
    finally:
        core.PLATFORMS.pop("torch-cpu-inference", None)


def test_measurements_in_their_own_process():
    table = LatencyTable.new("torch-cpu", 1, TINY)
    key = "dwsep:4-8:12x12:k3s2d1e1:relu"
    assert table.ensure([key], progress=False, isolate=True) == [key]
    assert table.entries[key]["runs"] >= 3 and table.entries[key]["io"] == 4 * 144 + 8 * 36


def test_onnxruntime_platform_measures_a_block_as_a_session():
    res = core.measure_key("dwsep:8-16:12x12:k3s1d1e1:relu", "onnxruntime-cpu", threads=1, **TINY)
    assert res["runs"] >= 3 and res["onnx_max_abs_diff"] < 1e-4 and res["threads"] == 1
    cuda = core.get_platform("torch-cuda")
    if not torch.cuda.is_available():
        assert "CUDA" in cuda.available()
        with pytest.raises(LatencyError, match="not available"):
            core.measure_key("skip:4-4:8x8:k1s1d1e1:none", "torch-cuda", **TINY)


# ---------------------------------------------------------------------------- state control
def _fitted_table(ms: list[float]) -> LatencyTable:
    table = LatencyTable(core.new_table("torch-cpu", 1))
    nets = sample_networks(len(ms), (1, 3, 16, 16), seed=3, num_classes=3)
    table.correction = {"model": "none", "coef": {},
                        "measured": state.fit_record(nets, ms, {"min_runs": 3}, "2026-12-07T10:00:00+00:00")}
    return table


def test_state_references_span_the_fit_and_the_ratio_is_the_median():
    table = _fitted_table([5.0, 1.0, 3.0, 4.0, 2.0])
    refs = state.references(table, 3)
    assert [ms for _, _, ms in refs] == [1.0, 3.0, 5.0]  # fastest, middle, slowest of the fit
    assert [label.split(":")[0] for label, _, _ in refs] == ["ref1", "ref2", "ref0"]  # index in the fit record
    assert all(isinstance(net, NetSpec) and net.nodes for _, net, _ in refs)
    assert [ms for _, _, ms in state.references(table, 1)] == [3.0]
    assert len(state.references(table, 99)) == 5
    now = {refs[0][0]: 1.5, refs[1][0]: 4.2, refs[2][0]: 9.0}  # ratios 1.5, 1.4, 1.8
    s = state.state_ratio(refs, now)
    assert s["ratio"] == pytest.approx(1.5) and s["spread"] == pytest.approx(1.8 / 1.4)
    assert s["nets"][refs[2][0]] == {"fit_ms": 5.0, "now_ms": 9.0, "ratio": pytest.approx(1.8)}
    with pytest.raises(LatencyError, match="no time now for ref2:.*, ref0:"):
        state.state_ratio(refs, {refs[0][0]: 1.0})
    bare = LatencyTable(core.new_table("torch-cpu", 1), "old.json")
    with pytest.raises(LatencyError, match="old.json: its correction keeps no timed networks.*latency fit --lut old.json"):
        state.references(bare)


def test_latency_fit_keeps_its_networks_and_state_times_them_again(tmp_path, capsys):
    lut = tmp_path / "lut.json"
    timing = ["--runs", "3", "--min-time", "0", "--warmup", "1"]
    main(["lut", "build", "--platform", "torch-cpu", "--threads", "1", "--model", "lraspp_mobilenetv2", "--input",
          "3x32x32", "--width-mult", "0.25", "--num-classes", "3", *timing, "--quiet", "--out", str(lut)])
    main(["latency", "fit", "--lut", str(lut), "--nets", "4", "--input", "3x32x32", "--num-classes", "3", *timing,
          "--repeats", "2"])
    record = LatencyTable.load(lut).correction["measured"]
    assert len(record["networks"]) == 4 and all(n["ms"] > 0 for n in record["networks"])
    assert record["timing"]["min_runs"] == 3
    # the kept networks are the ones timed: the same blocks as the fit's seed draws
    assert [n["net"]["nodes"] for n in record["networks"]] == [
        n.to_dict()["nodes"] for n in sample_networks(4, (1, 3, 32, 32), seed=1, num_classes=3)]
    main(["lut", "show", str(lut)])
    assert f"state control: 4 timed networks kept ({record['date']})" in capsys.readouterr().out
    out = tmp_path / "state.json"
    main(["latency", "state", "--lut", str(lut), "--nets", "2", "--repeats", "2", *timing, "--out", str(out)])
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert "state ratio" in printed and len(got["nets"]) == 2 and got["ratio"] > 0
    assert got["table"]["fit_date"] == record["date"] and got["repeats"] == 2
    # a table whose fit kept nothing: one clear line that says what to run
    table = LatencyTable.load(lut)
    table.correction = {k: v for k, v in table.correction.items() if k != "measured"}
    table.save()
    with pytest.raises(SystemExit) as e:
        main(["latency", "state", "--lut", str(lut)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "keeps no timed networks" in err and "Traceback" not in err


def test_latency_fit_keeps_the_median_over_its_passes(tmp_path, monkeypatch):
    """``--repeats 3``: each network's fit time (and the state control's reference) is its median over the passes."""
    from segdistill.latency import report

    lut = tmp_path / "lut.json"
    LatencyTable(core.new_table("torch-cpu", 1), lut).save()
    seen = []

    def passes(self, nets, progress):
        seen.append(self.cfg.repeats)
        return {n.name: [3.0 + i, 1.0 + i, 2.0 + i] for i, n in enumerate(nets)}

    monkeypatch.setattr(report.NetTimer, "round_robin", passes)
    raws = iter([1.0, 2.0, 3.5, 4.0])  # the fit itself is not the point: distinct features keep it well posed
    monkeypatch.setattr(LatencyPredictor, "breakdown", lambda self, net: {"features": {"raw": next(raws), "count": 1,
                                                                                      "io": 1}})
    main(["latency", "fit", "--lut", str(lut), "--nets", "4", "--input", "3x16x16", "--num-classes", "3",
          "--repeats", "3"])
    record = LatencyTable.load(lut).correction["measured"]
    assert seen == [3] and [n["ms"] for n in record["networks"]] == [2.0, 3.0, 4.0, 5.0]
