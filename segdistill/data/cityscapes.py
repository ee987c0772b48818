"""Cityscapes (fine annotations), 19 evaluation classes.

    root/
      leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
      gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png   used when present (values 0..18, 255)
      gtFine/{split}/{city}/{stem}_gtFine_labelIds.png        otherwise: labelIds (0..33) -> trainIds

The labelId -> trainId table is the official one from cityscapesscripts ``labels.py``; every label that
is not one of the 19 training classes (unlabeled, ego vehicle, ground, parking, rail track, guard rail,
bridge, tunnel, polegroup, caravan, trailer, ...) becomes ``ignore_index``.
"""
from __future__ import annotations

from ..errors import DataError
from .base import SegDataset

# labelId -> trainId (None = ignored), cityscapesscripts/helpers/labels.py
LABEL_TO_TRAIN = {
    0: None, 1: None, 2: None, 3: None, 4: None, 5: None, 6: None,
    7: 0, 8: 1, 9: None, 10: None, 11: 2, 12: 3, 13: 4, 14: None, 15: None, 16: None,
    17: 5, 18: None, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15,
    29: None, 30: None, 31: 16, 32: 17, 33: 18,
}


class Cityscapes(SegDataset):
    NAME = "cityscapes"
    LAYOUT = ("root/leftImg8bit/{split}/{city}/*_leftImg8bit.png with "
              "root/gtFine/{split}/{city}/*_gtFine_labelTrainIds.png or *_gtFine_labelIds.png")
    CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                   "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                   "motorcycle", "bicycle")
    PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
               (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
               (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))

    def find_pairs(self):
        image_dir = self.root / "leftImg8bit" / self.split
        gt_dir = self.root / "gtFine" / self.split
        for d in (image_dir, gt_dir):
            if not d.is_dir():
                raise DataError(f"cityscapes split {self.split!r}: folder {d} not found; expected {self.LAYOUT}")
        pairs = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            gt_city = gt_dir / city.name
            gt_files = {p.name for p in gt_city.iterdir()} if gt_city.is_dir() else set()
            for img in sorted(city.glob("*_leftImg8bit.png")):
                stem = img.name[: -len("_leftImg8bit.png")]
                for suffix in ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"):
                    if stem + suffix in gt_files:
                        pairs.append((str(img), str(gt_city / (stem + suffix))))
                        break
                else:
                    raise DataError(f"cityscapes image {img} has no label map: expected "
                                    f"{gt_city / (stem + '_gtFine_labelIds.png')} (or *_labelTrainIds.png)")
        return pairs

    def label_lut(self, mask_path):
        key = "train" if str(mask_path).endswith("_labelTrainIds.png") else "label"
        if key not in self._luts:
            if key == "train":
                self._luts[key] = self.make_lut({k: k for k in range(19)}, void=(255,))
            else:
                self._luts[key] = self.make_lut(LABEL_TO_TRAIN)
        return self._luts[key]
