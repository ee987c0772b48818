"""benchmarks/camvid_search.py's report: the table RESULTS.md quotes, made from per-row result files (no training)."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camvid_search as cs  # noqa: E402

from segdistill.errors import LatencyError  # noqa: E402

META = {"date": "2026-12-07T06:00:00", "threads": 2, "input": [1, 3, 180, 240], "min_runs": 50, "warmup": 10,
        "repeats": 5, "command": "python benchmarks/camvid_search.py --latency"}


def write_row(out: Path, row: str, seed: int, miou: float, ms: float | None = None, **extra):
    r = {"row": row, "seed": seed, "miou": miou, "params": 2.5e6, "macs": 1.2e9, "num_classes": 11,
         "command": f"python benchmarks/camvid_search.py --rows {row}", **extra}
    if ms is not None:
        r["latency"] = {"torch-cpu": {"median_ms": ms, "fastest_ms": ms - 1.0, "slowest_ms": ms + 1.0}}
        r["latency_meta"] = META
    (out / row / f"seed{seed}").mkdir(parents=True)
    (out / row / f"seed{seed}" / "result.json").write_text(json.dumps(r))


def test_report_gives_seed_means_latency_tables_and_the_plot(tmp_path):
    rows = cs.define_rows([12.0, 16.0, 20.0], 8.0, 1)
    write_row(tmp_path, "kd_lraspp_mbv2", 0, 0.43, 17.0)
    write_row(tmp_path, "kd_lraspp_mbv2", 1, 0.44)
    search = {"final": {"predicted_ms/torch-cpu": 15.04}, "wall_s": 4000.0, "peak_rss_mb": 2400.0}
    write_row(tmp_path, "torch16", 0, 0.45, 16.3, search=search, predicted_ms={"torch-cpu": 15.0},
              predicted_tables="/x/benchmarks/latency/chain")
    write_row(tmp_path, "lgc12", 0, 0.40, 12.5, search=search, predicted_ms={"torch-cpu": 12.1},
              predicted_tables="/x/benchmarks/latency/lgcnet")
    text = cs.report(tmp_path, rows, [0, 1])
    line = next(ln for ln in text.splitlines() if ln.startswith("| kd_lraspp_mbv2 |"))
    assert "| 0,1 | 43.50 (43.00, 44.00) |" in line and "| 17.0 (16.0) |" in line
    assert "Rows done (1): kd_lraspp_mbv2" in text and "Rows partly done (2): torch16, lgc12" in text
    torch16 = next(ln for ln in text.splitlines() if ln.startswith("| torch16 |"))
    assert "| 15.0 (torch) | 16.0 (torch) | 4000.0 | 2400.0 |" in torch16
    assert "Predicted latency from the tables in `chain/`: torch16; `lgcnet/`: lgc12" in text
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "report.md").read_text() == text + "\n"
    assert "Teachers differ" not in text  # no row records its teacher: nothing to tell apart


def test_report_names_rows_distilled_from_another_teacher(tmp_path):
    from segdistill.engine.checkpoint import model_meta, save_checkpoint
    from segdistill.models import build_model

    model = build_model("lraspp_mobilenetv2", 11, width_mult=0.25)
    save_checkpoint({"meta": {"model": model_meta(model), "metrics": {"miou": 0.4527}}, "model": model.state_dict()},
                    tmp_path / "teacher.pt")
    record = cs.teacher_record(tmp_path / "teacher.pt")
    assert record["val_miou"] == 0.4527 and len(record["sha256"]) == 16
    write_row(tmp_path, "kd_lraspp_mbv2", 0, 0.43, 17.0)
    write_row(tmp_path, "lgcnf16", 0, 0.45, 16.0, teacher=record)
    text = cs.report(tmp_path, cs.define_rows([12.0, 16.0, 20.0], 8.0, 1), [0])
    assert (f"Teachers differ between rows (each machine retrains its own; compare across them with care): "
            f"not recorded (older rows): kd_lraspp_mbv2; {record['sha256']} (val mIoU 45.27): lgcnf16.") in text


def test_row_network_rebuilds_a_restored_row_from_its_result_file(tmp_path):
    """A row whose checkpoint is gone (a new machine): its architecture comes back from the recorded overrides, a
    searched row's genotype path moved from the folder it ran in to the new out_dir."""
    from segdistill.models import build_model

    archive = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "camvid_search"
    (tmp_path / "torch16" / "search").mkdir(parents=True)
    (tmp_path / "torch16" / "search" / "genotype.json").write_text((archive / "torch16" / "search" / "genotype.json").read_text())
    ran_in = "/elsewhere/runs/camvid_search"
    searched = {"checkpoint": f"{ran_in}/torch16/seed0/best.pt", "num_classes": 11,
                "overrides": [f"model.name=searched:{ran_in}/torch16/search/genotype.json", "model.output_stride=null"]}
    net = cs.row_network(searched, tmp_path)
    want = build_model(f"searched:{tmp_path / 'torch16' / 'search' / 'genotype.json'}", 11)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}
    zoo = {"checkpoint": f"{ran_in}/kd_lraspp_mbv2/seed0/best.pt", "num_classes": 8,
           "overrides": ["model.name=lraspp_mobilenetv2", "model.output_stride=16"]}
    net = cs.row_network(zoo, tmp_path)
    assert not net.training and net(torch.zeros(1, 3, 64, 64)).logits.shape[1] == 8


def test_latency_window_measures_restored_rows_with_fresh_weights_beside_a_control(tmp_path):
    """``--latency`` on a new machine: the row with a checkpoint is measured from it, the restored row (no
    checkpoint) as its architecture, and the trained row once more with fresh weights, the window's control."""
    from segdistill.engine.checkpoint import model_meta, save_checkpoint
    from segdistill.models import build_model

    ran_in = "/elsewhere/runs/camvid_search"
    for row, trained in (("kd_lraspp_mbv2", True), ("kd_segformer_b0", False)):  # small stand-ins, fast to time
        write_row(tmp_path, row, 0, 0.4, checkpoint=f"{ran_in}/{row}/seed0/best.pt",
                  overrides=["model.name=lraspp_mobilenetv2", "model.width_mult=0.25"])
        if trained:
            model = build_model("lraspp_mobilenetv2", 11, width_mult=0.25)
            save_checkpoint({"meta": {"model": model_meta(model, width_mult=0.25)}, "model": model.state_dict()},
                            tmp_path / row / "seed0" / "best.pt")
    cs.add_latency(tmp_path, threads=1, repeats=1)
    meta = json.loads((tmp_path / "kd_segformer_b0" / "seed0" / "result.json").read_text())["latency_meta"]
    assert meta["fresh_weights"] == ["kd_segformer_b0"] and meta["rows_in_window"] == ["kd_lraspp_mbv2", "kd_segformer_b0"]
    assert meta["fresh_control"]["row"] == "kd_lraspp_mbv2"
    assert set(meta["fresh_control"]["ms"]) == set(cs.PLATFORMS)
    assert all(v["checkpoint"] > 0 and v["fresh"] > 0 for v in meta["fresh_control"]["ms"].values())
    for row in ("kd_lraspp_mbv2", "kd_segformer_b0"):
        lat = json.loads((tmp_path / row / "seed0" / "result.json").read_text())["latency"]
        assert set(lat) == set(cs.PLATFORMS) and lat["torch-cpu"]["median_ms"] > 0
    text = cs.report(tmp_path, cs.define_rows([12.0, 16.0, 20.0], 8.0, 1), [0])
    assert "1 rows' checkpoints were gone" in text and "kd_lraspp_mbv2 on torch-cpu:" in text


def test_prediction_check_predicts_measured_rows_again_with_other_tables(tmp_path):
    """``--report --check-tables DIR``: a searched row restored from the archive is predicted with DIR's tables and
    set beside its measured latency; a zoo student (no genotype) is not in the check."""
    repo = Path(__file__).resolve().parents[1]
    archive = repo / "benchmarks" / "results" / "camvid_search"
    lut_dir = repo / "benchmarks" / "latency" / "chain"
    (tmp_path / "torch16" / "search").mkdir(parents=True)
    geno = (archive / "torch16" / "search" / "genotype.json").read_text()
    (tmp_path / "torch16" / "search" / "genotype.json").write_text(geno)
    ran_in = "/elsewhere/runs/camvid_search"
    write_row(tmp_path, "torch16", 0, 0.45, 20.0, checkpoint=f"{ran_in}/torch16/seed0/best.pt",
              overrides=[f"model.name=searched:{ran_in}/torch16/search/genotype.json"])
    write_row(tmp_path, "kd_lraspp_mbv2", 0, 0.43, 17.0, checkpoint=f"{ran_in}/kd_lraspp_mbv2/seed0/best.pt",
              overrides=["model.name=lraspp_mobilenetv2"])
    rows = cs.define_rows([12.0, 16.0, 20.0], 8.0, 1)
    want = cs.predict_genotype(json.loads(geno), lut_dir, 11)["torch-cpu"]
    lines = cs.prediction_check(tmp_path, rows, lut_dir)
    line = next(ln for ln in lines if ln.startswith("| torch16 | torch-cpu |"))
    err = 100 * (20.0 - want) / want
    assert line == (f"| torch16 | torch-cpu | {want:.2f} | 20.00 ({err:+.0f}%) | 19.00 ({100 * (19.0 - want) / want:+.0f}%)"
                    " | - | 16.0 | - |")
    assert not any(ln.startswith("| kd_lraspp_mbv2") for ln in lines)
    assert lines[-1].startswith(f"{int(abs(err) <= 10)} of 1 measured medians within +-10% of these tables' prediction."
                                " (No state ratio against these tables")
    assert lines[-1].endswith("Budgets (rows measured on their search's platform): 0 of 1 medians at or under the "
                              "budget.")  # 20.0 ms against 16
    assert "'AMD EPYC'" in lines[0]
    assert "**Predicted again with the tables in `chain/`**" in cs.report(tmp_path, rows, [0], [lut_dir])
    assert cs.prediction_check(tmp_path, rows, tmp_path / "none") == [f"Prediction check: no tables in {tmp_path / 'none'}."]


def _state_tables(folder: Path, ms: list[float], threads: int = 1):
    """A folder with a torch-cpu table whose correction kept ``len(ms)`` timed networks (their times: ``ms``)."""
    from segdistill.latency import standalone as core
    from segdistill.latency import state
    from segdistill.latency.lut import LatencyTable
    from segdistill.latency.network import sample_networks

    table = LatencyTable(core.new_table("torch-cpu", threads))
    nets = sample_networks(len(ms), (1, 3, 16, 16), seed=3, num_classes=3)
    table.correction = {"model": "none", "coef": {}, "measured": state.fit_record(nets, ms, {}, "2026-12-07T10:00:00")}
    return table.save(folder / "lut-torch-cpu.json")


def test_latency_window_times_the_tables_fit_networks_beside_the_rows(tmp_path):
    """``--latency --state-tables DIR``: three of the table's fit networks run in the same passes as the rows, and
    the window's meta keeps each one's time now against its time at the fit, and their median ratio."""
    from argparse import Namespace

    from segdistill.engine.checkpoint import model_meta, save_checkpoint
    from segdistill.models import build_model

    write_row(tmp_path / "runs", "kd_lraspp_mbv2", 0, 0.4, checkpoint="x", overrides=[])
    model = build_model("lraspp_mobilenetv2", 11, width_mult=0.25)
    save_checkpoint({"meta": {"model": model_meta(model, width_mult=0.25)}, "model": model.state_dict()},
                    tmp_path / "runs" / "kd_lraspp_mbv2" / "seed0" / "best.pt")
    _state_tables(tmp_path / "luts", [1e-3, 2e-3, 3e-3, 4e-3])
    cs.add_latency(tmp_path / "runs", threads=1, repeats=2, opts=Namespace(state_tables=[str(tmp_path / "luts")],
                                                                             archive=None))
    meta = json.loads((tmp_path / "runs" / "kd_lraspp_mbv2" / "seed0" / "result.json").read_text())["latency_meta"]
    st, = meta["state"]  # no ORT table in the folder: no ORT control
    assert st["platform"] == "torch-cpu"
    assert [v["fit_ms"] for v in st["nets"].values()] == [1e-3, 3e-3, 4e-3]  # fastest, middle (round(1.5)), slowest
    assert all(v["now_ms"] > 0 and v["ratio"] == v["now_ms"] / v["fit_ms"] for v in st["nets"].values())
    assert st["ratio"] == sorted(v["ratio"] for v in st["nets"].values())[1]
    assert st["table"]["fit_date"] == "2026-12-07T10:00:00"
    assert "State control on torch-cpu: 3 of the networks" in cs.latency_protocol(meta, set())
    _state_tables(tmp_path / "bad", [1.0], threads=2)
    with pytest.raises(LatencyError, match="measured with 2 threads and the window uses 1"):
        cs.add_latency(tmp_path / "runs", threads=1, repeats=1, opts=Namespace(state_tables=[str(tmp_path / "bad")]))
    with pytest.raises(LatencyError, match="no lut-<platform>.json there"):
        cs.add_latency(tmp_path / "runs", threads=1, repeats=1, opts=Namespace(state_tables=[str(tmp_path / "none")]))


def test_prediction_check_scales_by_the_windows_state_ratio_against_the_same_tables(tmp_path):
    """A window that ran the state control against the checked tables: each prediction x its ratio, with a count of
    its own; a ratio against another fit of the table is not used."""
    from segdistill.latency import state
    from segdistill.latency.lut import LatencyTable

    repo = Path(__file__).resolve().parents[1]
    archive = repo / "benchmarks" / "results" / "camvid_search"
    lut_dir = tmp_path / "luts"
    table = LatencyTable.load(repo / "benchmarks" / "latency" / "chain" / "lut-torch-cpu.json")
    table.correction = {**table.correction, "measured": {"date": "2026-12-07T10:00:00", "networks": []}}
    table.save(lut_dir / "lut-torch-cpu.json")
    (tmp_path / "torch16" / "search").mkdir(parents=True)
    geno = (archive / "torch16" / "search" / "genotype.json").read_text()
    (tmp_path / "torch16" / "search" / "genotype.json").write_text(geno)
    want = cs.predict_genotype(json.loads(geno), lut_dir, 11)["torch-cpu"]
    ran_in = "/elsewhere/runs/camvid_search"
    ms = 1.5 * want * 1.04  # the machine runs 1.5x slower than at the fit; the row 4% over the scaled prediction
    write_row(tmp_path, "torch16", 0, 0.45, ms, checkpoint=f"{ran_in}/torch16/seed0/best.pt",
              overrides=[f"model.name=searched:{ran_in}/torch16/search/genotype.json"])
    res = json.loads((tmp_path / "torch16" / "seed0" / "result.json").read_text())
    other = {"platform": "torch-cpu", "ratio": 9.0, "spread": 1.0, "nets": {}, "table": {"date": "x", "fit_date": "y"}}
    res["latency_meta"] = {**META, "state": [other, {"platform": "torch-cpu", "ratio": 1.5, "spread": 1.02, "nets": {},
                                                     "table": state.table_stamp(table)}]}
    (tmp_path / "torch16" / "seed0" / "result.json").write_text(json.dumps(res))
    rows = cs.define_rows([12.0, 16.0, 20.0], 8.0, 1)
    lines = cs.prediction_check(tmp_path, rows, lut_dir)
    line = next(ln for ln in lines if ln.startswith("| torch16 | torch-cpu |"))
    assert line.endswith(f"| {1.5 * want:.2f} (+4%) | 16.0 | {ms / 1.5:.2f} |") and "(+56%)" in line
    under = int(ms <= 16.0), int(ms / 1.5 <= 16.0)
    assert lines[-1] == ("0 of 1 measured medians within +-10% of these tables' prediction. Scaled by the latest "
                         "window's state ratio (torch-cpu 1.500): 1 within +-10%. Budgets (rows measured on their "
                         f"search's platform): {under[0]} of 1 medians at or under the budget; at these tables' fit "
                         f"state (median / state ratio): {under[1]} of 1.")
    table.correction["measured"]["date"] = "2026-12-07T11:00:00"  # refitted since the window: its ratio is stale
    table.save()
    assert "No state ratio against these tables" in cs.prediction_check(tmp_path, rows, lut_dir)[-1]
