import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from segdistill.errors import DataError
from segdistill.models.output import SegOutput
from segdistill.tools.export import DeployModel, ExportError, export_onnx
from segdistill.tools.predict import predict_paths
from segdistill.tools.profile import (
    count_flops,
    count_inference_params,
    count_params,
    format_profile,
    measure_latency,
    profile_model,
)
from segdistill.viz import colorize, denormalize, overlay, plot_curves, prediction_grid

K = 3
PALETTE = [[128, 0, 0], [0, 128, 0], [0, 0, 128]]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class TinySeg(nn.Module):
    """Stride-2 conv + BN + 1x1 classifier (logits at 1/2 resolution), and an aux head used only in training."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, K, 1)
        self.aux = nn.Conv2d(8, K, 1)
        self.num_classes = K

    def forward(self, x):
        f = self.stem(x)
        return SegOutput(logits=self.cls(f), features={"pre_logits": f}, aux_logits=self.aux(f) if self.training else None)


def test_flops_of_one_conv_match_hand_count():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    # 6 outputs channels x 10 x 12 positions, each 4*3*3 multiply-adds, 2 FLOPs per multiply-add
    assert count_flops(conv, (1, 4, 10, 12)) == {"flops": 2 * 4 * 6 * 3 * 3 * 10 * 12, "macs": 4 * 6 * 3 * 3 * 10 * 12}
    strided = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    assert count_flops(strided, (2, 3, 16, 20))["flops"] == 2 * 2 * 3 * 8 * 9 * 8 * 10


def test_params_and_inference_params():
    model = TinySeg().train()
    assert count_params(model) == (3 * 8 * 9 + 8) + 2 * 8 + 2 * (8 * K + K)
    assert count_inference_params(model, (1, 3, 8, 8)) == count_params(model) - (8 * K + K)  # aux head left out
    assert model.training


def test_measure_latency():
    x = torch.randn(64, 64)
    lat = measure_latency(lambda: x @ x, warmup=2, min_time=0.0)
    assert lat["runs"] >= 50
    assert 0 < lat["median_ms"] <= lat["p90_ms"]
    assert lat["threads"] == torch.get_num_threads()


def test_measure_interleaved_round_robin():
    """Every pass times every callable once, in turn; a callable's figure is the median of its pass medians."""
    from segdistill.latency.standalone import measure_interleaved

    calls, sleep = [], {"a": 0.0, "b": 0.002}

    def timed(name):
        def fn():
            calls.append(name)
            time.sleep(sleep[name])
        return fn

    passes = []
    res = measure_interleaved({"a": timed("a"), "b": timed("b")}, repeats=3, warmup=1, min_runs=2, min_time=0.0,
                              progress=passes.append)
    assert passes == [0, 1, 2]
    blocks = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]  # a, b, a, b, a, b: interleaved
    assert blocks == ["a", "b"] * 3
    for name, r in res.items():
        assert len(r["passes_ms"]) == 3 and r["runs"] == 6
        assert r["fastest_ms"] <= r["median_ms"] <= r["slowest_ms"]
        assert r["median_ms"] == sorted(r["passes_ms"])[1]
    assert res["b"]["median_ms"] > 1.5 and res["a"]["median_ms"] < res["b"]["median_ms"]
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({"a": timed("a")}, repeats=0)


def test_profile_model_on_cpu():
    model = TinySeg()
    result = profile_model(model, input_shape=(1, 3, 24, 32), warmup=1, runs=3, min_time=0.0, threads=1)
    lat = result["latency"]
    assert lat["torch-cpu"]["runs"] >= 3 and lat["torch-cpu"]["threads"] == 1
    assert lat["onnxruntime-cpu"]["runs"] >= 3 and lat["onnxruntime-cpu"]["onnx_max_abs_diff"] < 1e-4
    if not torch.cuda.is_available():
        assert "skipped" in lat["torch-cuda"] and "skipped" in lat["torch-cuda-fp16"]
    assert result["flops"] == 2 * 3 * 8 * 9 * 12 * 16 + 2 * 8 * K * 12 * 16  # stem + classifier, no aux
    assert result["macs"] == result["flops"] // 2
    assert result["threads"] == 1 and result["params"] == count_params(model)
    json.dumps(result)
    text = format_profile(result)
    assert "torch-cpu" in text and "MACs" in text and "skipped" in text


def test_export_onnx_parity(tmp_path):
    import onnxruntime as ort

    model = TinySeg().train()
    path = tmp_path / "sub" / "tiny.onnx"
    report = export_onnx(model, path, input_shape=(1, 3, 20, 28), dynamic_batch=True)
    assert model.training  # the caller's model is untouched
    assert path.is_file() and report["ok"] and report["max_abs_diff"] < 1e-4 and report["argmax_agreement"] == 1.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]  # no temp or external-data files left
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"] and [o.name for o in sess.get_outputs()] == ["logits"]
    x = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        ref = DeployModel(model.eval())(x)
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (2, K, 20, 28)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4)


def test_export_fallback_and_parity_failure(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    path = tmp_path / "m.onnx"
    with pytest.warns(UserWarning, match="retrying with dynamo=False"):
        with pytest.raises(ExportError, match="differs from PyTorch") as info:
            export_onnx(TinySeg(), path, input_shape=(1, 3, 12, 16), atol=-1.0)  # no difference can pass
    assert info.value.result["ok"] is False and not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning):
        report = export_onnx(TinySeg(), path, input_shape=(1, 3, 12, 16), atol=-1.0, strict=False)
    assert report["exporter"] == "torchscript" and not report["ok"] and report["max_abs_diff"] < 1e-4
    assert path.is_file()


def test_predict_paths_and_viz(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (20, 26, 3), dtype=np.uint8)).save(images / name)
    model = TinySeg()
    written = predict_paths(model, [images], tmp_path / "out", MEAN, STD, PALETTE, resize=[16, 24])
    names = sorted(p.name for p in written)
    assert names == sorted(f"{s}_{k}.png" for s in "ab" for k in ("mask", "overlay", "labels"))
    labels = np.asarray(Image.open(tmp_path / "out" / "a_labels.png"))
    assert labels.shape == (16, 24) and labels.dtype == np.uint8 and labels.max() < K
    assert np.asarray(Image.open(tmp_path / "out" / "a_mask.png")).shape == (16, 24, 3)
    assert len(predict_paths(model, images / "a.png", tmp_path / "out2", MEAN, STD, palette=None)) == 3  # default colours

    # viz helpers
    color = colorize(torch.tensor([[0, 1], [2, 255]]), PALETTE, 255)
    assert color[0, 0].tolist() == PALETTE[0] and color[1, 1].tolist() == [0, 0, 0]
    assert overlay(np.full((2, 2, 3), 200, np.uint8), color, alpha=0.0).tolist() == [[[200] * 3] * 2] * 2
    img = torch.rand(3, 4, 5)
    norm = (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    np.testing.assert_array_equal(denormalize(norm, MEAN, STD), (img * 255).round().byte().permute(1, 2, 0).numpy())
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iter": 1, "loss": 2.0}\n{"iter": 2, "loss": 1.5, "val/miou": 0.3}\n{"iter": 3, "lo')
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert plot_curves(log, ["loss", "val/miou"], tmp_path / "curves.png").is_file()
    gt = np.array([[0, 1], [2, 255]])
    assert prediction_grid([color, color], [gt, gt], [gt, gt], PALETTE, tmp_path / "grid.png", ["x", "y", "z"]).is_file()


def test_predict_paths_errors(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        predict_paths(TinySeg(), [bad], tmp_path / "out", MEAN, STD, PALETTE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        predict_paths(TinySeg(), empty, tmp_path / "out", MEAN, STD, PALETTE)
    with pytest.raises(DataError, match="does not exist"):
        predict_paths(TinySeg(), tmp_path / "missing.png", tmp_path / "out", MEAN, STD, PALETTE)
