"""Procedural street scenes made in memory: a dataset that needs no files.

Each image is a pure function of ``(cfg.seed, split, index)`` and ``cfg.synthetic_size = [H, W]``; the
splits are "train" (``cfg.synthetic_train`` images) and "val" (``cfg.synthetic_val``). A scene has a sky
gradient with clouds above a horizon, building blocks with window grids, a road in perspective with
dashed lane markings, sidewalks with tiles, grass and trees with noisy crowns, thin poles (1-2 px wide,
some with an arm), cars (rounded boxes with cabin, windows, wheels; parked rows occlude each other and
poles) and pedestrians (thin upright shapes). Colours vary per image and object and every class has its
own texture and noise, so it is learnable but not trivial. Some scenes have an ego-vehicle hood at the
bottom and an unlabelled object, both void (-> ``ignore_index``), so ignore handling is exercised.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import SegDataset

CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "pole", "car", "person")
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, POLE, CAR, PERSON = range(8)
VOID = 255
# Cityscapes colours for the matching classes
PALETTE = ((70, 130, 180), (70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35), (153, 153, 153),
           (0, 0, 142), (220, 20, 60))

# per-class pixel-noise amplitude (texture) and smooth-shading amplitude, indexed by label (void = 255)
_GRAIN = np.zeros(256, np.float32)
_GRAIN[:8] = (2, 7, 6, 5, 22, 4, 5, 8)
_SHADE = np.zeros(256, np.float32)
_SHADE[:8] = (0.05, 0.25, 0.2, 0.15, 0.45, 0.1, 0.1, 0.1)
_FACADES = np.array([[150, 140, 130], [120, 110, 100], [170, 160, 140], [110, 90, 80], [140, 145, 150],
                     [180, 170, 160], [100, 100, 110]], np.float32)


_BANKS: dict = {}
_BANK_OFFSETS = 1 << 19


def _gauss(rng, shape):
    """Standard-normal noise: a random window of a fixed bank per noise size (much faster than drawing
    it afresh, and the same whatever other sizes were asked for before)."""
    n = int(np.prod(shape))
    if n not in _BANKS:
        _BANKS[n] = np.random.default_rng(20240601).standard_normal(_BANK_OFFSETS + n, dtype=np.float32)
    start = int(rng.integers(0, _BANK_OFFSETS))
    return _BANKS[n][start:start + n].reshape(shape)


def _smooth(rng, h, w, cell):
    """Smooth noise in [0, 1]: a coarse random grid resized bilinearly."""
    grid = rng.random((h // cell + 2, w // cell + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _colour(rng, base, spread):
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


def _box(h, w, y0, y1, x0, x1):
    """Clipped integer bounding box and the coordinate grids inside it (or None when empty)."""
    y0, y1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
    x0, x1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), np.arange(y0, y1, dtype=np.float32)[:, None], \
        np.arange(x0, x1, dtype=np.float32)[None, :]


def _paint(img, lab, sl, m, colour, cls):
    img[sl][m] = colour
    lab[sl][m] = cls


def _draw_car(img, lab, rng, cx, by, cw):
    ch = cw * rng.uniform(0.55, 0.75)
    h, w = lab.shape
    box = _box(h, w, by - ch, by + 1, cx - cw / 2, cx + cw / 2 + 1)
    if box is None:
        return
    sl, Y, X = box
    u = (X - cx) / (cw / 2)
    body = np.abs(u) ** 4 + np.abs((Y - (by - 0.28 * ch)) / (0.28 * ch + 0.5)) ** 4 <= 1
    uc = (X - cx - cw * rng.uniform(-0.05, 0.05)) / (cw * 0.34)
    vc = (Y - (by - 0.56 * ch)) / (0.44 * ch + 0.5)
    cabin = (np.abs(uc) ** 3 + np.abs(vc) ** 3 <= 1) & (Y <= by - 0.5 * ch)
    shape = body | cabin
    _paint(img, lab, sl, shape, _colour(rng, rng.uniform(20, 235, 3), 10), CAR)
    glass = (np.abs(uc) ** 3 + np.abs(vc) ** 3 <= 0.55) & (Y <= by - 0.58 * ch)
    img[sl][glass] = _colour(rng, (40, 50, 60), 8)
    r = max(0.8, ch * 0.15)
    for wx in (cx - cw * 0.3, cx + cw * 0.3):
        wheel = shape & ((X - wx) ** 2 + (Y - (by - r * 0.8)) ** 2 <= r * r)
        img[sl][wheel] = (25, 25, 25)
    # shadow on the ground just below the car (label unchanged)
    sh = _box(h, w, by + 1, by + 1 + max(1, ch * 0.08), cx - cw * 0.45, cx + cw * 0.45)
    if sh is not None:
        img[sh[0]] *= 0.55


def _draw_person(img, lab, rng, cx, by, ph):
    pw = max(2.0, ph * rng.uniform(0.18, 0.26))
    h, w = lab.shape
    box = _box(h, w, by - ph, by + 1, cx - pw / 2, cx + pw / 2 + 1)
    if box is None:
        return
    sl, Y, X = box
    r = max(0.7, pw * 0.42)
    head = (X - cx) ** 2 + (Y - (by - ph + r)) ** 2 <= r * r
    torso = (np.abs(X - cx) <= pw / 2) & (Y >= by - ph + 1.6 * r) & (Y < by - 0.45 * ph)
    legs = (np.abs(X - cx) <= pw / 2) & (Y >= by - 0.45 * ph)
    if pw >= 3:
        legs &= np.abs(X - cx) >= pw * 0.12
    _paint(img, lab, sl, head, _colour(rng, (200, 160, 130), 25), PERSON)
    _paint(img, lab, sl, torso, _colour(rng, rng.uniform(30, 230, 3), 10), PERSON)
    _paint(img, lab, sl, legs, _colour(rng, (50, 50, 70), 15), PERSON)


def make_scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (HxWx3 uint8 image, HxW uint8 labels with 255 = void)."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), np.float32)
    lab = np.full((h, w), SKY, np.uint8)
    hz = int(h * rng.uniform(0.3, 0.45))

    # sky: vertical gradient plus soft clouds; ground beyond the sidewalk starts as grass
    top, bottom = _colour(rng, (60, 110, 190), 15), _colour(rng, (190, 210, 235), 12)
    t = np.clip(ys / max(hz, 1), 0, 1)[..., None]
    img[:] = top * (1 - t) + bottom * t
    clouds = np.clip(_smooth(rng, hz, w, 6) - 0.55, 0, 1) * rng.uniform(0, 250) if hz > 0 else 0
    img[:hz] += np.asarray(clouds)[..., None]
    img[hz:] = _colour(rng, (90, 130, 60), 15)
    lab[hz:] = VEGETATION

    # buildings: blocks from their roof down to the bottom (road and sidewalk are drawn over them)
    x = 0
    while x < w:
        bw = int(w * rng.uniform(0.1, 0.3)) + 4
        if rng.random() < 0.15:  # gap: sky and grass show through
            x += bw
            continue
        x1, roof = min(x + bw, w), max(0, int(hz - h * rng.uniform(0.08, 0.4)))
        facade = _FACADES[rng.integers(len(_FACADES))] + rng.normal(0, 12, 3)
        img[roof:, x:x1] = facade
        lab[roof:, x:x1] = BUILDING
        px, py = rng.integers(5, 10, size=2)
        wx, wy = rng.integers(2, px - 1), rng.integers(2, py - 1)
        win = ((xs[:, x:x1] - x - 1) % px < wx) & ((ys[roof + 2:] - roof - 2) % py < wy)
        lit = rng.random() < 0.3
        img[roof + 2:, x:x1][win] = _colour(rng, (230, 210, 140) if lit else (60, 70, 85), 12)
        x = x1

    # road in perspective, sidewalks either side, kerb, dashed centre line
    vx = w * rng.uniform(0.35, 0.65)
    spread = w * rng.uniform(0.45, 0.8)  # road half width at the bottom row
    walk = rng.uniform(1.3, 1.7)  # sidewalk outer edge, relative to the road half width
    d = np.clip((ys - hz) / max(h - hz, 1), 0, None)  # 0 at the horizon, 1 at the bottom
    hw = d * spread
    ax = np.abs(xs - vx)
    below = ys > hz
    road = below & (ax < hw)
    side = below & ~road & (ax < hw * walk + 0.5)
    depth = 1.0 / (d + 0.02)
    img[side] = _colour(rng, (170, 160, 150), 15)
    lab[side] = SIDEWALK
    tiles = side & (((depth * rng.uniform(1.5, 3)) % 1.0) < 0.15)
    img[tiles] *= 0.8
    kerb = side & (ax < hw * 1.04 + 0.6)
    img[kerb] = _colour(rng, (200, 200, 195), 10)
    img[road] = _colour(rng, (85, 85, 90), 12)
    lab[road] = ROAD
    dash = ((depth * rng.uniform(0.6, 1.4)) % 1.0) < 0.5
    mark = road & (ax < np.maximum(0.5, hw * 0.025)) & dash
    img[mark] = _colour(rng, (230, 225, 200), 10)

    def ground_x(by, lo, hi):
        """A column on one side of the road, ``lo..hi`` road half widths from its centre, at row ``by``."""
        return vx + rng.choice((-1, 1)) * ((by - hz) / (h - hz)) * spread * rng.uniform(lo, hi)

    # trees behind everything on the ground: trunk plus a crown with a noisy outline
    noise = _smooth(rng, h, w, 4)
    for _ in range(rng.integers(0, 4)):
        by = hz + (h - hz) * rng.uniform(0.08, 0.6)
        dd, bx = (by - hz) / (h - hz), ground_x(by, walk * 0.9, walk * 1.2)
        th = dd * h * rng.uniform(1.2, 1.9)
        r = th * 0.32
        cy = by - th + r
        box = _box(h, w, cy - 1.5 * r, by + 1, bx - 1.5 * r, bx + 1.5 * r + 1)
        if box is None:
            continue
        sl, Y, X = box
        crown = ((X - bx) / r) ** 2 + ((Y - cy) / (1.15 * r)) ** 2 < 0.7 + 0.8 * noise[sl]
        trunk = (np.abs(X - bx) <= max(0.5, th * 0.03)) & (Y >= cy)
        _paint(img, lab, sl, trunk, _colour(rng, (90, 65, 40), 10), VEGETATION)
        _paint(img, lab, sl, crown, _colour(rng, (60, 120, 40), 18), VEGETATION)

    # thin poles on the sidewalk, some with an arm over the road
    for _ in range(rng.integers(1, 5)):
        by = hz + (h - hz) * rng.uniform(0.05, 0.8)
        dd, bx = (by - hz) / (h - hz), ground_x(by, 1.08, walk * 0.95)
        x0, pw = int(round(bx)), int(rng.integers(1, 3))
        ptop = max(0, int(by - dd * h * rng.uniform(1.3, 2.4)))
        if 0 <= x0 < w:
            colour = _colour(rng, (110, 110, 115), 20)
            img[ptop:int(by) + 1, x0:x0 + pw] = colour
            lab[ptop:int(by) + 1, x0:x0 + pw] = POLE
            if rng.random() < 0.5:
                length = int(dd * w * rng.uniform(0.05, 0.15)) + 2
                a0, a1 = (x0 - length, x0) if bx > vx else (x0, x0 + length)
                img[ptop:ptop + 1, max(0, a0):a1] = colour
                lab[ptop:ptop + 1, max(0, a0):a1] = POLE

    # cars and pedestrians, far to near so nearer ones occlude farther ones (and the poles)
    objects = []
    for _ in range(rng.integers(1, 4)):
        by = hz + (h - hz) * rng.uniform(0.1, 1.0)
        dd = (by - hz) / (h - hz)
        objects.append((by, "car", vx + rng.uniform(-0.7, 0.7) * dd * spread, dd * spread * rng.uniform(0.5, 0.7)))
    if rng.random() < 0.6:  # a row of parked cars along one kerb
        sign, by = rng.choice((-1, 1)), hz + (h - hz) * rng.uniform(0.2, 0.5)
        for _ in range(rng.integers(2, 4)):
            dd = (by - hz) / (h - hz)
            objects.append((by, "car", vx + sign * 0.8 * dd * spread, dd * spread * rng.uniform(0.5, 0.65)))
            by += (h - hz) * rng.uniform(0.08, 0.2)
    for _ in range(rng.integers(0, 5)):
        by = hz + (h - hz) * rng.uniform(0.05, 0.9)
        lo, hi = (1.05, walk * 0.95) if rng.random() < 0.75 else (0.0, 0.9)
        objects.append((by, "person", ground_x(by, lo, hi), (by - hz) / (h - hz) * h * rng.uniform(0.5, 0.7)))
    for by, kind, cx, size in sorted(objects, key=lambda o: o[0]):
        if by < h + 2:
            (_draw_car if kind == "car" else _draw_person)(img, lab, rng, cx, by, size)

    # void: an unlabelled object, and the ego vehicle's bonnet at the bottom
    if rng.random() < 0.3:
        bh, bw = h * rng.uniform(0.05, 0.15), w * rng.uniform(0.05, 0.15)
        y0, x0 = rng.uniform(0, hz), rng.uniform(0, w - bw)
        box = _box(h, w, y0, y0 + bh, x0, x0 + bw)
        if box is not None:
            _paint(img, lab, box[0], np.ones(img[box[0]].shape[:2], bool), _colour(rng, rng.uniform(0, 255, 3), 5), VOID)
    if rng.random() < 0.4:
        hood = h * rng.uniform(0.05, 0.12)
        m = ys >= h - hood + hood * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
        img[m] = _colour(rng, rng.uniform(20, 200, 3), 5)
        lab[m] = VOID

    # textures: per-class grain and smooth shading, global grain and colour cast
    img += (_gauss(rng, (h, w)) * _GRAIN[lab])[..., None]
    img *= (1 + (_smooth(rng, h, w, 8) - 0.5) * _SHADE[lab])[..., None]
    img += _gauss(rng, (h, w, 3)) * rng.uniform(2, 6)
    img *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), lab


_CACHE: OrderedDict = OrderedDict()
_CACHE_BYTES = 64 << 20  # keep at most this much of generated samples per process


def synthetic_sample(seed: int, split: str, index: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of one synthetic sample, from a small cache; the arrays are read-only."""
    key = (seed, split, index, h, w)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    image, labels = make_scene(h, w, rng)
    image.flags.writeable = False
    labels.flags.writeable = False
    _CACHE[key] = (image, labels)
    while len(_CACHE) > 1 and len(_CACHE) * (image.nbytes + labels.nbytes) > _CACHE_BYTES:
        _CACHE.popitem(last=False)
    return image, labels


class Synthetic(SegDataset):
    """``pairs`` stays empty: the samples are made on the fly."""

    NAME = "synthetic"
    LAYOUT = "nothing on disk (splits 'train' and 'val')"
    CLASS_NAMES = CLASSES
    PALETTE = PALETTE
    VOID = (VOID,)

    def resolve_root(self, root):
        return None

    def find_pairs(self):
        counts = {"train": ("synthetic_train", self.cfg.synthetic_train),
                  "val": ("synthetic_val", self.cfg.synthetic_val)}
        if self.split not in counts:
            raise DataError(f"synthetic data has splits 'train' and 'val' only, not {self.split!r}")
        key, self.count = counts[self.split]
        if self.count <= 0:
            raise DataError(f"data.{key}={self.count}: the synthetic {self.split!r} split is empty; set it above 0")
        size = self.cfg.synthetic_size
        if len(size) != 2 or min(size) < 8:
            raise DataError(f"data.synthetic_size={size!r}: expected [H, W], each at least 8")
        self.size = (int(size[0]), int(size[1]))
        return []

    def __len__(self):
        return self.count

    def load(self, i):
        image, raw = synthetic_sample(self.seed, self.split, i, *self.size)
        return image, self.map_labels(raw, f"synthetic {self.split}[{i}]"), f"synthetic_{self.split}_{i:05d}"

    def validate(self, check_labels: bool = True, max_report: int = 10):
        """Nothing on disk to check."""
