"""Datasets: ``build_dataset(cfg.data, split, train)`` gives a ``SegDataset`` whose items are
``{"image": float32 (3,H,W), "mask": int64 (H,W), "name": str}``; see ``base.py`` for the contract and
each loader's module for its on-disk layout."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .ade20k import ADE20K
from .base import SegDataset
from .camvid import CamVid
from .cityscapes import Cityscapes
from .folder import Folder, parse_classes
from .synthetic import Synthetic
from .transforms import build_transforms
from .voc import VOC

DATASETS = {
    "synthetic": Synthetic,
    "camvid": CamVid,
    "cityscapes": Cityscapes,
    "voc": VOC,
    "ade20k": ADE20K,
    "folder": Folder,
}

__all__ = ["DATASETS", "SegDataset", "build_dataset", "build_transforms", "dataset_info"]


def _get(name: str):
    cls = DATASETS.get(str(name).lower())
    if cls is None:
        raise DataError(f"unknown dataset data.name={name!r}; choose one of {', '.join(DATASETS)}")
    return cls


def build_dataset(cfg, split: str, train: bool, root: str | None = None) -> SegDataset:
    """The ``split`` of dataset ``cfg.name`` (a ``DataConfig``) with training or eval transforms.
    ``root`` overrides ``cfg.root``."""
    return _get(cfg.name)(cfg, split, train=train, root=root)


def dataset_info(name: str, root: str | None = None) -> dict:
    """``{"class_names", "palette", "num_classes"}`` of a dataset without reading its images. Only the
    folder dataset needs ``root`` (its classes.txt)."""
    cls = _get(name)
    if cls is Folder:
        if not root:
            raise DataError("dataset_info('folder') needs root: the folder dataset's classes come from root/classes.txt")
        path = Path(root) / "classes.txt"
        if not path.is_file():
            raise DataError(f"{path} not found; the folder dataset needs it")
        names, palette = parse_classes(path)
    else:
        names, palette = list(cls.CLASS_NAMES), [list(c) for c in cls.PALETTE]
    return {"class_names": names, "palette": palette, "num_classes": len(names)}
