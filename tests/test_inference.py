import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segdistill.config import EvalConfig
from segdistill.engine.evaluate import evaluate
from segdistill.engine.inference import predict_logits
from segdistill.models.output import SegOutput

K = 4


class PixelModel(nn.Module):
    """1x1 convs only: each output pixel depends on its input pixel alone, so windows and padding cannot matter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, K, 1))

    def forward(self, x):
        return SegOutput(logits=self.net(x))


class SymmetricModel(nn.Module):
    """Strided conv with a left-right symmetric kernel, logits at 1/2 resolution: flip-equivariant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return SegOutput(logits=F.avg_pool2d(self.conv(x), 2))


@pytest.mark.parametrize("size", [(17, 23), (24, 32), (5, 7)])  # not divisible / divisible / smaller than window
def test_slide_equals_whole_for_per_pixel_model(size):
    model = PixelModel().eval()
    x = torch.randn(2, 3, *size)
    whole = predict_logits(model, x, K)
    slide = predict_logits(model, x, K, mode="slide", crop_size=[8, 10], stride=[5, 6])
    assert slide.shape == (2, K, *size)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
    default_stride = predict_logits(model, x, K, mode="slide", crop_size=9)
    torch.testing.assert_close(default_stride, whole, atol=1e-5, rtol=1e-5)


def test_flip_with_equivariant_model_equals_no_flip():
    model = SymmetricModel().eval()
    x = torch.randn(1, 3, 16, 20)
    plain = predict_logits(model, x, K)
    flipped = predict_logits(model, x, K, flip=True)
    # flip returns log of averaged probabilities: same distribution as the plain logits
    torch.testing.assert_close(flipped.softmax(1), plain.softmax(1), atol=1e-5, rtol=1e-5)


def test_multiscale_output_size_and_single_view_is_raw_logits():
    model = SymmetricModel().eval()
    x = torch.randn(2, 3, 15, 21)
    out = predict_logits(model, x, K, scales=(0.5, 1.0, 1.5), flip=True)
    assert out.shape == (2, K, 15, 21) and torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 15, 21))  # log-probabilities
    raw = predict_logits(model, x[0], K)  # (3, H, W) input is accepted
    assert raw.shape == (1, K, 15, 21)
    slide_ms = predict_logits(model, x, K, mode="slide", crop_size=[8, 8], scales=(0.75, 1.25))
    assert slide_ms.shape == (2, K, 15, 21)


def test_bad_arguments():
    model = PixelModel().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="crop_size"):
        predict_logits(model, x, K, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        predict_logits(model, x, K, mode="tiles")
    with pytest.raises(ValueError, match="num_classes"):
        predict_logits(model, x, K + 1)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, n=5, size=(12, 16)):
        g = torch.Generator().manual_seed(1)
        self.items = [
            {"image": torch.randn(3, *size, generator=g), "mask": torch.randint(0, K, size, generator=g), "name": f"{i}"}
            for i in range(n)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_restores_mode_and_matches_slide():
    model = PixelModel().train()
    data = ListDataset()
    whole = evaluate(model, data, None, "cpu", K, 255, batch_size=2, progress=False)
    assert model.training
    slide = evaluate(model, data, EvalConfig(mode="slide", crop_size=[8, 8]), "cpu", K, 255, progress=False,
                     return_confusion=True)
    assert slide["miou"] == pytest.approx(whole["miou"])
    assert sum(map(sum, slide["confusion"])) == 5 * 12 * 16 == slide["num_pixels"]
