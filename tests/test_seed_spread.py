"""benchmarks/seed_spread.py: the seed-noise and between-network statistics, on hand-computed values."""
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_spread as ss  # noqa: E402


def write(archive: Path, row: str, seed_dir: str, miou: float, budget=20.0, teacher="abc"):
    d = archive / row / seed_dir
    d.mkdir(parents=True)
    res = {"seed": int(seed_dir[4:].split("-")[0]), "miou": miou / 100, "budget_ms": budget, "platform": "torch-cpu",
           "recipe": "best", "iters": 400, "batch_size": 8, "teacher": {"sha256": teacher},
           "iou": [miou / 100 + 0.1, miou / 100 - 0.1], "class_names": ["sky", "road"]}
    (d / "result.json").write_text(json.dumps(res))


def test_anova_matches_hand_values():
    # means 2 and 6; SS_within = 2 + 2 = 4 on 2 df; SS_between = 2*4 + 2*4 = 16 on 1 df; F = 16 / 2 = 8;
    # n0 = 2, so s_b^2 = (16 - 2) / 2 = 7
    a = ss.anova([ss.Row("a", [1.0, 3.0], [0, 1], [], []), ss.Row("b", [5.0, 7.0], [0, 1], [], [])])
    assert a["s_within"] == pytest.approx(math.sqrt(2))
    assert a["F"] == pytest.approx(8.0) and a["df_between"] == 1 and a["df_within"] == 2
    assert a["s_between"] == pytest.approx(math.sqrt(7))
    assert 0.1 < a["p"] < 0.11  # F(1, 2) = 8: p = 0.1056
    # rows whose means differ by less than the seed noise: the network component is clamped at zero
    flat = ss.anova([ss.Row("a", [1.0, 3.0], [0, 1], [], []), ss.Row("b", [1.5, 2.5], [0, 1], [], [])])
    assert flat["s_between"] == 0.0 and flat["p"] > 0.5


def test_resolution_shrinks_with_seeds_like_one_over_root_n():
    d2, d8, d200 = (ss.detectable(1.0, n) for n in (2, 8, 200))
    assert d2 > d8 > d200
    assert d200 == pytest.approx((1.96 + 0.8416) * math.sqrt(2 / 200), rel=0.01)  # the normal limit
    n = ss.seeds_needed(1.0, 1.0)
    assert ss.detectable(1.0, n) <= 1.0 < ss.detectable(1.0, n - 1)


def test_rows_read_from_an_archive(tmp_path):
    write(tmp_path, "torch20", "seed0", 44.0)
    write(tmp_path, "torch20", "seed1", 46.0)
    write(tmp_path, "torch20", "seed0-before-20261206-0917", 10.0)  # superseded: left out
    write(tmp_path, "torch16", "seed0", 40.0, budget=16.0)  # another budget: left out
    write(tmp_path, "kd_lraspp_mbv2", "seed0", 43.0)  # no pattern matches it
    rows, recipes = ss.load_rows(tmp_path, ["torch*"], 20.0, "torch-cpu")
    assert [(r.name, r.mious, r.seeds) for r in rows] == [("torch20", [44.0, 46.0], [0, 1])]
    assert recipes == {"recipe best, 400 iterations at batch 8, teacher abc"}


def test_rows_of_two_teachers_are_refused(tmp_path, monkeypatch, capsys):
    write(tmp_path, "a", "seed0", 44.0)
    write(tmp_path, "a", "seed1", 45.0)
    write(tmp_path, "b", "seed0", 44.0, teacher="other")
    monkeypatch.setattr(sys, "argv", ["seed_spread.py", "--archive", str(tmp_path), "--rows", "a,b"])
    with pytest.raises(SystemExit, match="different budgets or from different teachers"):
        ss.main()


def test_a_missing_archive_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no such archive folder"):
        ss.load_rows(tmp_path / "nope", ["*"], None, "torch-cpu")


def test_contrast_pools_the_seeds_of_each_side():
    rows = [ss.Row("torch20", [1.0, 3.0], [0, 1], [], []), ss.Row("random0", [5.0], [0], [], []),
            ss.Row("random1", [7.0], [0], [], [])]
    d, half, na, nb = ss.contrast(rows, "torch20", "random?", math.sqrt(2), 2)
    assert (d, na, nb) == (-4.0, 2, 2)
    assert half == pytest.approx(4.3027 * math.sqrt(2) * 1.0, rel=1e-4)  # t(0.975, 2) * s_w * sqrt(1/2 + 1/2)
    with pytest.raises(SystemExit, match="no row matches 'lgc\\*'"):
        ss.contrast(rows, "lgc*", "random?", 1.0, 2)


def test_teacher_ceiling_sets_each_class_beside_the_teacher(tmp_path):
    write(tmp_path, "torch20", "seed0", 40.0)  # per class 50 and 30
    write(tmp_path, "torch20", "seed1", 44.0)  # per class 54 and 34
    rows, _ = ss.load_rows(tmp_path, ["*"], 20.0, "torch-cpu")
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"miou": 0.45, "iou": [0.6, 0.3], "class_names": ["sky", "road"]}))
    t_miou, table = ss.teacher_ceiling(rows, teacher)
    assert t_miou == pytest.approx(45.0)
    assert [(n, round(t, 6), round(r, 6)) for n, t, r in table] == [("sky", 60.0, 52.0), ("road", 30.0, 32.0)]
    teacher.write_text(json.dumps({"miou": 0.45, "iou": [0.6, 0.3, 0.1], "class_names": ["sky", "road", "car"]}))
    with pytest.raises(SystemExit, match="not the rows' classes"):
        ss.teacher_ceiling(rows, teacher)
