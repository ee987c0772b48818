"""Data layer: every loader on tiny fixtures written in its real on-disk layout, the transforms, and the
errors for bad input."""
from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.config import DataConfig
from segdistill.data import DATASETS, build_dataset, dataset_info
from segdistill.data import transforms as T
from segdistill.data.synthetic import POLE, make_scene, synthetic_sample
from segdistill.errors import DataError

H, W = 16, 24
REAL_CAMVID = "/work/shared/data/camvid"


# ----- fixture writers -----
def _rgb(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(values, h=H, w=W):
    """An HxW uint8 map cycling through ``values`` column by column."""
    values = np.asarray(values, np.uint8)
    return np.tile(values[np.arange(w) % len(values)], (h, 1))


def _save(path: Path, array: np.ndarray, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:  # a palette PNG whose indices are the labels
        im = Image.frombytes("P", array.shape[::-1], np.ascontiguousarray(array, np.uint8).tobytes())
        im.putpalette([v for c in palette for v in c])
    else:
        im = Image.fromarray(array)
    im.save(path)


def make_camvid(root: Path, split="train", n=2, values=range(12), lists=True, segnet_prefix=False):
    lines = []
    for i in range(n):
        name = f"0001TP_{i:06d}.png"
        _save(root / split / name, _rgb(i))
        _save(root / f"{split}annot" / name, _labels(values))
        prefix = "/SegNet/CamVid/" if segnet_prefix else ""
        lines.append(f"{prefix}{split}/{name} {prefix}{split}annot/{name}")
    if lists:
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_cityscapes(root: Path, split="train", label_ids=(0, 7, 8, 26, 33, 9), train_ids=None):
    stem = "aachen_000000_000019"
    _save(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", _rgb())
    _save(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", _labels(label_ids))
    if train_ids is not None:
        _save(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelTrainIds.png", _labels(train_ids))
    return root


def make_voc(devkit: Path, split="train", ids=("2007_000032", "2007_000039"), values=(0, 1, 15, 20, 255)):
    voc = devkit / "VOC2012"
    from segdistill.data.voc import voc_palette
    for i, name in enumerate(ids):
        _save(voc / "JPEGImages" / f"{name}.jpg", _rgb(i))
        _save(voc / "SegmentationClass" / f"{name}.png", _labels(values), palette=voc_palette())
    lst = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(ids) + "\n")
    return voc


def make_ade(root: Path, sub="training", values=(0, 1, 2, 150)):
    _save(root / "images" / sub / "ADE_train_00000001.jpg", _rgb())
    _save(root / "annotations" / sub / "ADE_train_00000001.png", _labels(values))
    return root


def make_folder(root: Path, split="train", values=(0, 1, 2, 255), classes="road 128,64,128\ncar\nperson 220 20 60\n"):
    for i in range(2):
        _save(root / "images" / split / f"img{i}.jpg", _rgb(i))
        _save(root / "masks" / split / f"img{i}.png", _labels(values))
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def cfg_for(name, root="", **kw):
    return DataConfig(name=name, root=str(root), **kw)


# ----- loaders -----
def test_camvid_segnet_lists_map_void_to_ignore(tmp_path):
    root = make_camvid(tmp_path / "camvid", segnet_prefix=True)
    ds = build_dataset(cfg_for("camvid", root), "train", train=False)
    assert len(ds) == 2 and ds.num_classes == 11 and len(ds.class_names) == 11 and len(ds.palette) == 11
    assert ds.ignore_index == 255 and ds.split == "train" and ds.class_names[0] == "Sky"
    s = ds[0]
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (H, W) and s["mask"].dtype == torch.int64
    assert s["name"] == "0001TP_000000"
    expected = _labels(range(12)).astype(np.int64)
    expected[expected == 11] = 255
    assert np.array_equal(s["mask"].numpy(), expected)
    mean, std = np.array(ds.cfg.mean), np.array(ds.cfg.std)
    want = (_rgb(0)[0, 0] / 255.0 - mean) / std
    assert np.allclose(s["image"][:, 0, 0].numpy(), want, atol=1e-5)
    ds.validate()


def test_void_maps_to_configured_ignore_index(tmp_path):
    root = make_camvid(tmp_path / "camvid", values=(2, 11))
    ds = build_dataset(cfg_for("camvid", root, ignore_index=250, crop_size=[20, 30]), "train", train=True)
    assert ds.ignore_index == 250
    assert set(ds[0]["mask"].unique().tolist()) == {2, 250}  # crop padding uses it too


def test_camvid_folders_without_list_files_and_root_override(tmp_path):
    root = make_camvid(tmp_path / "camvid", split="val", n=3, lists=False)
    ds = build_dataset(cfg_for("camvid", "/nonexistent"), "val", train=False, root=str(root))
    assert len(ds) == 3 and Path(ds.root) == root


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    ds = build_dataset(cfg_for("cityscapes", make_cityscapes(tmp_path)), "train", train=False)
    assert ds.num_classes == 19 and ds.class_names[0] == "road" and len(ds.palette) == 19
    assert np.array_equal(ds[0]["mask"][0, :6].numpy(), [255, 0, 1, 13, 18, 255])


def test_cityscapes_prefers_label_train_ids(tmp_path):
    root = make_cityscapes(tmp_path, label_ids=(7,), train_ids=(5, 255, 18))
    ds = build_dataset(cfg_for("cityscapes", root), "train", train=False)
    assert ds.pairs[0][1].endswith("_gtFine_labelTrainIds.png")
    assert np.array_equal(ds[0]["mask"][0, :3].numpy(), [5, 255, 18])


def test_voc_palette_indices_from_devkit_parent(tmp_path):
    make_voc(tmp_path / "VOCdevkit")
    ds = build_dataset(cfg_for("voc", tmp_path / "VOCdevkit"), "train", train=False)
    assert ds.num_classes == 21 and ds.palette[1] == [128, 0, 0] and Path(ds.root).name == "VOC2012"
    assert np.array_equal(ds[1]["mask"][0, :5].numpy(), [0, 1, 15, 20, 255])
    assert ds[1]["name"] == "2007_000039"


def test_voc_train_aug_uses_segmentation_class_aug(tmp_path):
    voc = make_voc(tmp_path / "VOCdevkit", split="val")
    _save(voc / "JPEGImages" / "2008_000001.jpg", _rgb(3))
    _save(voc / "SegmentationClassAug" / "2008_000001.png", _labels((0, 7, 255)))  # grey PNG of ids
    _save(voc / "SegmentationClassAug" / "2007_000032.png", _labels((3,)))
    (voc / "train_aug.txt").write_text("2007_000032\n/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n")
    ds = build_dataset(cfg_for("voc", voc), "train_aug", train=False)
    assert [Path(m).parent.name for _, m in ds.pairs] == ["SegmentationClassAug"] * 2
    assert ds[0]["mask"].unique().tolist() == [3]
    assert np.array_equal(ds[1]["mask"][0, :3].numpy(), [0, 7, 255])


def test_ade20k_zero_ignored_and_shifted(tmp_path):
    ds = build_dataset(cfg_for("ade20k", make_ade(tmp_path / "ADEChallengeData2016")), "train", train=False)
    assert ds.num_classes == 150 and len(ds.palette) == 150 and ds.class_names[:3] == ["wall", "building", "sky"]
    assert np.array_equal(ds[0]["mask"][0, :4].numpy(), [255, 0, 1, 149])


def test_folder_dataset_classes_and_ignore(tmp_path):
    root = make_folder(tmp_path / "mydata")
    ds = build_dataset(cfg_for("folder", root), "train", train=False)
    assert ds.class_names == ["road", "car", "person"] and ds.num_classes == 3
    assert ds.palette[0] == [128, 64, 128] and ds.palette[2] == [220, 20, 60]
    assert np.array_equal(ds[0]["mask"][0, :4].numpy(), [0, 1, 2, 255])
    assert dataset_info("folder", root=str(root))["class_names"] == ds.class_names


def test_dataset_info_without_files():
    assert set(DATASETS) == {"synthetic", "camvid", "cityscapes", "voc", "ade20k", "folder"}
    for name, k in [("camvid", 11), ("cityscapes", 19), ("voc", 21), ("ade20k", 150), ("synthetic", 8)]:
        info = dataset_info(name)
        assert info["num_classes"] == k == len(info["class_names"]) == len(info["palette"])
    with pytest.raises(DataError):
        dataset_info("folder")


# ----- synthetic -----
def test_synthetic_deterministic_and_varied():
    a_img, a_lab = synthetic_sample(0, "train", 3, 96, 128)
    b_img, b_lab = make_scene(96, 128, np.random.default_rng([0, zlib.crc32(b"train"), 3]))  # not cached
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, _ = synthetic_sample(1, "train", 3, 96, 128)
    d_img, _ = synthetic_sample(0, "val", 3, 96, 128)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)

    ds = build_dataset(DataConfig(synthetic_train=12), "train", train=False)
    assert len(ds) == 12 and ds.num_classes == 8
    masks = [ds[i]["mask"].numpy() for i in range(len(ds))]
    present = set(np.unique(np.stack(masks)).tolist())
    assert present <= set(range(8)) | {255} and len(present - {255}) == 8
    assert any((m == 255).any() for m in masks)
    pole = np.stack(masks) == POLE
    thin_starts = pole[..., 1:-2] & ~pole[..., :-3] & ~pole[..., 3:]  # runs of 1-2 px across
    assert thin_starts.sum() > 20
    assert ds[0]["image"].shape == (3, 96, 128)


def test_synthetic_bad_split_and_count():
    with pytest.raises(DataError, match="test"):
        build_dataset(DataConfig(), "test", train=False)
    with pytest.raises(DataError, match="synthetic_val"):
        build_dataset(DataConfig(synthetic_val=0), "val", train=False)


# ----- transforms -----
def test_crop_pads_with_ignore():
    img, mask = _rgb(h=4, w=5), np.full((4, 5), 3, np.uint8)
    out_img, out_mask = T.RandomCrop((8, 8), ignore_index=255, pad_color=(1, 2, 3))(img, mask, np.random.default_rng(0))
    assert out_img.shape == (8, 8, 3) and out_mask.shape == (8, 8)
    assert (out_mask == 3).sum() == 20 and (out_mask == 255).sum() == 44
    assert (out_img[out_mask == 255] == [1, 2, 3]).all()


def test_flip_flips_both():
    img, mask = _rgb(), _labels(range(5))
    out_img, out_mask = T.RandomFlip(p=1.0)(img, mask, np.random.default_rng(0))
    assert np.array_equal(out_img, img[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])


def test_resize_nearest_keeps_label_values(tmp_path):
    root = make_camvid(tmp_path / "camvid", values=(0, 3, 11, 8))
    ds = build_dataset(cfg_for("camvid", root, resize=[180, 240]), "train", train=False)
    s = ds[0]
    assert s["image"].shape == (3, 180, 240) and s["mask"].shape == (180, 240)
    assert set(s["mask"].unique().tolist()) == {0, 3, 8, 255}


def test_jitter_changes_image_only_and_is_off_at_zero():
    img, mask = _rgb(), _labels(range(3))
    rng = np.random.default_rng(0)
    assert T.ColorJitter(0.0)(img, mask, rng)[0] is img
    out_img, out_mask = T.ColorJitter(0.4)(img, mask, rng)
    assert out_img.dtype == np.uint8 and not np.array_equal(out_img, img) and out_mask is mask


def test_build_transforms_order():
    cfg = DataConfig(resize=[180, 240], crop_size=[64, 64], scale_range=[0.5, 2.0], jitter=0.2)
    names = [type(t).__name__ for t in T.build_transforms(cfg, train=True).transforms]
    assert names == ["Resize", "RandomScale", "RandomCrop", "RandomFlip", "ColorJitter", "Normalize"]
    assert [type(t).__name__ for t in T.build_transforms(cfg, train=False).transforms] == ["Resize", "Normalize"]


def test_augmentation_is_a_function_of_seed_epoch_index():
    cfg = DataConfig(synthetic_train=6, crop_size=[48, 64], scale_range=[0.5, 1.5], jitter=0.3)
    ds1, ds2 = build_dataset(cfg, "train", train=True), build_dataset(cfg, "train", train=True)
    ds1.set_epoch(3)
    ds2.set_epoch(3)
    _ = ds2[4], ds2[1]  # other samples drawn first (as in another worker) change nothing
    a, b = ds1[5], ds2[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (3, 48, 64)
    ds2.set_epoch(4)
    assert not torch.equal(a["image"], ds2[5]["image"])
    batch = next(iter(torch.utils.data.DataLoader(ds1, batch_size=3)))
    assert batch["image"].shape == (3, 3, 48, 64) and batch["mask"].dtype == torch.int64 and len(batch["name"]) == 3


# ----- bad input: DataError naming the file -----
def test_missing_root(tmp_path):
    for name in ("camvid", "cityscapes", "voc", "ade20k", "folder"):
        with pytest.raises(DataError, match="nowhere"):
            build_dataset(cfg_for(name, tmp_path / "nowhere"), "train", train=False)
    with pytest.raises(DataError, match="data.root"):
        build_dataset(cfg_for("camvid", ""), "train", train=False)


def test_missing_list_file_or_split_folder(tmp_path):
    root = make_camvid(tmp_path / "camvid", split="train")
    with pytest.raises(DataError, match=str(root / "val.txt")):
        build_dataset(cfg_for("camvid", root), "val", train=False)
    voc = make_voc(tmp_path / "VOCdevkit")
    with pytest.raises(DataError, match=str(voc / "ImageSets" / "Segmentation" / "val.txt")):
        build_dataset(cfg_for("voc", voc), "val", train=False)
    city = make_cityscapes(tmp_path / "city")
    with pytest.raises(DataError, match=str(city / "leftImg8bit" / "val")):
        build_dataset(cfg_for("cityscapes", city), "val", train=False)
    with pytest.raises(DataError, match="classes.txt"):
        build_dataset(cfg_for("folder", make_folder(tmp_path / "f", classes=None)), "train", train=False)


def test_empty_split(tmp_path):
    root = tmp_path / "camvid"
    root.mkdir()
    (root / "train.txt").write_text("\n# no pairs yet\n")
    with pytest.raises(DataError) as e:
        build_dataset(cfg_for("camvid", root), "train", train=False)
    msg = str(e.value)  # names the list file that was read, and what to do
    assert f"its list file {root / 'train.txt'} has no sample lines" in msg
    assert "'IMAGE_PATH LABEL_PATH' pair" in msg and "delete it to pair the images of root/train/ with root/trainannot/" in msg
    assert "data.train_split" in msg
    voc = make_voc(tmp_path / "VOCdevkit")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("   \n")
    with pytest.raises(DataError, match=re.escape(f"its list file {voc / 'ImageSets' / 'Segmentation' / 'val.txt'} "
                                                  "has no sample lines") + ".*one image id"):
        build_dataset(cfg_for("voc", voc), "val", train=False)
    folder = make_folder(tmp_path / "f")
    (folder / "images" / "val").mkdir(parents=True)
    (folder / "masks" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{folder}.*empty"):
        build_dataset(cfg_for("folder", folder), "val", train=False)


def test_image_without_mask(tmp_path):
    root = make_camvid(tmp_path / "camvid", lists=False)
    _save(root / "train" / "extra.png", _rgb())
    with pytest.raises(DataError, match=str(root / "train" / "extra.png")):
        build_dataset(cfg_for("camvid", root), "train", train=False)


def _broken(tmp_path, problem):
    """A CamVid fixture whose second pair has ``problem``; returns (dataset, offending file)."""
    root = make_camvid(tmp_path / "camvid")
    image, mask = root / "train" / "0001TP_000001.png", root / "trainannot" / "0001TP_000001.png"
    if problem == "corrupt image":
        image.write_bytes(b"this is not a png" * 10)
        bad = image
    elif problem == "size mismatch":
        _save(mask, _labels(range(3), w=W - 4))
        bad = mask
    elif problem == "label out of range":
        _save(mask, _labels((0, 3, 12, 200)))
        bad = mask
    elif problem == "colour mask":
        _save(mask, _rgb())
        bad = mask
    elif problem == "missing file":
        os.remove(mask)
        bad = mask
    return build_dataset(cfg_for("camvid", root), "train", train=False), str(bad)


@pytest.mark.parametrize("problem", ["corrupt image", "size mismatch", "label out of range", "colour mask",
                                     "missing file"])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, problem):
    ds, bad = _broken(tmp_path, problem)
    ds[0]  # the good pair still loads
    with pytest.raises(DataError) as e:
        ds[1]
    assert bad in str(e.value)
    with pytest.raises(DataError) as e:
        ds.validate()
    assert bad in str(e.value) and "1 of 2" in str(e.value)
    if problem == "label out of range":
        assert "12, 200" in str(e.value)
        ds.validate(check_labels=False)  # sizes and readability are fine


def test_config_mistakes(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset(cfg_for("kitti"), "train", train=False)
    with pytest.raises(DataError, match="num_classes"):
        build_dataset(DataConfig(num_classes=19), "train", train=False)


@pytest.mark.skipif(not os.path.isdir(REAL_CAMVID), reason="real CamVid not available")
def test_real_camvid_val():
    ds = build_dataset(DataConfig(name="camvid", root=REAL_CAMVID, resize=[180, 240]), "val", train=False)
    assert len(ds) == 101
    s = ds[0]
    assert s["image"].shape == (3, 180, 240) and s["mask"].max() == 255 and s["mask"].min() >= 0
    ds.validate(check_labels=False)
