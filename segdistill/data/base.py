"""``SegDataset``: the base class of every loader.

A loader finds a list of ``(image_path, mask_path)`` pairs in its standard layout (``find_pairs``) and says
how its raw mask values map to training ids (``VOID`` and ``OFFSET``, or ``label_lut``). This class does the
rest: reading with PIL, the label mapping (the dataset's void -> ``cfg.ignore_index``; any other unknown value
is an error), the transforms, and ``validate()``.

``ds[i]`` is ``{"image": float32 (3,H,W) normalised, "mask": int64 (H,W), "name": image file stem,
"index": i, "geom": float32 (9,)}``. ``geom`` (fields ``GEOM_FIELDS``) says how the sample was made from its
*base image* (the image after the deterministic ``data.resize``, before any random transform):
``[base_h, base_w, scaled_h, scaled_w, y0, x0, flip, out_h, out_w]`` = base size, size after the random
scale (= base size if none), crop offset in the scaled image padded at the bottom/right (0, 0 if no crop),
horizontal flip (1.0 or 0.0, applied after the crop) and the final size. Eval items have the identity
geometry; with a custom transform that does not record geometry it is all NaN. ``ds.base_item(i)`` gives
the normalised base image itself (what the offline teacher cache runs the teacher on).
Random augmentation of sample ``i`` in epoch ``e`` uses ``np.random.default_rng([cfg.seed, e, i])``, so it
does not depend on DataLoader workers or on where a run resumed; call ``ds.set_epoch(e)`` every epoch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .transforms import build_transforms

GEOM_FIELDS = ("base_h", "base_w", "scaled_h", "scaled_w", "y0", "x0", "flip", "out_h", "out_w")
_BAD = np.iinfo(np.int32).min  # marks raw values that are neither a class nor the void value
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path) -> np.ndarray:
    """An HxWx3 uint8 RGB array, or DataError naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {path} not found; check the dataset root and its list file") from None
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read image {path} ({e}); the file is damaged or not an image: "
                        "restore it from the original archive or remove it from the split") from None


def read_mask(path) -> np.ndarray:
    """An HxW integer array of raw label values (palette PNGs give their indices), or DataError."""
    try:
        with Image.open(path) as im:
            if im.mode == "1":
                return np.asarray(im).astype(np.uint8)
            if im.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im)
            if im.mode == "RGB":
                rgb = np.asarray(im)
                if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
                    return rgb[..., 0].copy()  # a grey label map that was saved as RGB
            mode = im.mode
    except FileNotFoundError:
        raise DataError(f"mask {path} not found; every image needs its label map") from None
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read mask {path} ({e}); the file is damaged or not an image: "
                        "restore it from the original archive or remove it from the split") from None
    raise DataError(f"mask {path} is a colour ({mode}) image; label maps must be single-channel PNGs of class "
                    "ids (or palette PNGs). Convert the colours to class ids first")


def image_size(path, verify: bool = False) -> tuple[int, int]:
    """(W, H) from the file header only; ``verify`` also checks the file's integrity (no decoding)."""
    try:
        with Image.open(path) as im:
            size = im.size
            if verify:
                im.verify()
            return size
    except FileNotFoundError:
        raise DataError(f"{path} not found; check the dataset root and its list file") from None
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read {path} ({e}); the file is damaged or not an image: "
                        "restore it from the original archive or remove it from the split") from None


def read_list(path: Path) -> list[list[str]]:
    """Whitespace-separated tokens of each non-empty, non-comment line of a split list file."""
    if not path.is_file():
        raise DataError(f"split list {path} not found")
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split())
    return rows


def _allowed(lut: np.ndarray) -> str:
    """The raw values a lookup table accepts, as short text: "0..11" or "0..20, 255"."""
    ok = np.flatnonzero(lut != _BAD).tolist()
    runs, start = [], ok[0]
    for a, b in zip(ok, ok[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}..{a}" if a > start else str(a))
            start = b
    return ", ".join(runs)


def geom_tensor(geom: dict | None) -> torch.Tensor:
    """The (9,) float32 ``geom`` entry of a dataset item from a geometry record of ``transforms.Compose``
    (all NaN when there is none or it is not in the supported order)."""
    if not geom or not geom.get("valid", False):
        return torch.full((len(GEOM_FIELDS),), float("nan"))
    values = [*geom["base"], *geom["scaled"], *geom["offset"], 1.0 if geom["flip"] else 0.0, *geom["out"]]
    return torch.tensor(values, dtype=torch.float32)


def _size_mismatch(image_path, isize, mask_path, msize) -> DataError:
    return DataError(f"mask {mask_path} is {msize[0]}x{msize[1]} but its image {image_path} is "
                     f"{isize[0]}x{isize[1]} (WxH); a mask must have its image's size: re-export it or "
                     "remove the pair from the split")


class SegDataset(Dataset):
    """Base class. Subclasses set ``NAME``, ``CLASS_NAMES``, ``PALETTE`` and ``LAYOUT`` (shown in errors) and
    implement ``find_pairs()``. Raw mask value ``OFFSET + k`` is class ``k``; values in ``VOID`` are ignored."""

    NAME = "base"
    CLASS_NAMES: tuple = ()
    PALETTE: tuple = ()
    LAYOUT = ""
    LIST_LINE = "sample"  # what one line of a split list file holds (for errors) ...
    LIST_ELSE = ""  # ... and where the samples come from without one ("{split}": the split's name)
    VOID: tuple = (255,)
    OFFSET = 0

    def __init__(self, cfg, split: str, train: bool = False, root: str | None = None, transform=None):
        self.cfg = cfg
        self.split = split
        self.train = train
        self.ignore_index = int(cfg.ignore_index)
        self.seed = int(cfg.seed)
        self.epoch = 0
        self.root = self.resolve_root(cfg.root if root is None else root)
        self.class_names, self.palette = self.load_classes()
        self.num_classes = len(self.class_names)
        if cfg.num_classes is not None and cfg.num_classes != self.num_classes:
            raise DataError(f"data.num_classes={cfg.num_classes} but {self.NAME} has {self.num_classes} classes; "
                            "set data.num_classes=null to use the dataset's own count")
        fits_uint8 = 0 <= self.ignore_index <= 255 and self.num_classes <= 256
        self.mask_dtype = np.uint8 if fits_uint8 else np.int32
        self.transform = transform if transform is not None else build_transforms(cfg, train)
        self.base_transform = build_transforms(cfg, train=False)  # data.resize (if set) -> normalise
        self._luts: dict = {}
        self.list_file: Path | None = None  # the split list file find_pairs read, if it read one
        self.pairs: list[tuple[str, str]] = self.find_pairs()
        if len(self) == 0 and self.list_file is not None:
            raise DataError(f"{self.NAME} split {split!r} is empty: its list file {self.list_file} has no sample lines "
                            f"(only blank or # comment lines); write one {self.LIST_LINE} a line into it, "
                            f"{self.LIST_ELSE.format(split=split)}or pick a split whose list has samples "
                            "(data.train_split / data.val_split, eval --split)")
        if len(self) == 0:
            raise DataError(f"{self.NAME} split {split!r} under {self.root} is empty; expected {self.LAYOUT}")

    # ----- hooks for subclasses -----
    def resolve_root(self, root) -> Path:
        """Check the root folder exists; subclasses may step into a standard sub-folder."""
        if not root:
            raise DataError(f"data.root is not set for dataset {self.NAME!r}; set data.root=/path/to/it "
                            f"(expected layout: {self.LAYOUT})")
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset root {path} not found (data.root); expected {self.LAYOUT}")
        return path

    def load_classes(self) -> tuple[list[str], list[list[int]]]:
        return list(self.CLASS_NAMES), [list(c) for c in self.PALETTE]

    def find_pairs(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def label_lut(self, mask_path) -> np.ndarray:
        """Lookup table raw value -> training id (``_BAD`` for values that are not allowed)."""
        key = "default"
        if key not in self._luts:
            self._luts[key] = self.make_lut({self.OFFSET + k: k for k in range(self.num_classes)}, self.VOID)
        return self._luts[key]

    # ----- shared machinery -----
    def make_lut(self, mapping: dict[int, int], void=()) -> np.ndarray:
        """Build a lookup table from ``{raw: class}`` (class 255 or ``None`` = ignore) and void raw values."""
        size = max([256, *[r + 1 for r in mapping], *[v + 1 for v in void]])
        lut = np.full(size, _BAD, np.int32)
        for v in void:
            if v >= 0:
                lut[v] = self.ignore_index
        for raw, cls in mapping.items():
            lut[raw] = self.ignore_index if cls is None else cls
        return lut

    def map_labels(self, raw: np.ndarray, mask_path) -> np.ndarray:
        """Raw mask -> class ids with ``ignore_index``; DataError naming the file for unknown values."""
        lut = self.label_lut(mask_path)
        if raw.size and (int(raw.max()) >= len(lut) or int(raw.min()) < 0):
            raw = raw.astype(np.int64)
            bad_vals = np.unique(raw[(raw < 0) | (raw >= len(lut))])
        else:
            out = lut[raw]
            bad = out == _BAD
            if not bad.any():
                return out.astype(self.mask_dtype)
            bad_vals = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in bad_vals[:10]) + (" ..." if len(bad_vals) > 10 else "")
        raise DataError(f"mask {mask_path} has label values {shown} that are not {self.NAME} classes "
                        f"({_allowed(lut)} allowed); check that data.name={self.NAME!r} is right and the "
                        "mask holds class ids of this dataset, or fix/remove the file")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Image (HxWx3 uint8), mapped mask (HxW) and name of sample ``i``, before transforms."""
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if image.shape[:2] != raw.shape:
            raise _size_mismatch(image_path, image.shape[1::-1], mask_path, raw.shape[::-1])
        return image, self.map_labels(raw, mask_path), Path(image_path).stem

    def pairs_by_stem(self, image_dir: Path, mask_dir: Path) -> list[tuple[str, str]]:
        """Every image in ``image_dir`` with the PNG of the same stem in ``mask_dir``; both folders must exist."""
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise DataError(f"{self.NAME} split {self.split!r}: folder {d} not found; expected {self.LAYOUT}")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
        pairs = []
        for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            if img.stem not in masks:
                raise DataError(f"{self.NAME} image {img} has no mask {mask_dir / (img.stem + '.png')}")
            pairs.append((str(img), str(masks[img.stem])))
        return pairs

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = int(i) % n
        image, mask, name = self.load(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        geom: dict = {}
        if getattr(self.transform, "records_geometry", False):
            image, mask = self.transform(image, mask, rng, geom=geom)
        else:
            image, mask = self.transform(image, mask, rng)
        return {"image": image, "mask": mask, "name": name, "index": i, "geom": geom_tensor(geom)}

    def base_item(self, i: int) -> dict:
        """Sample ``i`` as its normalised *base image*: ``data.resize`` only, no random transform, whatever
        ``train`` is. Same keys as ``ds[i]``; ``geom`` is the identity."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = int(i) % n
        image, mask, name = self.load(i)
        geom: dict = {}
        image, mask = self.base_transform(image, mask, None, geom=geom)
        return {"image": image, "mask": mask, "name": name, "index": i, "geom": geom_tensor(geom)}

    def base_size(self, i: int) -> tuple[int, int]:
        """(H, W) of base image ``i``: ``data.resize`` when set, else read from the image file's header
        (datasets without files, such as the synthetic one, make the image)."""
        if self.cfg.resize:
            return int(self.cfg.resize[0]), int(self.cfg.resize[1])
        if self.pairs:
            w, h = image_size(self.pairs[int(i) % len(self)][0])
            return int(h), int(w)
        return tuple(int(v) for v in self.load(int(i) % len(self))[0].shape[:2])

    def validate(self, check_labels: bool = True, max_report: int = 10):
        """Check every pair before training: both files readable, same size, and (``check_labels``) only
        known label values. Raises one DataError listing the bad files."""
        problems = []
        for image_path, mask_path in self.pairs:
            try:
                isize = image_size(image_path, verify=True)
                raw = read_mask(mask_path) if check_labels else None
                msize = raw.shape[::-1] if check_labels else image_size(mask_path, verify=True)
                if tuple(isize) != tuple(msize):
                    raise _size_mismatch(image_path, isize, mask_path, msize)
                if check_labels:
                    self.map_labels(raw, mask_path)
            except DataError as e:
                problems.append(str(e))
        if problems:
            more = f"\n  ... and {len(problems) - max_report} more" if len(problems) > max_report else ""
            raise DataError(f"{self.NAME} split {self.split!r}: {len(problems)} of {len(self)} samples are bad:\n  "
                            + "\n  ".join(problems[:max_report]) + more)

    def __repr__(self):
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
                f"root={str(self.root)!r})")
