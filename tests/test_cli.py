"""The command line end to end: demo, eval, predict, profile, export, models, and clear errors."""
import argparse
import json
import re

import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    main(["demo", "--fast", "--out-dir", str(out)])
    return out


def test_demo_writes_report_plots_and_onnx(demo_dir):
    for name in ("report.md", "summary.json", "student.onnx", "teacher_curves.png", "student_curves.png",
                 "teacher_predictions.png", "student_predictions.png", "teacher/best.pt", "student/last.pt",
                 "student/config.yaml", "student/metrics.jsonl", "distilled/best.pt", "distilled_predictions.png",
                 "distilled_kd_terms.png"):
        assert (demo_dir / name).exists(), name
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert 0.0 <= summary["student"]["miou"] <= 1.0 and 0.0 <= summary["distilled"]["miou"] <= 1.0
    assert "kd_pixel" in (demo_dir / "distilled" / "metrics.jsonl").read_text()
    assert summary["export"]["max_abs_diff"] < 1e-3
    assert summary["profile"]["latency"]["torch-cpu"]["runs"] >= 50
    report = (demo_dir / "report.md").read_text()
    assert "mIoU" in report and "student_predictions.png" in report and "without it" in report
    # the tiny search: the pipeline's stages in searched/, its student in the report beside the hand-designed one
    for name in ("lut_torch-cpu.json", "searched/search/genotype.json", "searched/retrain/best.pt",
                 "searched/export/student.onnx", "searched/pareto.png", "searched/report.md"):
        assert (demo_dir / name).exists(), name
    s = summary["searched"]
    assert s["model"] == "searched" and 0.0 <= s["miou"] <= 1.0
    assert s["budget_ms"] > 0 and s["predicted_ms"] > 0 and s["measured_ms"] > 0
    assert all(not st["skipped"] for st in s["stages"].values())
    assert "kd_pixel" in (demo_dir / "searched" / "retrain" / "metrics.jsonl").read_text()  # retrained with KD
    for words in ("Searched student", "searched/pareto.png", "searched/search/arch_", "searched/search/genotype.json",
                  "predicted ms", "measured ms", "budget", "## Time", "torch CPU threads", "load average",
                  "search: retrain"):
        assert words in report, words
    assert summary["timing"]["threads"] >= 1 and "train teacher" in summary["timing"]["stages_s"]


def test_eval_matches_demo_and_writes_json(demo_dir, tmp_path, capsys):
    out = tmp_path / "val.json"
    main(["eval", str(demo_dir / "student" / "best.pt"), "--out", str(out)])
    res = json.loads(out.read_text())
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert res["miou"] == pytest.approx(summary["student"]["miou"])  # same split, same weights, same number
    assert len(res["iou"]) == len(res["class_names"]) == 8
    assert "mIoU" in capsys.readouterr().out
    # another split of the same dataset, one the training never saw, via --split and overrides
    main(["eval", str(demo_dir / "student" / "best.pt"), "--split", "train", "data.synthetic_train=4", "--flip",
          "--out", str(tmp_path / "train.json")])
    assert json.loads((tmp_path / "train.json").read_text())["split"] == "train"


def test_predict_profile_export_models(demo_dir, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
    ckpt = str(demo_dir / "student" / "best.pt")
    main(["predict", ckpt, str(imgs), "--out-dir", str(tmp_path / "pred")])
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(
        f"im{i}_{kind}.png" for i in range(2) for kind in ("mask", "overlay", "labels"))
    main(["profile", ckpt, "--input", "3x48x64", "--platforms", "torch-cpu", "onnxruntime-cpu", "--out", str(tmp_path / "p.json")])
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["latency"]["torch-cpu"]["runs"] >= 50 and prof["params"] > 0
    main(["export", "fcn_resnet18", "--width-mult", "0.25", "--input", "3x48x64", "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").stat().st_size > 0
    capsys.readouterr()
    main(["models", "--filter", "segformer_mitb0", "--input", "3x64x64"])
    listed = capsys.readouterr().out
    assert "segformer_mitb0" in listed and "resnet" not in listed and "GMACs" in listed


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "{ckpt}", "--dataset", "camvid", "--root", "{tmp}/nowhere"], "nowhere"),
        (["eval", "{tmp}/missing.pt"], "missing.pt"),
        (["predict", "{ckpt}", "{tmp}/none.png"], "none.png"),
        (["train", "{tmp}/nope.yaml"], "nope.yaml"),
        (["train", "{tmp}/cfg.yaml", "train.iterz=3"], "train.iterz"),
    ],
)
def test_bad_input_is_one_clear_line(demo_dir, tmp_path, capsys, argv, words):
    (tmp_path / "cfg.yaml").write_text("train:\n  iters: 1\n")
    argv = [a.format(ckpt=demo_dir / "student" / "best.pt", tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and words in err and "Traceback" not in err


def test_eval_refuses_dataset_with_other_classes(demo_dir, tmp_path, capsys):
    root = tmp_path / "mine"
    for split in ("val",):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / split / "a.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / split / "a.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(SystemExit):
        main(["eval", str(demo_dir / "student" / "best.pt"), "--dataset", "folder", "--root", str(root)])
    assert "3" in capsys.readouterr().err


def test_top_level_help_lists_every_command():
    """``segdistill --help``'s description names every sub-command (it once left out lut and latency)."""
    from segdistill.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in commands:
        assert re.search(rf"\b{name}\b", parser.description), f"{name} missing from the description"
