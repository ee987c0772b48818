"""Pictures: coloured masks, overlays, training curves and prediction grids.

Figures are drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing here
needs a display or changes the global pyplot backend. matplotlib is optional (``pip install 'segdistill[plot]'``):
the mask helpers (:func:`colorize`, :func:`overlay`, :func:`save_png`) work without it; the figures need it.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ._optional import require
from .errors import DataError


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def default_palette(num_classes: int) -> list[list[int]]:
    """Distinct colours for any class count: the PASCAL VOC colour map (bits of the id spread over R, G, B) from its
    second entry on, so that no class is black, the colour of ignored pixels."""
    palette = []
    for c in range(num_classes):
        rgb, cid = [0, 0, 0], c + 1
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((cid >> ch) & 1) << shift
            cid >>= 3
        palette.append(rgb)
    return palette


def colorize(mask, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """Class-id mask (H, W) -> uint8 RGB (H, W, 3) with ``palette[c]`` for class c; ``ignore_index`` (and any id
    without a palette colour) is drawn black."""
    mask = _numpy(mask).astype(np.int64)
    if mask.ndim != 2:
        raise ValueError(f"colorize expects a (H, W) mask, got shape {mask.shape}")
    colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(colors)) & (mask != ignore_index)
    out[valid] = colors[mask[valid]]
    return out


def overlay(image_uint8, color_mask, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB image with a coloured mask: ``(1 - alpha) * image + alpha * mask``, uint8 (H, W, 3)."""
    image, color = _numpy(image_uint8).astype(np.float32), _numpy(color_mask).astype(np.float32)
    if image.shape != color.shape:
        raise ValueError(f"image shape {image.shape} != mask shape {color.shape}")
    return np.clip((1 - alpha) * image + alpha * color + 0.5, 0, 255).astype(np.uint8)


def denormalize(image_tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo ``(x / 255 - mean) / std`` normalisation: (3, H, W) float tensor (or (1, 3, H, W)) -> uint8 (H, W, 3).
    ``mean``/``std`` are per channel on the 0..1 scale, as in the data config."""
    x = image_tensor.detach().float().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = (x * std_t + mean_t) * 255
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(array, path: str | os.PathLike) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG (atomically: temp file, then ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = _numpy(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {array.dtype} (colorize/denormalize first)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines log; a broken line (such as a half-written last line) is skipped with a warning."""
    if not path.is_file():
        raise DataError(f"log file {path} not found")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: not valid JSON, skipped")
    return records


def _x_of(record: dict, index: int):
    for key in ("iter", "step", "epoch"):
        if key in record:
            return record[key]
    return index


def new_figure(width: float, height: float, purpose: str = "drawing figures (training curves, prediction grids)"):
    """A ``matplotlib.figure.Figure`` (``width`` x ``height`` inches) on its own Agg canvas: no display, no pyplot
    state. Without matplotlib, an error naming ``purpose`` and the ``plot`` extra."""
    figure = require("matplotlib.figure", "plot", purpose)
    backend_agg = require("matplotlib.backends.backend_agg", "plot", purpose)
    fig = figure.Figure(figsize=(width, height))
    backend_agg.FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG (100 dpi, tight bounding box) atomically (a temporary file, then ``os.replace``)."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def plot_curves(log, keys: str | Sequence[str], out_png: str | os.PathLike) -> Path:
    """Training curves: one panel per key in ``keys``, from a JSON-lines log file or a list of dicts.

    The x axis is each record's ``iter`` (else ``step``, ``epoch``, or its position). Records without a key are
    skipped for that panel; a key found in no record is an error."""
    records = _read_jsonl(Path(log)) if isinstance(log, (str, os.PathLike)) else list(log)
    keys = [keys] if isinstance(keys, str) else list(keys)
    series = {k: [(_x_of(r, i), r[k]) for i, r in enumerate(records) if isinstance(r.get(k), (int, float))]
              for k in keys}
    missing = [k for k, pts in series.items() if not pts]
    if missing:
        raise ValueError(f"no numeric values for {missing} in the log; keys seen: {sorted({k for r in records for k in r})}")
    fig = new_figure(5 * len(keys), 3.5)
    for i, (key, pts) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(keys), i + 1)
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(pts) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel("iter")
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def prediction_grid(
    images: Sequence,
    gts: Sequence,
    preds: Sequence,
    palette: Sequence[Sequence[int]],
    out_png: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> Path:
    """A grid with one row per sample: image | ground truth | prediction, and a legend of the colours of the
    classes that appear. ``images`` are uint8 (H, W, 3); ``gts``/``preds`` class-id masks (H, W)."""
    Patch = require("matplotlib.patches", "plot", "a prediction grid").Patch

    n = len(images)
    if not (n == len(gts) == len(preds)) or n == 0:
        raise ValueError(f"need the same non-zero number of images, gts and preds, got {n}, {len(gts)}, {len(preds)}")
    h, w = _numpy(images[0]).shape[:2]
    fig = new_figure(9, 3 * n * h / w + 0.6)  # three 3-inch-wide panels per row, at the images' aspect ratio
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.03, hspace=0.08)
    present: set[int] = set()
    for row, (img, gt, pred) in enumerate(zip(images, gts, preds)):
        gt, pred = _numpy(gt), _numpy(pred)
        present |= set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
        panels = (_numpy(img), colorize(gt, palette, ignore_index), colorize(pred, palette, ignore_index))
        for col, (title, panel) in enumerate(zip(("image", "ground truth", "prediction"), panels)):
            ax = fig.add_subplot(n, 3, row * 3 + col + 1)
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    names = list(class_names) if class_names is not None else [str(c) for c in range(len(palette))]
    handles = [Patch(color=np.asarray(palette[c]) / 255.0, label=names[c])
               for c in sorted(present) if 0 <= c < len(palette) and c != ignore_index]
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 6), fontsize="small", frameon=False)
    return save_figure(fig, out_png)
