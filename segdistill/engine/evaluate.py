"""Evaluate a segmentor over a split: one confusion matrix for the whole split, summed over ranks."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import EvalConfig
from ..models.output import upsample_logits
from .distributed import ShardSampler, is_dist, is_main
from .inference import predict_logits
from .metrics import ConfusionMatrix


def _make_loader(data, batch_size: int) -> DataLoader:
    """A loader over ``data`` whose sampler is this rank's :class:`ShardSampler` when distributed.

    A ``DataLoader`` passed in is used as is in a single process; when distributed it is rebuilt over its dataset
    with a ShardSampler (keeping its batch size, workers and collate function) unless it already shards.
    """
    if isinstance(data, DataLoader):
        if not is_dist() or isinstance(data.sampler, ShardSampler):
            return data
        return DataLoader(data.dataset, batch_size=data.batch_size or 1, sampler=ShardSampler(data.dataset),
                          num_workers=data.num_workers, collate_fn=data.collate_fn, pin_memory=data.pin_memory)
    return DataLoader(data, batch_size=batch_size, sampler=ShardSampler(data), num_workers=0)


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask) from a dataset batch: a dict with ``image``/``mask`` or an (image, mask, ...) sequence."""
    if isinstance(batch, dict):
        return batch["image"], batch["mask"]
    return batch[0], batch[1]


def evaluate(
    model: torch.nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    eval_cfg: EvalConfig | None,
    device: torch.device | str,
    num_classes: int,
    ignore_index: int = 255,
    batch_size: int = 1,
    progress: bool = True,
    return_confusion: bool = False,
) -> dict:
    """mIoU and friends (see :mod:`segdistill.engine.metrics`) of ``model`` on a split.

    Inference follows ``eval_cfg`` (mode, crop_size, stride, flip, scales; ``None`` = whole image, no augmentation).
    When distributed, each rank evaluates its :class:`ShardSampler` shard and the confusion matrices are summed, so
    every rank returns the same metrics, equal to a single-process run. The model's train/eval mode is restored
    afterwards. ``return_confusion=True`` adds the summed matrix as ``confusion`` (nested lists, rows = ground truth).
    """
    cfg = eval_cfg or EvalConfig()
    loader = _make_loader(dataset_or_loader, batch_size)
    cm = ConfusionMatrix(num_classes, ignore_index)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="eval", disable=not (progress and is_main()), leave=False):
            image, mask = _unpack(batch)
            image = image.to(device, non_blocking=True)
            mask = mask.to(device, non_blocking=True)
            logits = predict_logits(model, image, num_classes, mode=cfg.mode, crop_size=cfg.crop_size,
                                    stride=cfg.stride, flip=cfg.flip, scales=cfg.scales)
            logits = upsample_logits(logits, tuple(mask.shape[-2:]))  # labels kept at another size than the image
            cm.update(logits.argmax(1), mask.reshape(logits.shape[0], *mask.shape[-2:]))
    finally:
        model.train(was_training)
    metrics = cm.reduce().compute()
    if return_confusion:
        metrics["confusion"] = cm.mat.cpu().tolist()
    return metrics
