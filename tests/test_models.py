"""Model zoo: output contract, output strides, torchvision/NVlabs key compatibility, weight loading, gradients, ONNX.

Kept small for 2 shared CPU cores: reduced widths and 64x64 / 64x96 inputs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from contract import check_output_contract

from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import (
    build_model,
    count_parameters,
    list_models,
    load_backbone_weights,
    upsample_logits,
)
from segdistill.models.backbones import build_backbone
from segdistill.models.layers import DropPath

torch.set_num_threads(2)

CNN_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"]
EXPECTED_NAMES = sorted(
    [f"{h}_{a}" for h in ("fcn", "deeplabv3", "deeplabv3plus", "pspnet") for a in CNN_ARCHS]
    + ["lraspp_resnet18", "lraspp_mobilenetv2", "searched", "segformer_mitb0", "segformer_mitb1", "segformer_mitb2"]
    + [f"ddnn_{h}_{a}" for h in ("fcn", "deeplabv3", "deeplabv3plus", "lraspp") for a in ("resnet34", "resnet50", "mobilenetv2")]
)
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def test_registry_names():
    assert list_models() == EXPECTED_NAMES
    with pytest.raises(ConfigError):
        build_model("nope_resnet18", 3)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_model_output_contract(name):
    torch.manual_seed(0)
    K, H, W = 5, 64, 96
    model = build_model(name, K, width_mult=1.0 if name == "searched" else 0.25, aux=True)  # a genotype fixes widths
    assert model.model_name == name and model.num_classes == K
    if name != "searched":  # zoo models are backbone + head; a searched network is its genotype's blocks
        assert isinstance(model.backbone, nn.Module) and isinstance(model.head, nn.Module)
    x = torch.randn(2, 3, H, W)
    out = check_output_contract(model, x, K)
    required = STAGES + ["pre_logits"] + ([] if name.startswith("segformer") else ["stem"])
    assert set(required) <= set(out.features)

    with torch.no_grad():
        out = model(x[:1])
    assert tuple(upsample_logits(out.logits, (H, W)).shape) == (1, K, H, W)
    if name == "searched":  # its head's classifier is a library block (tested in test_search_space.py)
        return
    # pre_logits is the input of the final classifier conv
    head = model.head
    assert out.features["pre_logits"].shape[1] == head.channels == head.classifier.in_channels
    if "lraspp_" not in name:  # LR-ASPP adds a second (low-level) classifier
        torch.testing.assert_close(head.classifier(out.features["pre_logits"]), out.logits)


def test_no_aux_head_by_default():
    model = build_model("fcn_resnet18", 3, width_mult=0.25).train()
    assert model.aux_head is None
    assert model(torch.randn(2, 3, 64, 64)).aux_logits is None


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenetv2"])
def test_output_stride_changes_stage4(arch):
    x = torch.randn(1, 3, 64, 64)
    for os_, s3 in ((8, 8), (16, 16), (32, 16)):
        bb = build_backbone(arch, width_mult=0.25, output_stride=os_).eval()
        with torch.no_grad():
            f = bb(x)
        assert bb.feature_strides["stage4"] == os_ and bb.feature_strides["stage3"] == s3
        assert f["stage4"].shape[-1] == 64 // os_ and f["stage3"].shape[-1] == 64 // s3
        assert f["stage2"].shape[-1] == 8 and f["stage1"].shape[-1] == 16


def test_model_output_stride_defaults():
    assert build_model("fcn_resnet18", 3, width_mult=0.25).feature_strides["stage4"] == 8
    assert build_model("fcn_resnet18", 3, width_mult=0.25, output_stride=16).feature_strides["stage4"] == 16
    assert build_model("deeplabv3_mobilenetv2", 3, width_mult=0.25).feature_strides["stage4"] == 8
    # LR-ASPP: high-level branch at 1/16 by default, logits at 1/8
    m = build_model("lraspp_mobilenetv2", 3, width_mult=0.25)
    assert m.feature_strides["stage4"] == 16 and m.logits_stride == 8
    # SegFormer ignores output_stride
    m = build_model("segformer_mitb0", 3, width_mult=0.25, output_stride=8)
    assert m.feature_strides["stage4"] == 32 and m.logits_stride == 4
    with pytest.raises(ConfigError):
        build_model("fcn_resnet18", 3, output_stride=4)
    with pytest.raises(ConfigError):
        build_model("fcn_resnet18", 3, not_an_option=1)


def test_width_mult_scales_channels():
    bb = build_backbone("resnet18", width_mult=0.5)
    assert bb.conv1.out_channels == 32 and bb.feature_channels["stage4"] == 256
    assert build_backbone("resnet50", width_mult=0.5).feature_channels["stage4"] == 1024
    mb = build_backbone("mobilenetv2", width_mult=0.5)
    assert mb.features[0][0].out_channels == 16 and mb.feature_channels["stage3"] == 48
    mit = build_backbone("mit_b0", width_mult=0.5)
    assert [mit.feature_channels[s] for s in STAGES] == [16, 32, 80, 128]
    small = build_model("deeplabv3_resnet18", 3, width_mult=0.5)
    assert small.head.channels == 128
    assert count_parameters(small) < count_parameters(build_model("deeplabv3_resnet18", 3)) / 3


# torchvision's own names and shapes (resnet18 / resnet50 / mobilenet_v2 ImageNet state dicts)
TV_RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,), "bn1.bias": (64,), "bn1.running_mean": (64,), "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.bn1.weight": (64,), "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.1.bn2.running_var": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,), "layer2.0.downsample.1.running_mean": (128,),
    "layer2.1.conv2.weight": (128, 128, 3, 3),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1), "layer3.1.conv1.weight": (256, 256, 3, 3),
    "layer4.0.conv1.weight": (512, 256, 3, 3), "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.conv2.weight": (512, 512, 3, 3), "layer4.1.bn2.bias": (512,), "layer4.1.bn2.num_batches_tracked": (),
}
TV_RESNET50 = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.bn3.running_var": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3), "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.bn3.running_mean": (1024,), "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
}
TV_MOBILENET_V2 = {
    "features.0.0.weight": (32, 3, 3, 3), "features.0.1.weight": (32,), "features.0.1.running_mean": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.0.1.running_var": (32,),
    "features.1.conv.1.weight": (16, 32, 1, 1), "features.1.conv.2.weight": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1), "features.2.conv.3.bias": (24,),
    "features.7.conv.1.0.weight": (192, 1, 3, 3), "features.14.conv.2.weight": (160, 576, 1, 1),
    "features.17.conv.2.weight": (320, 960, 1, 1), "features.17.conv.3.num_batches_tracked": (),
    "features.18.0.weight": (1280, 320, 1, 1), "features.18.1.running_mean": (1280,),
}
# NVlabs SegFormer mit_b0.pth names
NV_MIT_B0 = {
    "patch_embed1.proj.weight": (32, 3, 7, 7), "patch_embed1.proj.bias": (32,), "patch_embed1.norm.weight": (32,),
    "block1.0.norm1.weight": (32,), "block1.0.attn.q.weight": (32, 32), "block1.0.attn.q.bias": (32,),
    "block1.0.attn.kv.weight": (64, 32), "block1.0.attn.proj.weight": (32, 32),
    "block1.0.attn.sr.weight": (32, 32, 8, 8), "block1.0.attn.norm.bias": (32,),
    "block1.0.norm2.weight": (32,), "block1.0.mlp.fc1.weight": (128, 32),
    "block1.0.mlp.dwconv.dwconv.weight": (128, 1, 3, 3), "block1.0.mlp.fc2.weight": (32, 128),
    "norm1.weight": (32,), "patch_embed2.proj.weight": (64, 32, 3, 3), "block3.1.attn.sr.weight": (160, 160, 2, 2),
    "patch_embed4.proj.weight": (256, 160, 3, 3), "block4.1.attn.kv.weight": (512, 256), "norm4.bias": (256,),
}


@pytest.mark.parametrize(
    "arch,expected,n_params",
    [
        ("resnet18", TV_RESNET18, 11_176_512),  # 11,689,512 - fc (513,000)
        ("resnet50", TV_RESNET50, 23_508_032),  # 25,557,032 - fc (2,049,000)
        ("mobilenetv2", TV_MOBILENET_V2, 2_223_872),  # 3,504,872 - classifier (1,281,000)
    ],
)
def test_torchvision_key_compatibility(arch, expected, n_params):
    bb = build_backbone(arch)
    sd = bb.state_dict()
    for k, shape in expected.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("fc.", "classifier.")) for k in sd)
    assert count_parameters(bb) == n_params
    if arch == "resnet18":
        assert len(sd) == 120  # torchvision's 122 entries minus fc.weight / fc.bias


def test_mit_keys_and_sizes():
    bb = build_backbone("mit_b0")
    sd = bb.state_dict()
    for k, shape in NV_MIT_B0.items():
        assert tuple(sd[k].shape) == shape, k
    assert "block4.0.attn.sr.weight" not in sd  # sr ratio 1 in stage 4
    assert 3.2e6 < count_parameters(bb) < 3.45e6  # MiT-B0 encoder ~3.3M
    assert 3.6e6 < count_parameters(build_model("segformer_mitb0", 150)) < 3.9e6  # SegFormer-B0 ~3.7M (ADE20K)
    assert len(build_backbone("mit_b2", width_mult=0.25).block3) == 6


def test_mit_loads_nvlabs_style_checkpoint(tmp_path):
    src = build_backbone("mit_b0")
    sd = dict(src.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)  # ImageNet classifier
    torch.save(sd, tmp_path / "mit_b0.pth")
    model = build_model("segformer_mitb0", 3, pretrained=str(tmp_path / "mit_b0.pth"))
    assert torch.equal(model.backbone.block2[1].mlp.dwconv.dwconv.weight, src.block2[1].mlp.dwconv.dwconv.weight)


def test_load_backbone_weights_round_trip(tmp_path):
    src = build_backbone("resnet18")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(1000, 512)
    sd["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": sd}, path)

    dst = build_backbone("resnet18", output_stride=8)  # dilation does not change any weight shape
    info = load_backbone_weights(dst, path)
    assert info == {"loaded": 120, "ignored": 2}
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k

    # via the builder's `pretrained`, from safetensors, with a "backbone." prefix and no num_batches_tracked
    from safetensors.torch import save_file

    st = {f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items() if "num_batches" not in k}
    st["classifier.4.weight"] = torch.zeros(3, 512, 1, 1)
    save_file(st, str(tmp_path / "r18.safetensors"))
    model = build_model("fcn_resnet18", 3, pretrained=str(tmp_path / "r18.safetensors"))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_load_backbone_weights_errors(tmp_path):
    # another architecture: the error names the file and lists keys
    path = tmp_path / "mbv2.pth"
    torch.save(build_backbone("mobilenetv2", width_mult=0.25).state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(build_backbone("resnet18"), path)
    msg = str(e.value)
    assert str(path) in msg and "missing" in msg and "unexpected" in msg
    assert "conv1.weight" in msg and "features.0.0.weight" in msg

    # same architecture, other width: shape mismatch
    path2 = tmp_path / "r18_small.pth"
    torch.save(build_backbone("resnet18", width_mult=0.5).state_dict(), path2)
    with pytest.raises(CheckpointError, match="another shape"):
        load_backbone_weights(build_backbone("resnet18"), path2)

    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_backbone_weights(build_backbone("resnet18", width_mult=1.0), missing)
    assert str(missing) in str(e.value)

    with pytest.raises(CheckpointError, match="width_mult"):
        load_backbone_weights(build_backbone("resnet18", width_mult=0.5), path)
    with pytest.raises(ConfigError, match="width_mult"):
        build_model("fcn_resnet18", 3, width_mult=0.5, pretrained=str(path))

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_backbone_weights(build_backbone("resnet18"), bad)


@pytest.mark.parametrize("name", ["deeplabv3plus_resnet18", "lraspp_mobilenetv2", "segformer_mitb0"])
def test_gradients_reach_backbone_and_heads(name):
    torch.manual_seed(0)
    model = build_model(name, 4, width_mult=0.25, aux=True).train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    out = model(x)
    loss = nn.functional.cross_entropy(upsample_logits(out.logits, (64, 64)), y)
    loss = loss + 0.4 * nn.functional.cross_entropy(upsample_logits(out.aux_logits, (64, 64)), y)
    loss.backward()
    first = next(model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert model.aux_head.classifier.weight.grad.abs().sum() > 0


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(64, 3, 2, 2)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample[:, 0].tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped


def test_onnx_export_fixed_size(tmp_path):
    """One model with image pooling and non-divisible PPM bins exports with the dynamo exporter and matches."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")

    class DeployWrapper(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return upsample_logits(self.model(x).logits, x.shape[-2:])

    torch.manual_seed(0)
    wrapper = DeployWrapper(build_model("pspnet_resnet18", 3, width_mult=0.25)).eval()
    x = torch.randn(1, 3, 64, 96)  # stage4 8x12: bins 3 and 6 do not divide it
    program = torch.onnx.export(wrapper, (x,), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = wrapper(x).numpy()
    assert got.shape == (1, 3, 64, 96)
    assert abs(got - ref).max() < 1e-4 * max(1.0, abs(ref).max())
