import math

import pytest
import torch

from segdistill.engine.metrics import ConfusionMatrix, format_table

# 2x3 case, 4 classes (class 3 appears nowhere), one ignored pixel whose prediction must not count.
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])
# confusion (rows = ground truth): [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
# IoU: c0 1/(2+1-1) = 0.5, c1 2/(2+3-2) = 2/3, c2 1/1 = 1, c3 union 0 -> NaN


def test_hand_computed_case():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(PRED, TARGET)
    assert cm.mat.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    m = cm.compute()
    assert m["iou"][:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert math.isnan(m["iou"][3])
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)  # the absent class is excluded
    assert m["pixel_acc"] == pytest.approx(4 / 5)
    assert m["acc"][:3] == pytest.approx([0.5, 1.0, 1.0])
    assert m["mean_acc"] == pytest.approx(2.5 / 3)
    assert m["num_pixels"] == 5


def test_class_only_predicted_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 0, 0]))
    m = cm.compute()
    assert m["iou"][0] == pytest.approx(3 / 4)
    assert m["iou"][1] == 0.0 and math.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx(3 / 8)


def test_perfect_prediction():
    target = torch.tensor([[0, 1], [2, 255]])
    cm = ConfusionMatrix(3)
    cm.update(target.clamp(max=2), target)
    m = cm.compute()
    assert m["miou"] == 1.0 and m["pixel_acc"] == 1.0 and m["mean_acc"] == 1.0


def test_accumulation_is_whole_split_not_mean_of_images():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (2, 5, 7), generator=g) for _ in range(3)]
    targets = [torch.randint(0, 4, (2, 5, 7), generator=g) for _ in range(3)]
    for t in targets:
        t[t == 3] = 255
    split = ConfusionMatrix(3)
    for p, t in zip(preds, targets):
        split.update(p, t)
    once = ConfusionMatrix(3)
    once.update(torch.cat(preds), torch.cat(targets))
    assert torch.equal(split.mat, once.mat)
    assert split.mat.dtype == torch.int64
    # a mean of per-batch mIoUs is a different number: the split metric must not be that
    per_batch = []
    for p, t in zip(preds, targets):
        cm = ConfusionMatrix(3)
        cm.update(p, t)
        per_batch.append(cm.compute()["miou"])
    assert split.compute()["miou"] == pytest.approx(once.compute()["miou"])
    assert split.compute()["miou"] != pytest.approx(sum(per_batch) / 3, abs=1e-9)


def test_out_of_range_label_raises_with_values():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 3, 7, 255]))
    with pytest.raises(ValueError, match="-1"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, -1]))


def test_empty_split_and_table():
    cm = ConfusionMatrix(2)
    m = cm.compute()
    assert math.isnan(m["miou"]) and m["num_pixels"] == 0
    cm.update(PRED.clamp(max=1), TARGET.clamp(max=1))
    table = format_table(cm.compute(), ["road", "sky"])
    assert "road" in table and "sky" in table and "mIoU" in table and "pixel acc" in table
