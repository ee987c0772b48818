"""Every config value is checked against what its field allows: a ConfigError naming key, value and rule, exit 2."""
import dataclasses
import subprocess
import sys
import typing

import pytest

from segdistill.config import Config, load_config, validate
from segdistill.errors import ConfigError


def ruled_fields(obj, prefix=""):
    """(dotted key, rule, is a list) of every field that states a rule, open sections included."""
    from segdistill.config import _items

    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in _items(obj):
        if dataclasses.is_dataclass(value):
            yield from ruled_fields(value, f"{prefix}{key}.")
        elif key in fields and "rule" in fields[key].metadata:
            yield f"{prefix}{key}", fields[key].metadata["rule"], "list" in str(hints[key])


RULED = [(k, r) for k, r, _ in ruled_fields(Config())]
IS_LIST = {k: is_list for k, _, is_list in ruled_fields(Config())}


def test_defaults_pass_and_there_are_rules_everywhere():
    validate(Config())
    sections = {k.split(".")[0] for k, _ in RULED}
    assert {"data", "model", "optim", "loss", "train", "eval", "distill"} <= sections
    assert len(RULED) >= 40


@pytest.mark.parametrize("key,rule", RULED, ids=[k for k, _ in RULED])
def test_every_ruled_field_refuses_a_bad_value(key, rule):
    bad = [rule.bad] if IS_LIST[key] else rule.bad
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    msg = str(e.value)
    assert key in msg and rule.text in msg and str(rule.bad) in msg


@pytest.mark.parametrize("override", ["train.iters=-5", "train.iters=0", "data.batch_size=0", "train.val_interval=0",
                                      "train.log_interval=0", "optim.lr=-1", "train.ckpt_interval=-1"])
def test_cli_bad_value_is_one_line_and_exit_2(override, tmp_path):
    p = subprocess.run([sys.executable, "-m", "segdistill.cli", "train", "camvid-cpu", override,
                        f"train.out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and override.split("=")[0] in p.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_eval_mode_is_checked_before_work():
    with pytest.raises(ConfigError, match="eval.mode='bogus' is not allowed: eval.mode must be one of whole, slide"):
        load_config(None, ["eval.mode=bogus"])
