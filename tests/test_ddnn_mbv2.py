"""Depth-level dynamic MobileNetV2 (segdistill.dynamic.mobilenet): set_depth, torchvision keys, the skipping rule,
output contract, errors, EKD training, per-depth latency keys and ONNX export."""
import copy
import json

import pytest
import torch
from contract import check_output_contract

from segdistill.config import Config
from segdistill.dynamic.mobilenet import DEFAULT_DEPTHS, STAGE_REPEATS
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer
from segdistill.errors import ConfigError
from segdistill.models import build_model, list_models
from segdistill.models.backbones import build_backbone
from segdistill.models.layers import count_parameters
from segdistill.tools.profile import count_flops

torch.set_num_threads(1)

X = (2, 3, 48, 64)
HEADS = ("fcn", "deeplabv3", "deeplabv3plus", "lraspp")
STARTS = [1 + sum(STAGE_REPEATS[:k]) for k in range(7)]  # torchvision index of each stage's first block


def blocks_of(depth) -> list[int]:
    """torchvision ``features`` indices of the inverted-residual blocks ``depth`` runs."""
    return [s + j for s, n in zip(STARTS, depth) for j in range(n)]


def tiny(name="ddnn_deeplabv3_mobilenetv2", **kw):
    torch.manual_seed(0)
    return build_model(name, 5, width_mult=0.25, **kw)


def test_registered_and_listed():
    names = set(list_models())
    assert {f"ddnn_{h}_mobilenetv2" for h in HEADS} <= names
    assert "ddnn_pspnet_mobilenetv2" not in names  # the ResNet DDNN has no PSPNet either


def test_set_depth_changes_blocks_and_macs_and_copies_nothing():
    model = tiny().eval()
    assert model.depth_names == ["b7", "b11", "b14", "b17"] and model.full_depth == "b17"
    params = {k: (p.data_ptr(), p.shape) for k, p in model.named_parameters()}
    keys = list(model.state_dict())
    ran: list[int] = []
    for i in range(1, 18):
        model.backbone.feature(i).register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
    macs = []
    for d in model.depth_names:
        assert model.set_depth(d) is model and model.depth_name == d and model.depth == DEFAULT_DEPTHS[d]
        ran.clear()
        with torch.no_grad():
            model(torch.randn(1, 3, 48, 64))
        assert ran == blocks_of(DEFAULT_DEPTHS[d]) and len(ran) == int(d[1:])  # the first n_i blocks of each stage
        assert [u[0] for u in model.backbone.units()] == ["features.0"] + [f"features.{i}" for i in ran] + ["features.18"]
        macs.append(count_flops(model, (1, 3, 48, 64))["macs"])
    assert macs == sorted(macs) and len(set(macs)) == 4, macs
    model.set_depth([1, 1, 2, 2, 2, 2, 1])  # a list equal to a named depth
    assert model.depth_name == "b11"
    assert {k: (p.data_ptr(), p.shape) for k, p in model.named_parameters()} == params  # nothing copied or rebuilt
    assert list(model.state_dict()) == keys
    assert model.arch_spec == {"depths": DEFAULT_DEPTHS, "depth": "b11"}
    assert model.set_depth("b17").arch_spec == {"depths": DEFAULT_DEPTHS}


def test_a_skipped_block_is_the_identity():
    """The rule's reason: a later block of a stage is residual, so skipping it is the block with F = 0. A fresh model's
    per-depth BN statistics equal the full depth's, so b7 must equal b17 with the skipped blocks' last BN zeroed."""
    model = tiny("ddnn_lraspp_mobilenetv2").eval()
    x = torch.randn(*X)
    with torch.no_grad():
        shallow = model.set_depth("b7")(x).logits
        full = copy.deepcopy(model).set_depth("b17")
        assert not torch.allclose(full(x).logits, shallow)
        for i in set(blocks_of(DEFAULT_DEPTHS["b17"])) - set(blocks_of(DEFAULT_DEPTHS["b7"])):
            blk = full.backbone.feature(i)
            assert blk.use_res_connect
            blk.conv[-1].weight.zero_(), blk.conv[-1].bias.zero_()  # the projection's BN: F(x) = 0
        torch.testing.assert_close(full(x).logits, shallow, rtol=0, atol=1e-6)


def test_full_depth_backbone_has_torchvision_keys_and_loads_them(tmp_path):
    model = build_model("ddnn_fcn_mobilenetv2", 3)
    plain = build_backbone("mobilenetv2").state_dict()  # torchvision's keys (tests/test_models.py checks them)
    own = model.backbone.state_dict()
    assert list(own) == list(plain) and len(own) == 312  # torchvision mobilenet_v2: 314 entries minus classifier.1.*
    assert all(own[k].shape == plain[k].shape for k in own)
    assert count_parameters(model.backbone) == 2_223_872
    # a torchvision-style file built from the static backbone's keys: random values, an ImageNet classifier, no BN
    # counters
    g = torch.Generator().manual_seed(1)
    sd = {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v) for k, v in plain.items()
          if "num_batches" not in k}
    sd["classifier.1.weight"], sd["classifier.1.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)
    torch.save(sd, tmp_path / "mobilenet_v2.pth")
    loaded = build_model("ddnn_fcn_mobilenetv2", 3, pretrained=str(tmp_path / "mobilenet_v2.pth"))
    got = loaded.backbone.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd if not k.startswith("classifier."))
    # every depth's BN statistics start from the loaded (full-depth) ones
    mean, var, _ = loaded.depth_bn.stats("b7", "features_4_conv_1_1")
    assert torch.equal(mean, sd["features.4.conv.1.1.running_mean"])
    assert torch.equal(var, sd["features.4.conv.1.1.running_var"])
    # a shallower deepest depth builds only its blocks, under torchvision's indices (a subset of the keys)
    small = build_model("ddnn_fcn_mobilenetv2", 3, depths={"b7": [1] * 7, "b11": DEFAULT_DEPTHS["b11"]})
    sub = small.backbone.state_dict()
    assert set(sub) < set(plain) and all(sub[k].shape == plain[k].shape for k in sub)
    assert {k.split(".")[1] for k in sub} == {str(i) for i in [0, *blocks_of(DEFAULT_DEPTHS["b11"]), 18]}


@pytest.mark.parametrize("head", ["deeplabv3plus", "lraspp"])
def test_full_depth_is_the_static_model(head):
    """The static model's whole state dict loads into the DDNN (only the other depths' BN statistics are extra), and
    the full depth then computes exactly what the static model does."""
    static = tiny(f"{head}_mobilenetv2").eval()
    model = tiny(f"ddnn_{head}_mobilenetv2").eval()
    res = model.load_state_dict(static.state_dict(), strict=False)
    assert not res.unexpected_keys and res.missing_keys and all(k.startswith("depth_bn.") for k in res.missing_keys)
    x = torch.randn(*X)
    with torch.no_grad():
        ref, out = static(x), model(x)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    assert out.features.keys() == ref.features.keys()


@pytest.mark.parametrize("head", HEADS)
def test_every_depth_gives_the_output_contract(head):
    model = tiny(f"ddnn_{head}_mobilenetv2", aux=True)
    x = torch.randn(*X)
    for d in model.depth_names:
        out = check_output_contract(model.set_depth(d), x, 5)
        assert list(out.features) == ["stem", "stage1", "stage2", "stage3", "stage4", "pre_logits"], d


def test_bad_depths_give_clear_errors():
    model = tiny()
    with pytest.raises(ConfigError, match=r"unknown depth 'r18'.*b7 \[1, 1, 1, 1, 1, 1, 1\].*b17 \[1, 2, 3, 4, 3, 3, 1\]"):
        model.set_depth("r18")
    with pytest.raises(ConfigError, match=r"deeper than this model.*depths of ddnn_deeplabv3_mobilenetv2 are: b7"):
        model.set_depth([1, 2, 3, 5, 3, 3, 1])
    with pytest.raises(ConfigError, match=r"deeper than this model"):
        model.set_depth([1, 1, 1, 1])  # a ResNet-shaped depth
    with pytest.raises(ConfigError, match=r"not a named depth.*b11 \[1, 1, 2, 2, 2, 2, 1\]"):
        model.set_depth([1, 2, 1, 1, 1, 1, 1])
    with pytest.raises(ConfigError, match=r"deeper than mobilenetv2 allows \(\[1, 2, 3, 4, 3, 3, 1\].*depths given: a"):
        tiny(depths={"a": [1] * 7, "b": [2, 2, 3, 4, 3, 3, 1]})
    with pytest.raises(ConfigError, match=r"must be 7 block counts \[n1, \.\.\., n7\]"):
        tiny(depths={"a": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match="every stage runs at least its first block"):
        tiny(depths={"a": [1, 0, 1, 1, 1, 1, 1], "b": [1, 2, 3, 4, 3, 3, 1]})


def test_decomposition_gives_each_depth_its_own_cost_keys():
    from segdistill.latency.zoo import decompose_model

    model = tiny()
    nets = {}
    for d in ("b7", "b17"):
        model.set_depth(d)
        nets[d] = decompose_model(model.model_name, (1, 3, 48, 64), 5, 0.25, 8, model=model).net
    fixed = {d: {k for k in n.keys() if k.startswith("fixed:")} for d, n in nets.items()}
    assert fixed["b7"] and fixed["b17"] and not fixed["b7"] & fixed["b17"]  # the head keys carry the depth (arch hash)
    assert len(nets["b17"].keys()) - len(nets["b7"].keys()) == 17 - 7
    blocks = {d: [k for k in n.keys() if k.startswith("mbconv")] for d, n in nets.items()}
    assert len(blocks["b7"]) == 7 and len(blocks["b17"]) == 17  # every inverted residual is a library block


def test_ekd_trains_two_iterations(tmp_path):
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [48, 64], 4, 2, 2
    d.crop_size, d.scale_range = [48, 64], [0.75, 1.25]
    cfg.model.name, cfg.model.width_mult = "ddnn_lraspp_mobilenetv2", 0.25
    cfg.model.arch = {"depths": {"b7": [1] * 7, "b11": DEFAULT_DEPTHS["b11"], "b17": DEFAULT_DEPTHS["b17"]}}
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress, t.threads = 2, 2, 2, 1, False, 1
    t.out_dir = str(tmp_path)
    cfg.ekd.enabled = True
    trainer = Trainer(cfg, build_hooks(cfg))
    trainer.train()
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in lines if "loss" in r]
    assert len(recs) == 2
    for key in ("ce", "task@b7", "kl@b7", "att@b7", "task@b11", "kl@b11", "att@b11"):
        assert all(key in r and torch.isfinite(torch.tensor(r[key])) for r in recs), key
    assert all(r["kl@b7"] > 0 and r["att@b7"] > 0 for r in recs)
    val = [r for r in lines if "val/miou" in r][-1]
    assert all(0.0 <= val[f"val/miou@{d}"] <= 1.0 for d in ("b7", "b11", "b17"))
    assert trainer.model.depth_name == "b17"


@pytest.mark.slow  # ~17 s on 2 shared cores: one dynamo export
def test_one_depth_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from segdistill.dynamic.cli import export_depths

    model = tiny("ddnn_lraspp_mobilenetv2").eval()
    res = export_depths(model, ["b7"], tmp_path / "m.onnx", (1, 3, 48, 64), False)
    assert len(res) == 1 and res[0]["depth"] == "b7" and res[0]["ok"], res
    assert (tmp_path / "m.onnx").is_file() and res[0]["max_abs_diff"] < 1e-3
    assert model.depth_name == "b7"  # export_depths leaves the depth it exported
