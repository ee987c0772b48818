"""Test-time inference: whole-image or sliding-window, with optional flip and multi-scale.

How views are merged (our choice, stated here):

* **Sliding windows** of one view: window logits are *summed* where windows overlap and divided by the number of
  windows covering each pixel (mmsegmentation's ``slide_inference``). A window that is larger than the (scaled)
  image is run on the image zero-padded at the bottom/right (zero = the mean colour after normalisation), and the
  padded part of the output is dropped.
* **Several views** (flip and/or scales): the softmax probabilities of the views are averaged (as mmsegmentation's
  ``aug_test`` does; probabilities are on one scale, logits of different scales are not), and the *log* of that
  average is returned. Log-probabilities are valid logits: ``softmax`` gives back the averaged probabilities and
  ``argmax`` is the merged prediction.
* **One view** (no flip, one scale of 1.0): the model's raw logits (bilinearly upsampled) are returned unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.output import SegOutput, upsample_logits


def _pair(value, name: str) -> tuple[int, int]:
    """``512`` or ``[512, 1024]`` -> ``(H, W)``."""
    if isinstance(value, int):
        return value, value
    if value is None or len(value) != 2:
        raise ValueError(f"{name} must be an int or [H, W], got {value!r}")
    return int(value[0]), int(value[1])


def forward_logits(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return its logits upsampled to the image size (accepts SegOutput or a plain tensor)."""
    out = model(image)
    logits = out.logits if isinstance(out, SegOutput) else out
    return upsample_logits(logits, tuple(image.shape[-2:]))


def _check_classes(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    if logits.shape[1] != num_classes:
        raise ValueError(f"model returned {logits.shape[1]} classes but num_classes={num_classes}")
    return logits


def whole_inference(model, image: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One forward pass over the whole image; logits (B, K, H, W) at the image size."""
    return _check_classes(forward_logits(model, image), num_classes)


def slide_inference(model, image: torch.Tensor, num_classes: int, crop_size, stride=None) -> torch.Tensor:
    """Sliding-window inference (mmsegmentation semantics, see the module docstring).

    ``crop_size`` and ``stride`` are ``(H, W)`` (or one int); ``stride`` defaults to 2/3 of the window.
    The last window in each direction is shifted back to end at the image border, so every pixel is covered.
    """
    ch, cw = _pair(crop_size, "crop_size")
    sh, sw = _pair(stride, "stride") if stride is not None else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
    b, _, h, w = image.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    logits = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            crop = image[:, :, y1:y2, x1:x2]
            ph, pw = ch - crop.shape[2], cw - crop.shape[3]
            if ph or pw:  # image smaller than the window: pad bottom/right, then drop the padded outputs
                crop = F.pad(crop, (0, pw, 0, ph))
            out = _check_classes(forward_logits(model, crop), num_classes)
            logits[:, :, y1:y2, x1:x2] += out[:, :, : y2 - y1, : x2 - x1].float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    num_classes: int,
    mode: str = "whole",
    crop_size=None,
    stride=None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Logits (B, K, H, W) at the input size for a normalised image batch (B, 3, H, W) (or one image (3, H, W)).

    ``mode`` is ``"whole"`` or ``"slide"`` (needs ``crop_size``). Each scale resizes the image bilinearly, runs
    inference (the slide window stays ``crop_size`` at every scale), and resizes the logits back. ``flip`` adds
    horizontally flipped views. Views are merged as the module docstring says. Runs under ``torch.inference_mode``;
    the caller sets ``model.eval()``.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and crop_size is None:
        raise ValueError("slide inference needs crop_size ([H, W] window)")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    size = tuple(image.shape[-2:])
    scales = list(scales) or [1.0]
    flips = [False, True] if flip else [False]

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            return slide_inference(model, x, num_classes, crop_size, stride)
        return whole_inference(model, x, num_classes)

    with torch.inference_mode():
        if len(scales) == 1 and scales[0] == 1.0 and not flip:
            return run(image)
        probs = None
        for scale in scales:
            x = image
            if scale != 1.0:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(image, size=scaled, mode="bilinear", align_corners=False)
            for flipped in flips:
                out = run(x.flip(-1)) if flipped else run(x)
                out = upsample_logits(out.flip(-1) if flipped else out, size).float().softmax(1)
                probs = out if probs is None else probs + out
        probs = probs / (len(scales) * len(flips))
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # finite even where a probability underflows
