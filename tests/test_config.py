import pytest

from segdistill.config import Config, from_dict, load_config, parse_override, save_config, to_dict
from segdistill.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  name: camvid\n  resize: [180, 240]\ntrain:\n  iters: 50\n")
    cfg = load_config(p, ["train.iters=7", "optim.lr=0.5", "model.pretrained=null", "data.crop_size=[90,120]"])
    assert cfg.data.name == "camvid" and cfg.data.resize == [180, 240]
    assert cfg.train.iters == 7 and cfg.optim.lr == 0.5 and cfg.model.pretrained is None
    assert cfg.data.crop_size == [90, 120]
    assert cfg.optim.momentum == Config().optim.momentum  # untouched defaults stay


def test_int_accepted_for_float():
    cfg = load_config(None, ["optim.lr=1"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0


@pytest.mark.parametrize(
    "override, words",
    [("train.itres=5", "train.itres"), ("train.iters=ten", "train.iters"), ("nosection.x=1", "nosection"),
     ("train.iters", "section.key=value"), ("data.resize=5", "data.resize")],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iters: 5\n  unknown_key: 1\n")
    with pytest.raises(ConfigError, match=str(bad).replace(".", r"\.") + ".*unknown_key"):
        load_config(bad)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.iters=3", "data.scale_range=[0.5,2.0]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg) == to_dict(from_dict(to_dict(cfg)))


def test_parse_override_nesting():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert {c.stem for c in configs} >= {"camvid-cpu", "cityscapes", "voc", "ade20k"}
    for c in configs:
        load_config(c)
