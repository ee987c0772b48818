"""benchmarks/camvid_search.py's report: the table RESULTS.md quotes, made from per-row result files (no training)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camvid_search as cs  # noqa: E402

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
    assert line == f"| torch16 | torch-cpu | {want:.2f} | 20.00 ({err:+.0f}%) | 19.00 ({100 * (19.0 - want) / want:+.0f}%) | 16.0 |"
    assert not any(ln.startswith("| kd_lraspp_mbv2") for ln in lines)
    assert lines[-1] == f"{int(abs(err) <= 10)} of 1 measured medians within +-10% of these tables' prediction."
    assert "'AMD EPYC'" in lines[0]
    assert "**Predicted again with the tables in `chain/`**" in cs.report(tmp_path, rows, [0], [lut_dir])
    assert cs.prediction_check(tmp_path, rows, tmp_path / "none") == [f"Prediction check: no tables in {tmp_path / 'none'}."]
