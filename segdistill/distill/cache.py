"""Offline teacher-output cache: run the teacher once per training image, replay the augmentation on its maps.

Online distillation runs the teacher on every augmented batch. Offline, :meth:`TeacherCache.build_or_load`
runs it once on each *base image* of the training split (the image after the deterministic ``data.resize``,
before any random transform; ``SegDataset.base_item``) and keeps the logits as float16 at the logits'
own resolution in a memory-mapped file. During training :meth:`TeacherCache.lookup` reads the rows of a
batch and applies the batch's geometric augmentation (random scale, crop with padding, flip; the ``geom``
entry of each dataset item) to them with one ``grid_sample``. Distillation then costs about what training
the student alone costs (plus a small read and resample).

What is and is not the same as online distillation
    With the cache the teacher sees the base image and its maps are transformed afterwards; online it sees
    the augmented image. For a CNN these are close but not identical: scaling is not an equivariance of a
    CNN (a car at 1.5x looks different to it), crops change what the border pixels see, and photometric
    jitter (``data.jitter``) is not applied to the teacher's input at all. What holds exactly (and what the
    tests check) is: (a) ``lookup`` equals :func:`replay_geometry` applied to the online teacher's logits of
    the base images, within float16 tolerance; (b) for a teacher that commutes with the augmentation (e.g.
    a 1x1 convolution without bias at stride 1), ``lookup`` matches the online teacher run on the actual
    augmented batch up to image interpolation (PIL rounds to uint8, and antialiases when downscaling).

Files
    ``cache_dir/<key[:16]>/logits.f16``: raw float16 ``numpy.memmap`` of shape (N, K, h, w), row ``i`` the
    teacher's logits of base image ``i``; ``meta.json``: format version, full key, shape, dtype, base size,
    teacher and data description, creation date and ``complete: true``. A build writes into a temporary
    folder ``cache_dir/.<key[:16]>.building-*`` and renames it at the end, so an interrupted build is never
    read (a build killed with SIGKILL may leave that temporary folder behind; it is safe to delete).

Invalidation
    :func:`cache_key` hashes the teacher (class, ``repr`` with every layer's stride/dilation, all state-dict
    tensors), the data (dataset, split, size, every image/mask file's path, size and mtime, or the synthetic
    dataset's config), ``data.resize``, ``mean``/``std`` and the base size that fixes the logits' size.
    A change of any of them gives a new key, hence a new folder and a rebuild; the old folders are left
    where they are (delete ``cache_dir`` entries you no longer need).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.checkpoint import state_fingerprint
from ..errors import DataError

__all__ = ["TeacherCache", "cache_key", "replay_geometry", "FORMAT", "VERSION"]

log = logging.getLogger(__name__)

FORMAT = "segdistill-teacher-cache"
VERSION = 1
LOGITS_FILE = "logits.f16"
META_FILE = "meta.json"
GEOM_SIZE = 9  # base_h, base_w, scaled_h, scaled_w, y0, x0, flip, out_h, out_w
# DataConfig fields that do not change the base images (augmentation and loading only)
_NOT_BASE = ("crop_size", "scale_range", "flip", "jitter", "batch_size", "workers", "train_split", "val_split")


# ----------------------------------------------------------------------------------------------- geometry
def replay_geometry(base_maps: torch.Tensor, geom: torch.Tensor, out_size, fill: float = 0.0) -> torch.Tensor:
    """Apply each sample's geometric augmentation to maps computed on its base image.

    ``base_maps`` (B, K, h, w) cover the whole base image (any resolution, e.g. the teacher's logits at
    1/8); ``geom`` (B, 9) is the ``geom`` entry of the dataset items, ``[base_h, base_w, scaled_h,
    scaled_w, y0, x0, flip, out_h, out_w]``; ``out_size`` = (oh, ow) is the size of the result, a grid
    covering the final (out_h, out_w) crop (e.g. the size of the teacher's logits for that crop).
    Returns (B, K, oh, ow), float32 (float64 for float64 maps).

    Coordinates are continuous with pixel ``k`` spanning [k, k+1) (half-pixel centres), as in PIL and
    ``F.interpolate(align_corners=False)``. Output pixel (i, j) is mapped back step by step:

    * crop coordinates: ``yc = (i + 0.5) * out_h / oh``, ``xc = (j + 0.5) * out_w / ow``;
    * undo the flip (it came after the crop): ``xc <- out_w - xc`` when ``flip``;
    * scaled (and bottom/right padded) image: ``ys = yc + y0``, ``xs = xc + x0``; when ``ys >= scaled_h``
      or ``xs >= scaled_w`` the pixel lies in the crop's padding and gets ``fill``;
    * base image: ``yb = ys * base_h / scaled_h`` (a resize scales continuous coordinates);
    * base map of size (h, w): ``ym = yb * h / base_h``, and ``grid_sample``'s normalised coordinate
      (``align_corners=False``) is ``2 * ym / h - 1 = 2 * ys / scaled_h - 1``: the base and map sizes
      cancel, so the map may have any resolution as long as it covers the whole base image.

    The maps are sampled bilinearly with border clamping (PIL's bilinear resize clamps at the border too).
    """
    if base_maps.dim() != 4:
        raise ValueError(f"base_maps must be (B, K, h, w), got shape {tuple(base_maps.shape)}")
    geom = torch.as_tensor(geom)
    if geom.dim() != 2 or geom.shape[1] != GEOM_SIZE or geom.shape[0] != base_maps.shape[0]:
        raise ValueError(f"geom must be (B, {GEOM_SIZE}) with B = {base_maps.shape[0]}, got {tuple(geom.shape)}")
    if not torch.isfinite(geom).all():
        raise DataError("the batch's geometry record (geom) is NaN: the dataset's transform does not record its "
                        "geometry (a custom transform?); the teacher cache needs the standard transforms "
                        "(resize -> random scale -> crop -> flip)")
    oh, ow = int(out_size[0]), int(out_size[1])
    maps = base_maps if base_maps.dtype == torch.float64 else base_maps.float()
    g = geom.to(device=maps.device, dtype=torch.float64)
    scaled_h, scaled_w, y0, x0, flip, out_h, out_w = (g[:, k:k + 1] for k in range(2, 9))
    i = torch.arange(oh, device=maps.device, dtype=torch.float64)[None] + 0.5  # (1, oh)
    j = torch.arange(ow, device=maps.device, dtype=torch.float64)[None] + 0.5
    yc = i * (out_h / oh)  # (B, oh)
    xc = j * (out_w / ow)  # (B, ow)
    xc = torch.where(flip > 0.5, out_w - xc, xc)
    ys, xs = yc + y0, xc + x0
    gy = 2.0 * ys / scaled_h - 1.0
    gx = 2.0 * xs / scaled_w - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, oh, ow, 2): (x, y)
    out = F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    inside = (ys < scaled_h)[:, :, None] & (xs < scaled_w)[:, None, :]  # (B, oh, ow)
    if not bool(inside.all()):
        out = out.masked_fill(~inside[:, None], float(fill))
    return out


# ----------------------------------------------------------------------------------------------- keys
def _cfg_dict(cfg) -> dict:
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(vars(cfg))


def data_description(dataset) -> dict:
    """What of the dataset decides its base images (JSON-able), without the per-file list."""
    cfg = _cfg_dict(dataset.cfg)
    desc = {"dataset": type(dataset).__name__, "name": cfg.get("name"), "split": getattr(dataset, "split", None),
            "n": len(dataset), "resize": cfg.get("resize"), "mean": cfg.get("mean"), "std": cfg.get("std")}
    if getattr(dataset, "pairs", None):
        desc["root"] = str(getattr(dataset, "root", ""))
    else:  # made on the fly (synthetic): its config is what defines the images
        desc["config"] = {k: v for k, v in sorted(cfg.items()) if k not in _NOT_BASE}
    return desc


def _file_list(dataset) -> list:
    files = []
    for pair in getattr(dataset, "pairs", None) or []:
        for path in pair:
            try:
                st = os.stat(path)
            except OSError:
                raise DataError(f"{path} not found; the teacher cache hashes every file of the split, check the "
                                "dataset root and its list file") from None
            files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return files


def _teacher_description(teacher: nn.Module) -> dict:
    return {"class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "name": getattr(teacher, "model_name", type(teacher).__name__),
            "num_classes": getattr(teacher, "num_classes", None),
            "params": int(sum(p.numel() for p in teacher.parameters()))}


def cache_key(teacher: nn.Module, dataset, base_size, extra: dict | None = None) -> str:
    """sha256 (hex) over everything the cached logits depend on: the teacher (class, ``repr`` - which shows
    every layer's stride and dilation -, class count, every state-dict tensor's name, dtype, shape and
    bytes), the data (dataset, split, length, every image and mask file's absolute path, size and mtime,
    or for datasets without files such as the synthetic one their config; ``data.resize``, ``mean``,
    ``std``), the base size (H, W) that fixes the logits' size, and ``extra`` (anything else the caller
    wants to tie the cache to, JSON-able)."""
    h = hashlib.sha256()
    header = {"format": FORMAT, "version": VERSION, "teacher": _teacher_description(teacher),
              "teacher_repr": repr(teacher), "base_size": [int(base_size[0]), int(base_size[1])],
              "data": data_description(dataset), "files": _file_list(dataset), "extra": extra or {}}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(state_fingerprint(teacher).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- the cache
def _logits_of(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise TypeError(f"the teacher returned {type(out).__name__}; expected a SegOutput, a dict with 'logits' or a tensor")


class _BaseImages(torch.utils.data.Dataset):
    """The base images of a dataset (so a DataLoader with workers can read them)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset.base_item(i)
        return item["image"], item["index"]


def _need_resize(what: str) -> DataError:
    return DataError(f"the teacher cache needs every image of the split to have one base size, but {what}; "
                     "set data.resize=[H, W] so all images are resized to one size first")


def _damaged(folder: Path, what: str) -> DataError:
    return DataError(f"teacher cache {folder} is damaged or not usable ({what}); delete that folder "
                     f"(rm -rf {folder}) and the next run rebuilds it")


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TeacherCache:
    """Teacher logits of every base image of a split, float16, memory-mapped. Make one with
    :meth:`build_or_load`; read augmented batches with :meth:`lookup`."""

    def __init__(self, folder: str | Path, meta: dict):
        self.folder = Path(folder)
        self.meta = meta
        self.key = meta["key"]
        self.shape = tuple(int(v) for v in meta["shape"])  # (N, K, h, w)
        self.base_size = tuple(int(v) for v in meta["base_size"])  # (H, W) of the base images
        self._logits = None

    # ----- reading -----
    @property
    def logits(self) -> np.memmap:
        """The (N, K, h, w) float16 memmap, opened read-only on first use."""
        if self._logits is None:
            self._logits = np.memmap(self.folder / LOGITS_FILE, dtype=np.float16, mode="r", shape=self.shape)
        return self._logits

    @property
    def num_classes(self) -> int:
        return self.shape[1]

    @property
    def map_size(self) -> tuple[int, int]:
        """(h, w) of the cached logits."""
        return self.shape[2], self.shape[3]

    def __len__(self):
        return self.shape[0]

    def __getstate__(self):  # picklable (DataLoader workers, spawn): the memmap is reopened where needed
        state = dict(self.__dict__)
        state["_logits"] = None
        return state

    def rows(self, indices) -> torch.Tensor:
        """float16 (B, K, h, w) CPU tensor of the cached logits of samples ``indices``."""
        idx = np.asarray(torch.as_tensor(indices).reshape(-1).cpu().numpy(), dtype=np.int64)
        n = len(self)
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise DataError(f"teacher cache {self.folder} holds {n} samples but index {int(bad[0])} was asked for: "
                            "the cache belongs to another split or dataset")
        return torch.from_numpy(np.ascontiguousarray(self.logits[idx]))

    def lookup(self, indices, geom, out_size, device=None) -> torch.Tensor:
        """float32 (B, K, oh, ow) teacher logits of an augmented batch: the cached rows of ``indices`` (the
        batch's ``index``) with the batch's ``geom`` replayed on them (:func:`replay_geometry`, crop padding
        filled with 0). ``out_size`` = (oh, ow) is the size the teacher's logits would have for the augmented
        crop (the caller knows it, e.g. from one teacher run on a dummy crop). ``device``: where the result
        goes (default: ``geom``'s device); the float16 rows travel there before being widened."""
        geom = torch.as_tensor(geom)
        if device is None:
            device = geom.device
        if geom.dim() != 2 or geom.shape[1] != GEOM_SIZE:
            raise ValueError(f"geom must be (B, {GEOM_SIZE}), got shape {tuple(geom.shape)}")
        if not torch.isfinite(geom).all():
            raise DataError("the batch's geometry record (geom) is NaN: the dataset's transform does not record its "
                            "geometry (a custom transform?); the teacher cache needs the standard transforms")
        base = geom[:, :2].cpu()
        want = torch.tensor(self.base_size, dtype=base.dtype)
        if not bool((base == want).all()):
            bad = base[(base != want).any(dim=1)][0].int().tolist()
            raise DataError(f"a sample's base size is {bad[0]}x{bad[1]} but teacher cache {self.folder} was built for "
                            f"{self.base_size[0]}x{self.base_size[1]} (HxW) base images: the cache belongs to another "
                            "data.resize or dataset; rebuild it with TeacherCache.build_or_load on this dataset")
        rows = self.rows(indices)
        if rows.shape[0] != geom.shape[0]:
            raise ValueError(f"{rows.shape[0]} indices but {geom.shape[0]} geometry rows")
        maps = rows.to(device, non_blocking=True).float()
        return replay_geometry(maps, geom.to(device), out_size, fill=0.0)

    # ----- building / opening -----
    @classmethod
    def build_or_load(cls, teacher: nn.Module, dataset, cache_dir, device="cpu", batch_size: int = 8,
                      progress: bool = True, extra: dict | None = None, workers: int = 0) -> "TeacherCache":
        """The cache of ``teacher`` on ``dataset`` (a ``SegDataset``) under ``cache_dir/<key[:16]>/``: opened
        (without running the teacher) when it exists, else built in one pass over the base images
        (``dataset.base_item``) under ``torch.no_grad`` with the teacher in eval mode (its train/eval mode is
        restored afterwards). ``device`` is where the images go; the teacher must already be there.
        ``extra`` is hashed into the key (see :func:`cache_key`); ``workers`` DataLoader workers read images.

        Raises ``DataError`` when the split's base images differ in size (set ``data.resize``) or when the
        folder for this key is damaged (the message names the folder to delete)."""
        n = len(dataset)
        base = tuple(int(v) for v in dataset.base_size(0))
        key = cache_key(teacher, dataset, base, extra)
        cache_dir = Path(cache_dir).expanduser()
        folder = cache_dir / key[:16]
        if folder.exists():
            log.info("teacher cache: using %s", folder)
            return cls.open(folder, key=key, n=n, base_size=base)
        return cls._build(teacher, dataset, folder, key, base, device, batch_size, progress, extra, workers)

    @classmethod
    def open(cls, folder, key: str | None = None, n: int | None = None, base_size=None) -> "TeacherCache":
        """Open an existing cache folder, checking its meta.json (format, key, completeness, shape) and the
        logits file's size against it; a clear ``DataError`` naming the folder when anything is off."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise _damaged(folder, f"{META_FILE} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _damaged(folder, f"{META_FILE} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise _damaged(folder, f"{META_FILE} is not a segdistill teacher-cache record")
        if meta.get("version") != VERSION:
            raise _damaged(folder, f"written by cache format version {meta.get('version')}, this segdistill reads {VERSION}")
        if not meta.get("complete", False):
            raise _damaged(folder, "its build did not complete")
        if key is not None and meta.get("key") != key:
            raise _damaged(folder, "it records another key than its folder name says")
        shape, dtype = meta.get("shape"), meta.get("dtype")
        if (not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape)
                or dtype != "float16" or not isinstance(meta.get("base_size"), list) or len(meta["base_size"]) != 2
                or not isinstance(meta.get("key"), str)):
            raise _damaged(folder, f"{META_FILE} has a bad key, shape, dtype or base_size entry")
        if n is not None and shape[0] != n:
            raise _damaged(folder, f"it holds {shape[0]} samples, the dataset has {n}")
        if base_size is not None and list(base_size) != list(meta["base_size"]):
            raise _damaged(folder, f"built for base size {meta['base_size']}, the dataset's is {list(base_size)}")
        logits = folder / LOGITS_FILE
        want = int(np.prod(shape)) * 2
        have = logits.stat().st_size if logits.is_file() else None
        if have != want:
            what = "is missing" if have is None else f"has {have} bytes instead of {want}"
            raise _damaged(folder, f"{LOGITS_FILE} {what} (shape {shape}, float16)")
        return cls(folder, meta)

    @classmethod
    def _build(cls, teacher, dataset, folder: Path, key, base, device, batch_size, progress, extra, workers):
        n = len(dataset)
        if getattr(dataset, "pairs", None) and not dataset.cfg.resize:  # file headers only: fail before any work
            for i in range(n):
                size = tuple(dataset.base_size(i))
                if size != base:
                    raise _need_resize(f"{dataset.pairs[i][0]} is {size[0]}x{size[1]} and "
                                       f"{dataset.pairs[0][0]} is {base[0]}x{base[1]} (HxW)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
        log.info("teacher cache: building %s (%d images at %dx%d)", folder, n, *base)
        was_training = teacher.training
        loader = torch.utils.data.DataLoader(_BaseImages(dataset), batch_size=max(1, int(batch_size)),
                                             shuffle=False, num_workers=int(workers))
        mm, shape = None, None
        try:
            from tqdm import tqdm

            teacher.eval()
            with torch.no_grad(), tqdm(total=n, desc="teacher cache", unit="img", disable=not progress,
                                       leave=False) as bar:
                for images, index in loader:
                    if tuple(images.shape[-2:]) != base:
                        raise _need_resize(f"image {int(index[0])} is {images.shape[-2]}x{images.shape[-1]} and "
                                           f"image 0 is {base[0]}x{base[1]} (HxW)")
                    logits = _logits_of(teacher(images.to(device, non_blocking=True))).detach()
                    if logits.dim() != 4 or logits.shape[0] != images.shape[0]:
                        raise ValueError(f"teacher logits must be (B, K, h, w), got {tuple(logits.shape)}")
                    half = logits.to(torch.float16).cpu()
                    if not torch.isfinite(half).all():
                        raise DataError(f"the teacher's logits of images {index.tolist()} are NaN or beyond float16's "
                                        "range (|x| > 65504); the teacher cache stores float16, use online distillation "
                                        "for this teacher or check its weights")
                    if mm is None:
                        shape = (n, *half.shape[1:])
                        mm = np.memmap(tmp / LOGITS_FILE, dtype=np.float16, mode="w+", shape=shape)
                    elif tuple(half.shape[1:]) != shape[1:]:
                        raise ValueError(f"teacher logits changed shape from {shape[1:]} to {tuple(half.shape[1:])}")
                    idx = index.numpy()
                    mm[idx] = half.numpy()
                    bar.update(len(idx))
            mm.flush()
            del mm
            mm = None
            _fsync(tmp / LOGITS_FILE)
            meta = {"format": FORMAT, "version": VERSION, "key": key, "file": LOGITS_FILE, "dtype": "float16",
                    "shape": [int(v) for v in shape], "base_size": list(base),
                    "teacher": _teacher_description(teacher), "data": data_description(dataset),
                    "extra": extra or {}, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "complete": True}
            with open(tmp / META_FILE, "w") as f:
                json.dump(meta, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.exists():
                    raise
                log.info("teacher cache: %s was built by another process meanwhile; using it", folder)
                return cls.open(folder, key=key, n=n, base_size=base)
            return cls(folder, meta)
        finally:
            teacher.train(was_training)
            del mm
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
