"""Offline teacher cache: geometry records in dataset items, replaying the augmentation on cached maps,
agreement with the online teacher, invalidation and damaged caches."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segdistill.config import DataConfig
from segdistill.data import build_dataset
from segdistill.data.base import GEOM_FIELDS
from segdistill.distill.cache import TeacherCache, cache_key, replay_geometry
from segdistill.errors import DataError
from segdistill.models.output import SegOutput

torch.set_num_threads(1)
K = 3


# ----- helpers -----
class Teacher(nn.Module):
    """Counts forward calls. ``kind="linear"``: one 1x1 conv without bias at stride 1, which commutes with
    resizing, cropping and flipping; ``kind="strided"``: a small CNN with logits at 1/4."""

    def __init__(self, kind="linear", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        if kind == "linear":
            self.net = nn.Conv2d(3, K, 1, bias=False)
        else:
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, K, 3, stride=2, padding=1))
        self.num_classes = K
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return SegOutput(logits=self.net(x))


def smooth_image(seed, h, w):
    """Low-frequency RGB image, so image interpolation (PIL uint8, antialiasing) changes little."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [128 + 90 * np.sin(2 * np.pi * (x / w * rng.uniform(0.3, 0.8) + y / h * rng.uniform(0.3, 0.8)
                                            + rng.uniform())) for _ in range(3)]
    return np.clip(np.stack(chans, -1) + 0.5, 0, 255).astype(np.uint8)


def make_folder(root: Path, n=4, size=(30, 40), sizes=None):
    for i in range(n):
        h, w = sizes[i] if sizes else size
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(i, h, w)).save(root / "images" / "train" / f"im{i}.png")
        Image.fromarray((np.arange(w)[None].repeat(h, 0) % K).astype(np.uint8)).save(root / "masks" / "train" / f"im{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def folder_cfg(root, **kw):
    kw.setdefault("resize", [24, 32])
    return DataConfig(name="folder", root=str(root), **kw)


def synth_cfg(**kw):
    kw.setdefault("synthetic_size", [32, 48])
    kw.setdefault("synthetic_train", 6)
    return DataConfig(name="synthetic", **kw)


def first_batch(ds, epoch=0, n=None):
    ds.set_epoch(epoch)
    return next(iter(torch.utils.data.DataLoader(ds, batch_size=n or len(ds), shuffle=False)))


def crop_out_size(teacher, crop):
    with torch.no_grad():
        return tuple(teacher.eval()(torch.zeros(1, 3, *crop)).logits.shape[-2:])


# ----- dataset items carry index and geometry -----
def test_items_have_index_and_geom():
    cfg = synth_cfg(resize=[24, 36], crop_size=[20, 28], scale_range=[0.6, 1.5], flip=True)
    ds = build_dataset(cfg, "train", train=True)
    assert len(GEOM_FIELDS) == 9
    flips, scaled = set(), set()
    for e in range(3):
        ds.set_epoch(e)
        for i in range(len(ds)):
            s = ds[i]
            g = s["geom"]
            assert s["index"] == i and g.dtype == torch.float32 and g.shape == (9,)
            assert g[:2].tolist() == [24, 36] and g[7:].tolist() == [20, 28] == list(s["image"].shape[1:])
            sh, sw, y0, x0 = g[2:6].tolist()
            assert 0 <= y0 <= max(sh, 20) - 20 and 0 <= x0 <= max(sw, 28) - 28
            flips.add(float(g[6]))
            scaled.add((sh, sw))
    assert flips == {0.0, 1.0} and len(scaled) > 3
    val = build_dataset(cfg, "val", train=False)
    v = val[2]
    assert v["index"] == 2 and v["geom"].tolist() == [24, 36, 24, 36, 0, 0, 0, 24, 36]
    b = ds.base_item(1)
    assert b["image"].shape == (3, 24, 36) and b["index"] == 1 and b["geom"].tolist() == v["geom"].tolist()
    assert torch.equal(b["image"], build_dataset(cfg, "train", train=False)[1]["image"])
    batch = first_batch(ds, n=4)
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["geom"].shape == (4, 9)


def test_recording_geometry_keeps_augmentation_identical():
    cfg = synth_cfg(crop_size=[20, 28], scale_range=[0.5, 1.5], jitter=0.3)
    ds = build_dataset(cfg, "train", train=True)
    image, mask, _ = ds.load(3)
    a = ds.transform(image, mask, np.random.default_rng([0, 2, 3]))
    geom = {}
    b = ds.transform(image, mask, np.random.default_rng([0, 2, 3]), geom=geom)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and geom["valid"]


def test_custom_transform_gives_nan_geom_and_lookup_refuses(tmp_path):
    from segdistill.data.synthetic import Synthetic

    def plain(image, mask, rng):
        return torch.zeros(3, *mask.shape), torch.zeros(mask.shape, dtype=torch.int64)

    ds = Synthetic(synth_cfg(), "train", train=True, transform=plain)
    assert torch.isnan(ds[0]["geom"]).all()
    with pytest.raises(DataError, match="geom"):
        replay_geometry(torch.zeros(1, K, 4, 4), ds[0]["geom"][None], (4, 4))


# ----- replay_geometry on its own -----
def test_replay_geometry_identity_crop_flip_and_padding():
    torch.manual_seed(0)
    maps = torch.randn(2, K, 6, 8)
    ident = torch.tensor([[6, 8, 6, 8, 0, 0, 0, 6, 8]] * 2, dtype=torch.float32)
    assert torch.allclose(replay_geometry(maps, ident, (6, 8)), maps, atol=1e-5)
    crop_flip = torch.tensor([[6, 8, 6, 8, 1, 2, 1, 4, 5], [6, 8, 6, 8, 2, 3, 0, 4, 5]], dtype=torch.float32)
    out = replay_geometry(maps, crop_flip, (4, 5))
    assert torch.allclose(out[0], maps[0, :, 1:5, 2:7].flip(-1), atol=1e-5)
    assert torch.allclose(out[1], maps[1, :, 2:6, 3:8], atol=1e-5)
    # a 2x down-sampled map (logits at 1/2) of the same image: same geometry, coarser grid
    half = replay_geometry(maps, ident, (3, 4))
    assert torch.allclose(half, torch.nn.functional.interpolate(maps, size=(3, 4), mode="bilinear"), atol=1e-5)
    # crop reaching past the scaled image: the padding gets ``fill``
    pad = torch.tensor([[6, 8, 6, 8, 3, 5, 0, 4, 4]] * 2, dtype=torch.float32)
    out = replay_geometry(maps, pad, (4, 4), fill=-9.0)
    assert torch.allclose(out[:, :, :3, :3], maps[:, :, 3:6, 5:8], atol=1e-5)
    assert (out[:, :, 3, :] == -9).all() and (out[:, :, :, 3] == -9).all()


# ----- cache vs online teacher -----
def test_lookup_equals_replay_of_online_base_logits(tmp_path):
    """(a): any teacher; logits at 1/4; scale both ways, crop with padding, flip."""
    cfg = synth_cfg(resize=[32, 48], crop_size=[24, 32], scale_range=[0.6, 1.5], flip=True)
    ds = build_dataset(cfg, "train", train=True)
    teacher = Teacher("strided")
    cache = TeacherCache.build_or_load(teacher, ds, tmp_path, batch_size=4, progress=False)
    assert cache.shape == (6, K, 8, 12) and cache.base_size == (32, 48) and teacher.training
    with torch.no_grad():
        teacher.eval()
        base_logits = teacher(torch.stack([ds.base_item(i)["image"] for i in range(len(ds))])).logits
    out_size = crop_out_size(teacher, (24, 32))
    assert out_size == (6, 8)
    for epoch in range(2):
        batch = first_batch(ds, epoch)
        got = cache.lookup(batch["index"], batch["geom"], out_size, "cpu")
        want = replay_geometry(base_logits[batch["index"]], batch["geom"], out_size)
        assert got.dtype == torch.float32 and got.shape == (6, K, 6, 8)
        scale = want.abs().max()
        assert (got - want).abs().max() <= 2e-3 * scale  # float16 storage
    # the order of indices does not matter
    perm = torch.tensor([4, 0, 2])
    got = cache.lookup(batch["index"][perm], batch["geom"][perm], out_size)
    assert torch.allclose(got, replay_geometry(base_logits[perm], batch["geom"][perm], out_size), atol=2e-3 * scale)


@pytest.mark.parametrize("scale_range,tol", [((1.2, 1.7), 0.02), ((0.55, 0.8), 0.05)])
def test_lookup_matches_online_equivariant_teacher(tmp_path, scale_range, tol):
    """(b): a teacher that commutes with the augmentation, run online on the actual augmented batch.
    Up-scaling: only PIL's uint8 rounding and float16 differ. Down-scaling: PIL antialiases (a wider
    filter than bilinear), and crops reach into the padding; looser tolerance."""
    root = make_folder(tmp_path / "data", n=4, size=(30, 40))
    cfg = folder_cfg(root, resize=[24, 32], crop_size=[18, 22], scale_range=list(scale_range), flip=True)
    ds = build_dataset(cfg, "train", train=True)
    teacher = Teacher("linear")
    cache = TeacherCache.build_or_load(teacher, ds, tmp_path / "cache", progress=False)
    out_size = crop_out_size(teacher, (18, 22))
    assert out_size == (18, 22)
    flips, padded = set(), False
    for epoch in range(3):
        batch = first_batch(ds, epoch)
        with torch.no_grad():
            online = teacher(batch["image"]).logits
        got = cache.lookup(batch["index"], batch["geom"], out_size)
        g = batch["geom"]
        flips |= set(g[:, 6].tolist())
        padded |= bool(((g[:, 4] + 18 > g[:, 2]) | (g[:, 5] + 22 > g[:, 3])).any())
        rng = online.abs().max()
        assert (got - online).abs().max() <= tol * rng and (got - online).abs().mean() <= tol / 4 * rng
        # control: a wrong geometry (flip swapped, offset moved) is far off
        wrong = g.clone()
        wrong[:, 6] = 1 - wrong[:, 6]
        assert (cache.lookup(batch["index"], wrong, out_size) - online).abs().mean() > tol * rng
        wrong = g.clone()
        wrong[:, 4] += 2
        assert (cache.lookup(batch["index"], wrong, out_size) - online).abs().mean() > tol / 2 * rng
    assert flips == {0.0, 1.0}
    assert padded == (scale_range[0] < 1)


# ----- invalidation -----
def test_reuse_and_invalidation(tmp_path):
    root = make_folder(tmp_path / "data", n=3)
    cache_dir = tmp_path / "cache"
    teacher = Teacher("linear")
    ds = build_dataset(folder_cfg(root), "train", train=True)
    c1 = TeacherCache.build_or_load(teacher, ds, cache_dir, progress=False)
    built = teacher.calls
    assert built > 0 and c1.folder.parent == cache_dir and c1.folder.name == c1.key[:16]
    meta = json.loads((c1.folder / "meta.json").read_text())
    assert meta["complete"] and meta["shape"] == [3, K, 24, 32] and meta["dtype"] == "float16" and meta["key"] == c1.key
    assert (c1.folder / "logits.f16").stat().st_size == 3 * K * 24 * 32 * 2

    # same teacher and data (new objects): reused, the teacher does not run
    ds2 = build_dataset(folder_cfg(root), "train", train=True)
    c2 = TeacherCache.build_or_load(teacher, ds2, cache_dir, progress=False)
    assert teacher.calls == built and c2.folder == c1.folder
    assert np.array_equal(np.asarray(c2.logits), np.asarray(c1.logits))
    # augmentation settings do not change the base images: still the same cache
    ds3 = build_dataset(folder_cfg(root, crop_size=[16, 16], scale_range=[0.5, 2.0]), "train", train=True)
    assert TeacherCache.build_or_load(teacher, ds3, cache_dir, progress=False).folder == c1.folder
    assert teacher.calls == built

    keys = {c1.key}

    def rebuilt(t, d):
        calls = t.calls
        c = TeacherCache.build_or_load(t, d, cache_dir, progress=False)
        assert t.calls > calls and c.key not in keys and c.folder.is_dir()
        keys.add(c.key)
        return c

    # teacher weights change
    with torch.no_grad():
        teacher.net.weight[0, 0] += 0.01
    rebuilt(teacher, ds)
    # resolution changes
    rebuilt(teacher, build_dataset(folder_cfg(root, resize=[20, 28]), "train", train=True))
    c = rebuilt(teacher, build_dataset(folder_cfg(root, resize=None), "train", train=True))
    assert c.base_size == (30, 40)
    # normalisation changes
    rebuilt(teacher, build_dataset(folder_cfg(root, mean=[0.5, 0.5, 0.5]), "train", train=True))
    # a data file changes (new content and mtime)
    Image.fromarray(smooth_image(99, 30, 40)).save(root / "images" / "train" / "im1.png")
    st = os.stat(root / "images" / "train" / "im1.png")
    os.utime(root / "images" / "train" / "im1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt(teacher, build_dataset(folder_cfg(root), "train", train=True))
    # another synthetic config
    s1 = build_dataset(synth_cfg(), "train", train=True)
    s2 = build_dataset(synth_cfg(seed=1), "train", train=True)
    assert cache_key(teacher, s1, (32, 48), {}) != cache_key(teacher, s2, (32, 48), {})
    assert cache_key(teacher, s1, (32, 48), {}) == cache_key(teacher, build_dataset(synth_cfg(), "train", True), (32, 48), {})
    assert cache_key(teacher, s1, (32, 48), {}) != cache_key(teacher, s1, (32, 48), {"teacher_ckpt": "b.pt"})
    # same weights but another architecture setting (stride) is another teacher
    t2 = Teacher("linear")
    t2.net.stride = (2, 2)
    assert cache_key(Teacher("linear"), s1, (32, 48)) != cache_key(t2, s1, (32, 48))
    assert len(list(cache_dir.iterdir())) == len(keys)  # old folders are kept, nothing else left behind


def test_all_images_need_one_base_size(tmp_path):
    root = make_folder(tmp_path / "data", n=3, sizes=[(30, 40), (30, 40), (20, 40)])
    ds = build_dataset(folder_cfg(root, resize=None), "train", train=True)
    teacher = Teacher("linear")
    with pytest.raises(DataError, match="data.resize"):
        TeacherCache.build_or_load(teacher, ds, tmp_path / "cache", progress=False)
    assert teacher.calls == 0 and not (tmp_path / "cache").exists()
    ok = build_dataset(folder_cfg(root, resize=[24, 32]), "train", train=True)
    assert len(TeacherCache.build_or_load(teacher, ok, tmp_path / "cache", progress=False)) == 3


def test_lookup_rejects_other_base_size_and_bad_index(tmp_path):
    ds = build_dataset(synth_cfg(resize=[16, 24]), "train", train=True)
    cache = TeacherCache.build_or_load(Teacher("linear"), ds, tmp_path, progress=False)
    other = build_dataset(synth_cfg(resize=[20, 24]), "train", train=True)
    b = first_batch(other, n=2)
    with pytest.raises(DataError, match="base size"):
        cache.lookup(b["index"], b["geom"], (20, 24))
    b = first_batch(ds, n=2)
    with pytest.raises(DataError, match="index 6"):
        cache.lookup(torch.tensor([0, 6]), b["geom"], (16, 24))


# ----- interrupted builds and damaged caches -----
def test_interrupted_build_leaves_nothing(tmp_path):
    ds = build_dataset(synth_cfg(), "train", train=True)

    class Failing(Teacher):
        def forward(self, x):
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().forward(x)

    teacher = Failing("linear")
    teacher.train()
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.build_or_load(teacher, ds, tmp_path, batch_size=2, progress=False)
    assert list(tmp_path.iterdir()) == [] and teacher.training
    teacher.calls = 5
    cache = TeacherCache.build_or_load(teacher, ds, tmp_path, batch_size=2, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [cache.folder.name]


@pytest.mark.parametrize("damage", ["truncate", "meta_json", "meta_key", "meta_missing", "incomplete"])
def test_damaged_cache_gives_clear_error(tmp_path, damage):
    ds = build_dataset(synth_cfg(synthetic_train=3), "train", train=True)
    teacher = Teacher("linear")
    folder = TeacherCache.build_or_load(teacher, ds, tmp_path, progress=False).folder
    meta_path, logits = folder / "meta.json", folder / "logits.f16"
    meta = json.loads(meta_path.read_text())
    if damage == "truncate":
        with open(logits, "r+b") as f:
            f.truncate(logits.stat().st_size // 2)
    elif damage == "meta_json":
        meta_path.write_text("{not json")
    elif damage == "meta_key":
        meta_path.write_text(json.dumps({**meta, "key": "0" * 64}))
    elif damage == "meta_missing":
        meta_path.unlink()
    else:
        meta_path.write_text(json.dumps({**meta, "complete": False}))
    calls = teacher.calls
    with pytest.raises(DataError, match="damaged") as e:
        TeacherCache.build_or_load(teacher, ds, tmp_path, progress=False)
    assert str(folder) in str(e.value) and "delete" in str(e.value) and teacher.calls == calls
    # deleting the folder, as the message says, rebuilds it
    import shutil
    shutil.rmtree(folder)
    assert TeacherCache.build_or_load(teacher, ds, tmp_path, progress=False).folder == folder


def test_cache_pickles_without_the_memmap(tmp_path):
    import pickle

    ds = build_dataset(synth_cfg(synthetic_train=2), "train", train=True)
    cache = TeacherCache.build_or_load(Teacher("linear"), ds, tmp_path, progress=False)
    _ = cache.logits
    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(np.asarray(clone.rows([1])), np.asarray(cache.rows([1])))
