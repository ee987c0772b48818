"""Joint image + mask transforms.

Every transform is a small callable ``t(image, mask, rng) -> (image, mask)`` where ``image`` is an HxWx3
uint8 numpy array, ``mask`` an HxW integer array of class ids (already mapped, ignore = ``ignore_index``) and
``rng`` a ``numpy.random.Generator`` that the caller derives from (seed, epoch, index). Random transforms
draw only from that ``rng``, never from global random state, so a sample is reproducible whatever the
DataLoader worker or resume point. ``Normalize`` comes last and turns the pair into torch tensors.

Masks are only ever resized with nearest neighbour, so no new label values appear.

Geometry record. The geometric transforms (``Resize``, ``RandomScale``, ``RandomCrop``, ``RandomFlip``; they
have ``geometric = True`` and a ``stage``) also accept ``geom=``, a dict that ``Compose`` hands them to record
what they did, without changing any random draw: ``base`` (H, W) after ``Resize`` (the raw size if none),
``scaled`` (H, W) after ``RandomScale`` (= ``base`` if none), ``offset`` (y0, x0) of the crop in the scaled
(and bottom/right padded) image, ``flip`` (applied after the crop) and, set by ``Compose``, ``out`` (H, W).
The offline teacher cache (``segdistill.distill.cache``) replays this geometry on maps computed from the
base image. The record is only meaningful in the order resize -> scale -> crop -> flip (each at most
once); ``Compose`` sets ``geom["valid"] = False`` otherwise.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of an HxWx3 uint8 image to ``size = (H, W)``."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of an HxW label map to ``size = (H, W)``; keeps the dtype."""
    h, w = int(size[0]), int(size[1])
    if mask.shape == (h, w):
        return mask
    if mask.dtype == np.uint8:
        return np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    out = Image.fromarray(mask.astype(np.int32)).resize((w, h), Image.NEAREST)  # PIL mode "I"
    return np.asarray(out).astype(mask.dtype)


def _need_rng(rng):
    if rng is None:
        raise ValueError("random transforms need an explicit numpy Generator (rng)")
    return rng


def new_geometry(h: int, w: int) -> dict:
    """The identity geometry record of an ``h x w`` image (see the module docstring)."""
    return {"base": (int(h), int(w)), "scaled": (int(h), int(w)), "offset": (0, 0), "flip": False,
            "out": (int(h), int(w)), "valid": True}


class Compose:
    """Applies the transforms in order. With ``geom`` (a dict, normally empty), also records the geometry
    of the geometric transforms into it (keys as in :func:`new_geometry`)."""

    records_geometry = True

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, mask, rng=None, geom=None):
        if geom is None:
            for t in self.transforms:
                image, mask = t(image, mask, rng)
            return image, mask
        geom.update(new_geometry(*mask.shape[:2]))
        stage = -1
        for t in self.transforms:
            if getattr(t, "geometric", False):
                if t.stage <= stage:  # out of the order resize -> scale -> crop -> flip, or repeated
                    geom["valid"] = False
                stage = t.stage
                image, mask = t(image, mask, rng, geom=geom)
            else:
                image, mask = t(image, mask, rng)
        geom["out"] = tuple(int(v) for v in mask.shape[-2:])
        return image, mask

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Resize to a fixed ``[H, W]`` (bilinear image, nearest mask)."""

    geometric, stage = True, 0

    def __init__(self, size):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image, mask, rng=None, geom=None):
        if geom is not None:
            geom["base"] = geom["scaled"] = self.size
        return resize_image(image, self.size), resize_mask(mask, self.size)

    def __repr__(self):
        return f"Resize({list(self.size)})"


class RandomScale:
    """Scale both by one factor drawn uniformly from ``scale_range = [min, max]``."""

    geometric, stage = True, 1

    def __init__(self, scale_range):
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])

    def __call__(self, image, mask, rng=None, geom=None):
        s = _need_rng(rng).uniform(self.lo, self.hi)
        h, w = mask.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if geom is not None:
            geom["scaled"] = (int(size[0]), int(size[1]))
        return resize_image(image, size), resize_mask(mask, size)

    def __repr__(self):
        return f"RandomScale([{self.lo}, {self.hi}])"


class RandomCrop:
    """Random ``[H, W]`` crop. A smaller image is first padded at the bottom/right: the image with
    ``pad_color`` (the normalisation mean, so it becomes 0 after ``Normalize``), the mask with ``ignore_index``."""

    geometric, stage = True, 2

    def __init__(self, crop_size, ignore_index: int = 255, pad_color=(0, 0, 0)):
        self.size = (int(crop_size[0]), int(crop_size[1]))
        self.ignore_index = int(ignore_index)
        self.pad_color = np.asarray(pad_color, dtype=np.uint8)

    def __call__(self, image, mask, rng=None, geom=None):
        ch, cw = self.size
        h, w = mask.shape
        if h < ch or w < cw:
            ph, pw = max(h, ch), max(w, cw)
            padded = np.empty((ph, pw, 3), np.uint8)
            padded[:] = self.pad_color
            padded[:h, :w] = image
            pmask = np.full((ph, pw), self.ignore_index, dtype=mask.dtype)
            pmask[:h, :w] = mask
            image, mask, h, w = padded, pmask, ph, pw
        rng = _need_rng(rng)
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        if geom is not None:
            geom["offset"] = (y0, x0)
        return image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]

    def __repr__(self):
        return f"RandomCrop({list(self.size)}, ignore_index={self.ignore_index})"


class RandomFlip:
    """Horizontal flip of both with probability ``p``."""

    geometric, stage = True, 3

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image, mask, rng=None, geom=None):
        if _need_rng(rng).random() < self.p:
            if geom is not None:
                geom["flip"] = True
            return image[:, ::-1], mask[:, ::-1]
        return image, mask

    def __repr__(self):
        return f"RandomFlip(p={self.p})"


class ColorJitter:
    """Photometric jitter of the image only: brightness, contrast and saturation factors each drawn from
    ``[1 - strength, 1 + strength]``. ``strength = 0`` leaves the image unchanged."""

    def __init__(self, strength: float):
        self.strength = float(strength)

    def __call__(self, image, mask, rng=None):
        if self.strength <= 0:
            return image, mask
        rng = _need_rng(rng)
        b, c, s = rng.uniform(1 - self.strength, 1 + self.strength, size=3)
        x = image.astype(np.float32) * b
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray.mean()) * c + gray.mean()
        gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = (x - gray) * s + gray
        return np.clip(x + 0.5, 0, 255).astype(np.uint8), mask

    def __repr__(self):
        return f"ColorJitter({self.strength})"


def normalize_image(image: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3,H,W) tensor ``(x/255 - mean) / std``: what ``Normalize`` does to the image
    (``segdistill predict`` uses it too, so a predicted image is fed exactly like an evaluated one)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    x = (image.astype(np.float32) * (1.0 / 255.0) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class Normalize:
    """uint8 HxWx3 -> float32 (3,H,W) tensor ``(x/255 - mean) / std``; mask -> int64 (H,W) tensor."""

    def __init__(self, mean, std):
        self.mean_std = (list(mean), list(std))
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, image, mask, rng=None):
        img = normalize_image(image, self.mean, self.std)
        return img, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))

    def __repr__(self):
        return f"Normalize(mean={self.mean_std[0]}, std={self.mean_std[1]})"


def _check_pair(value, key: str, kind):
    if value is None:
        return
    if len(value) != 2 or any(v <= 0 for v in value):
        what = "[H, W] of positive integers" if kind is int else "[min, max] of positive numbers"
        raise ConfigError(f"{key}={value!r}: expected {what}")


def build_transforms(cfg, train: bool) -> Compose:
    """Training: resize (if set) -> random scale -> crop (if set) -> flip -> jitter -> normalise.
    Eval: resize (if set) -> normalise. ``cfg`` is a ``DataConfig``."""
    _check_pair(cfg.resize, "data.resize", int)
    _check_pair(cfg.crop_size, "data.crop_size", int)
    _check_pair(cfg.scale_range, "data.scale_range", float)
    ts = []
    if cfg.resize:
        ts.append(Resize(cfg.resize))
    if train:
        lo, hi = cfg.scale_range
        if (lo, hi) != (1.0, 1.0):
            ts.append(RandomScale((lo, hi)))
        if cfg.crop_size:
            pad = tuple(int(round(m * 255)) for m in cfg.mean)
            ts.append(RandomCrop(cfg.crop_size, cfg.ignore_index, pad))
        if cfg.flip:
            ts.append(RandomFlip())
        if cfg.jitter > 0:
            ts.append(ColorJitter(cfg.jitter))
    ts.append(Normalize(cfg.mean, cfg.std))
    return Compose(ts)
