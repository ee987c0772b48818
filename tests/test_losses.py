import pytest
import torch
import torch.nn.functional as F

from segdistill.engine.losses import OhemCrossEntropy, SegLoss
from segdistill.models.output import SegOutput


def test_plain_ce_matches_torch_with_ignore_and_upsampling():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4, 6)
    target = torch.randint(0, 4, (2, 8, 12))
    target[0, :2] = 255
    up = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, target, ignore_index=255)
    assert OhemCrossEntropy(255)(logits, target) == pytest.approx(ref.item(), rel=1e-6)


def test_ohem_keeps_only_hard_pixels():
    # 4 pixels, class 0 target; probabilities of the true class: high for two, low for two
    logits = torch.tensor([[5.0, -5.0], [4.0, -4.0], [-2.0, 2.0], [-1.0, 1.0]]).T.reshape(1, 2, 1, 4)
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    ohem = OhemCrossEntropy(255, thresh=0.7, min_kept=1)(logits, target)
    assert ohem == pytest.approx(per_pixel[2:].mean().item(), rel=1e-6)  # the two easy pixels are dropped
    # min_kept larger than the hard set: the hardest min_kept pixels are kept
    ohem3 = OhemCrossEntropy(255, thresh=0.01, min_kept=3)(logits, target)
    assert ohem3 == pytest.approx(per_pixel.sort(descending=True).values[:3].mean().item(), rel=1e-6)


def test_ohem_never_selects_ignored_pixels():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    target[0, 0, 0] = 1
    loss = OhemCrossEntropy(255, thresh=0.7, min_kept=100)(logits, target)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)
    all_ignored = OhemCrossEntropy(255, thresh=0.7)(logits, torch.full((1, 2, 2), 255))
    all_ignored.backward()  # a batch with no labelled pixel gives zero, with a graph
    assert all_ignored.item() == 0.0


def test_seg_loss_names_aux_term():
    out = SegOutput(logits=torch.randn(1, 3, 4, 4), aux_logits=torch.randn(1, 3, 4, 4))
    target = torch.randint(0, 3, (1, 4, 4))
    losses = SegLoss(aux_weight=0.4)(out, target)
    assert set(losses) == {"ce", "aux"}
    assert losses["aux"] == pytest.approx(0.4 * F.cross_entropy(out.aux_logits, target).item(), rel=1e-6)
    assert set(SegLoss()(SegOutput(logits=out.logits), target)) == {"ce"}
