"""Every config value is checked against what its field allows: a ConfigError naming key, value and rule, exit 2."""
import dataclasses
import subprocess
import sys
import typing

import pytest

from segdistill.config import Config, load_config, validate
from segdistill.errors import ConfigError


def leaf_fields(obj, prefix=""):
    """(dotted key, dataclass field, type hint) of every leaf field, open sections (distill.<term>) included."""
    from segdistill.config import _items

    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in _items(obj):
        if dataclasses.is_dataclass(value):
            yield from leaf_fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", fields[key], hints[key]


def _container(tp) -> str:
    """"list" or "dict" when a field of type ``tp`` holds one (``list[int] | None`` too), else ""."""
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) in (list, dict):
            return typing.get_origin(t).__name__
    return ""


def ruled_fields(obj):
    """(dotted key, rule, container) of every field that states a rule."""
    for key, f, tp in leaf_fields(obj):
        if "rule" in f.metadata:
            yield key, f.metadata["rule"], _container(tp)


RULED = [(k, r) for k, r, _ in ruled_fields(Config())]
CONTAINER = {k: c for k, _, c in ruled_fields(Config())}
# numeric fields for which every value of their type means something (no rule needed)
FREE_NUMBERS = {"data.ignore_index", "data.mean", "data.seed", "train.seed"}


def test_defaults_pass_and_there_are_rules_everywhere():
    from segdistill.distill.terms import term_configs

    validate(Config())
    sections = {k.rsplit(".", 1)[0] for k, _ in RULED}
    assert {"data", "model", "optim", "loss", "train", "eval", "distill", "distill.task", "ekd", "search",
            "pipeline"} <= sections
    assert {f"distill.{name}" for name in term_configs()} <= sections  # every KD term's section
    assert len(RULED) >= 90


def _is_number(tp) -> bool:
    return tp in (int, float) or any(_is_number(a) for a in typing.get_args(tp))


def test_every_numeric_field_states_a_rule():
    unruled = [k for k, f, tp in leaf_fields(Config()) if _is_number(tp) and "rule" not in f.metadata]
    assert sorted(unruled) == sorted(FREE_NUMBERS), "give these fields a rule (checked(default, rule, help))"


@pytest.mark.parametrize("key,rule", RULED, ids=[k for k, _ in RULED])
def test_every_ruled_field_refuses_a_bad_value(key, rule):
    override = {"list": f"{key}={[rule.bad]}", "dict": f"{key}.x={rule.bad}"}.get(CONTAINER[key], f"{key}={rule.bad}")
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert key in msg and rule.text in msg and str(rule.bad) in msg


@pytest.mark.parametrize("override", ["train.iters=-5", "train.iters=0", "data.batch_size=0", "train.val_interval=0",
                                      "train.log_interval=0", "optim.lr=-1", "train.ckpt_interval=-1",
                                      "distill.pixel.T=0", "ekd.subnets=bogus", "search.budget.torch-cpu=0"])
def test_cli_bad_value_is_one_line_and_exit_2(override, tmp_path):
    p = subprocess.run([sys.executable, "-m", "segdistill.cli", "train", "camvid-cpu", override,
                        f"train.out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and override.split("=")[0] in p.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_eval_mode_is_checked_before_work():
    with pytest.raises(ConfigError, match="eval.mode='bogus' is not allowed: eval.mode must be one of whole, slide"):
        load_config(None, ["eval.mode=bogus"])
