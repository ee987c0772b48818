"""Packaging: shipped configs found by name after `pip install`, optional dependencies behind extras with a clear
error, and predict feeding images exactly as the data package does."""
import sys
from pathlib import Path

import numpy as np
import pytest

import segdistill
from segdistill._optional import MissingDependencyError, require
from segdistill.config import DataConfig, load_config
from segdistill.configs import CONFIG_DIR, resolve_config_path, shipped_configs
from segdistill.data.transforms import build_transforms
from segdistill.errors import SegDistillError
from segdistill.tools.predict import read_image, to_tensor

REPO = Path(__file__).parents[1]
PACKAGE_CONFIGS = Path(segdistill.__file__).parent / "configs"


# ------------------------------------------------------------------ shipped configs
def test_shipped_configs_live_in_the_package():
    assert CONFIG_DIR == PACKAGE_CONFIGS
    assert set(shipped_configs()) >= {"camvid-cpu", "kd-camvid-cpu", "cityscapes", "voc", "ade20k"}
    # the README's configs/ (a symlink in a checkout) is the same folder
    assert (REPO / "configs" / "camvid-cpu.yaml").resolve() == (PACKAGE_CONFIGS / "camvid-cpu.yaml").resolve()


@pytest.mark.parametrize("spec", ["camvid-cpu", "camvid-cpu.yaml", "configs/camvid-cpu.yaml", Path("camvid-cpu")])
def test_resolve_config_path_finds_a_shipped_config_from_anywhere(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: as after a non-editable `pip install`
    path = resolve_config_path(spec)
    assert path.is_file() and path.parent == PACKAGE_CONFIGS and path.name == "camvid-cpu.yaml"
    assert load_config(path).data.name == "camvid"


def test_resolve_config_path_prefers_an_existing_file_and_leaves_unknown_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("camvid-cpu.yaml").write_text("data: {name: synthetic}\n")
    assert resolve_config_path("camvid-cpu.yaml") == Path("camvid-cpu.yaml")  # the local file wins
    assert resolve_config_path("camvid-cpu").parent == PACKAGE_CONFIGS  # not a file here: the shipped one
    for spec in ("no-such-config", "elsewhere/camvid-cpu.yaml", "camvid-cpu.yml", ""):
        assert resolve_config_path(spec) == Path(spec)  # the caller reports it as not found


# ------------------------------------------------------------------ optional dependencies
def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("json", "plot", "anything").dumps([1]) == "[1]"
    with pytest.raises(MissingDependencyError, match=r"^exporting to ONNX needs onnxruntime: pip install 'segdistill\[onnx\]'$"):
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
        require("onnxruntime", "onnx", "exporting to ONNX")
    with pytest.raises(SegDistillError, match=r"TensorBoard logs needs tensorboard: pip install 'segdistill\[tb\]'"):
        require("segdistill_missing_module.sub", "tb", "TensorBoard logs", package="tensorboard")
    with pytest.raises(ImportError):  # also an ImportError: `except ImportError` fallbacks keep working
        require("segdistill_missing_module", "plot", "x")


def test_viz_figures_without_matplotlib_name_the_extra(tmp_path, monkeypatch):
    from segdistill import viz

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    log = [{"iter": 1, "loss": 1.0}]
    with pytest.raises(MissingDependencyError, match=r"needs matplotlib: pip install 'segdistill\[plot\]'"):
        viz.plot_curves(log, "loss", tmp_path / "c.png")
    color = viz.colorize(np.array([[0, 1]]), [[1, 2, 3], [4, 5, 6]], 255)  # mask helpers need no matplotlib
    assert viz.save_png(color, tmp_path / "m.png").is_file()


def test_core_dependencies_leave_out_the_heavy_ones():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert not core & {"onnx", "onnxscript", "onnxruntime", "matplotlib", "tensorboard", "scipy"}
    extras = project["optional-dependencies"]
    assert {"onnx", "plot", "tb", "bench", "all", "test"} <= set(extras)
    assert "segdistill[onnx,plot,tb,bench]" in extras["all"] and "segdistill[all]" in extras["test"]


# ------------------------------------------------------------------ predict uses the data package
def test_predict_reads_and_normalises_like_the_datasets(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    cfg = DataConfig(resize=[16, 24])
    image = read_image(tmp_path / "a.png", cfg.resize)
    raw = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    expected, _ = build_transforms(cfg, train=False)(raw, np.zeros(raw.shape[:2], np.uint8))
    x = to_tensor(image, cfg.mean, cfg.std)
    assert x.shape == (1, 3, 16, 24)
    assert (x[0] == expected).all()  # bit for bit what `segdistill eval` feeds the model
