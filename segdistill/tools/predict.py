"""Predict masks for image files: coloured mask, overlay and raw class ids per image."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import DataConfig, EvalConfig
from ..data.base import IMAGE_EXTS
from ..data.base import read_image as _read_rgb
from ..data.transforms import normalize_image, resize_image
from ..engine.inference import predict_logits
from ..errors import DataError
from ..viz import colorize, default_palette, overlay, save_png


def list_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (a folder's images, sorted, not recursive).

    A missing path or a folder without images is a :class:`DataError`; so are two inputs with the same file stem,
    whose outputs would overwrite each other."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(f"{stems[f.stem]} and {f} share the name {f.stem!r}; their outputs would collide")
        stems[f.stem] = f
    return files


def read_image(path: Path, resize: Sequence[int] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3), read and resized (``resize`` = [H, W], bilinear) as the datasets do
    (:mod:`segdistill.data`). An unreadable file is a :class:`DataError` naming it."""
    image = _read_rgb(path)
    return resize_image(image, resize) if resize is not None else image


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (1, 3, H, W): ``(x / 255 - mean) / std``, the datasets' normalisation."""
    return normalize_image(image, mean, std).unsqueeze(0)


def predict_paths(
    model: torch.nn.Module,
    paths,
    out_dir: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    resize: Sequence[int] | None = None,
    ignore_index: int = 255,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    alpha: float = 0.5,
) -> list[Path]:
    """Predict every image in ``paths`` (files and/or folders) and write into ``out_dir``:

    * ``<stem>_mask.png``: the prediction coloured with ``palette``,
    * ``<stem>_overlay.png``: the image blended with it (``alpha``),
    * ``<stem>_labels.png``: raw class ids, uint8 (single channel).

    Images are read, resized and normalised (``mean``/``std``; None: the data config's defaults, ImageNet's) by the
    data package's functions, as in evaluation. Outputs are at the (optionally resized, ``resize`` = [H, W]) image
    size. ``eval_cfg`` sets the inference mode
    (whole / slide, flip, scales). The number of classes is ``model.num_classes`` if set, else ``len(palette)``;
    ``palette=None`` uses :func:`~segdistill.viz.default_palette` (needs ``model.num_classes``).
    Returns the written paths. The model's train/eval mode is restored afterwards.
    """
    files = list_images(paths)
    cfg = eval_cfg or EvalConfig()
    defaults = DataConfig()
    mean = defaults.mean if mean is None else mean
    std = defaults.std if std is None else std
    if palette is None and not hasattr(model, "num_classes"):
        raise ValueError("predict_paths needs a palette or a model with a num_classes attribute")
    num_classes = int(getattr(model, "num_classes", None) or len(palette))
    palette = default_palette(num_classes) if palette is None else palette
    if num_classes > 256:
        raise ValueError(f"{num_classes} classes do not fit the uint8 labels PNG")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    was_training = model.training
    model.eval()
    try:
        for f in files:
            image = read_image(f, resize)
            x = to_tensor(image, mean, std).to(device)
            logits = predict_logits(model, x, num_classes, mode=cfg.mode, crop_size=cfg.crop_size,
                                    stride=cfg.stride, flip=cfg.flip, scales=cfg.scales)
            labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            color = colorize(labels, palette, ignore_index)
            written += [
                save_png(color, out / f"{f.stem}_mask.png"),
                save_png(overlay(image, color, alpha), out / f"{f.stem}_overlay.png"),
                save_png(labels, out / f"{f.stem}_labels.png"),
            ]
    finally:
        model.train(was_training)
    return written
