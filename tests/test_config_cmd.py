"""`segdistill config CONFIG [overrides]`: every key of the resolved config with its value, meaning and allowed values."""
import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from segdistill.cli import build_parser, main
from segdistill.config import Config, load_config, save_config
from segdistill.config_help import config_text, describe
from segdistill.distill.terms import term_configs
from segdistill.errors import ConfigError


def leaf_keys(obj, prefix=""):
    """Dotted key and field of every leaf field of a config, open sections (distill.<term>) included."""
    from segdistill.config import _items

    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in _items(obj):
        if dataclasses.is_dataclass(value):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", fields[key]


def printed_keys(text: str) -> set:
    return {ln.split(" = ")[0] for ln in text.splitlines() if " = " in ln and not ln.startswith("#")}


def line_of(text: str, key: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{key} = ")]
    assert len(lines) == 1, f"{key}: {lines}"
    return lines[0]


def test_every_field_of_every_section_has_a_meaning():
    sections = describe(Config())
    names = {s.name for s in sections}
    assert {f"distill.{t}" for t in term_configs()} | {"data", "train", "distill.task", "ekd", "search"} <= names
    assert all(s.meaning.strip() for s in sections), [s.name for s in sections if not s.meaning.strip()]
    entries = {e.key: e for s in sections for e in s.entries}
    leaves = dict(leaf_keys(Config()))
    assert set(leaves) <= set(entries)  # every field is printed
    assert [k for k in leaves if not entries[k].meaning.strip()] == []
    assert [k for k, f in leaves.items() if not f.metadata.get("help", "").strip()] == []  # the source: help= texts


def test_a_field_with_a_rule_shows_its_range_and_others_their_type():
    text = config_text("camvid-cpu")
    ruled = [(k, f.metadata["rule"]) for k, f in leaf_keys(Config()) if "rule" in f.metadata]
    assert len(ruled) > 90
    for key, rule in ruled:
        shown = rf"\[(each (element|value) )?{re.escape(rule.text)}( or null)?\]( \(default .*\))?$"
        assert re.search(shown, line_of(text, key)), (key, rule.text, line_of(text, key))
    assert line_of(text, "train.iters").endswith("[>= 1] (default 1000)")  # camvid-cpu sets 1840
    assert "[one of sgd, adamw]" in line_of(text, "optim.name")
    assert "[each element >= 1 or null]" in line_of(text, "data.resize")
    assert "[> 0]" in line_of(text, "distill.pixel.T") and "[>= 1]" in line_of(text, "distill.pairwise.patch")
    assert "[one of all, sandwich]" in line_of(text, "ekd.subnets")
    assert "[text or null]" in line_of(text, "train.resume")
    assert "out_dir/last.pt" in line_of(text, "train.resume")  # the meaning is the field's help text


def test_overrides_and_open_sections_show_up():
    text = config_text("camvid-cpu", ["train.iters=100", "distill.pixel.weight=2", "model.arch.depth=3",
                                      "search.budget.torch-cpu=20"])
    assert line_of(text, "train.iters").startswith("train.iters = 100 ")
    assert "(default 1000)" in line_of(text, "train.iters")
    assert line_of(text, "distill.pixel.weight").startswith("distill.pixel.weight = 2.0 ")
    assert line_of(text, "model.arch").startswith("model.arch = {depth: 3} ")
    assert line_of(text, "model.arch.depth").startswith("model.arch.depth = 3 ")
    assert "[each value > 0]" in line_of(text, "search.budget")
    assert "[> 0]" in line_of(text, "search.budget.torch-cpu")
    assert "\n[distill.hetero] Heterogeneous-architecture KD" in text  # a term's section, described by its module


def test_a_preset_is_resolved_as_train_resolves_it():
    text = config_text("camvid-cpu", ["distill.method=skd"], section="distill.holistic")
    assert line_of(text, "distill.holistic.weight").startswith("distill.holistic.weight = 0.1 ")
    assert {k.rsplit(".", 1)[0] for k in printed_keys(text)} == {"distill.holistic"}


def test_yaml_is_what_a_run_saves(tmp_path):
    overrides = ["train.iters=100", "distill.cwd.weight=3"]
    save_config(load_config("camvid-cpu", overrides), tmp_path / "config.yaml")
    assert config_text("camvid-cpu", overrides, as_yaml=True) == (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(config_text("camvid-cpu", overrides, section="distill.cwd", as_yaml=True)) == \
        {"distill": {"cwd": {**yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]["cwd"]}}}


@pytest.mark.parametrize("argv, words", [
    (["train.itres=5"], "unknown config key 'train.itres'"),
    (["train.iters=0"], "train.iters=0 is not allowed: train.iters must be >= 1"),
    (["--section", "nope"], "no such section; choose one of data, model"),
])
def test_errors_are_config_errors_with_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["config", "camvid-cpu", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        config_text("camvid-cpu", [a for a in argv if "=" in a], section=argv[1] if argv[0] == "--section" else None)


@pytest.mark.parametrize("command", ["train", "distill", "search", "pipeline"])
def test_commands_that_take_a_config_point_to_segdistill_config(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "segdistill config CONFIG" in " ".join(capsys.readouterr().out.split())


def test_python_m_segdistill_config():
    p = subprocess.run([sys.executable, "-m", "segdistill", "config", "camvid-cpu", "train.iters=100"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert line_of(p.stdout, "train.iters").startswith("train.iters = 100 ")
    assert line_of(p.stdout, "data.name").startswith("data.name = camvid ")
    assert printed_keys(p.stdout) >= {k for k, _ in leaf_keys(Config())}
