"""Pascal VOC 2012 segmentation, 21 classes (background + 20), 255 = ignore (object borders).

    root = VOCdevkit/VOC2012 (the VOCdevkit parent is accepted too)
      ImageSets/Segmentation/{train,val,trainval}.txt   one image id a line
      JPEGImages/{id}.jpg
      SegmentationClass/{id}.png        palette PNGs; their palette *indices* are the class ids
      SegmentationClassAug/{id}.png     optional SBD-augmented masks (grey PNGs of class ids)

The split list is ``ImageSets/Segmentation/{split}.txt`` or, e.g. for ``train_aug``, ``root/{split}.txt``.
A list line may also be a DeepLab-style pair ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``.
For a split whose name contains "aug" the masks come from SegmentationClassAug; otherwise from
SegmentationClass, falling back to SegmentationClassAug for ids that only it has.
"""
from __future__ import annotations

from ..errors import DataError
from .base import SegDataset, read_list


def voc_palette(n: int = 256) -> list[list[int]]:
    """The standard VOC colour map (bits of the class id spread over r, g, b)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


class VOC(SegDataset):
    NAME = "voc"
    LAYOUT = ("VOCdevkit/VOC2012 with ImageSets/Segmentation/{split}.txt, JPEGImages/*.jpg and "
              "SegmentationClass/*.png (or SegmentationClassAug/*.png)")
    CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                   "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor")
    PALETTE = tuple(tuple(c) for c in voc_palette(21))
    VOID = (255,)
    LIST_LINE = "image id (JPEGImages/<id>.jpg) or 'IMAGE_PATH MASK_PATH' pair"

    def resolve_root(self, root):
        path = super().resolve_root(root)
        if not (path / "JPEGImages").is_dir():
            for sub in ("VOC2012", "VOCdevkit/VOC2012"):
                if (path / sub / "JPEGImages").is_dir():
                    return path / sub
            raise DataError(f"voc root {path} has no JPEGImages/ folder (nor VOC2012/JPEGImages/); "
                            f"set data.root to VOCdevkit/VOC2012")
        return path

    def find_pairs(self):
        lists = [self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt", self.root / f"{self.split}.txt"]
        list_file = next((p for p in lists if p.is_file()), None)
        if list_file is None:
            raise DataError(f"voc split {self.split!r}: list file {lists[0]} not found (nor {lists[1]})")
        self.list_file = list_file
        mask_dirs = [self.root / "SegmentationClass", self.root / "SegmentationClassAug"]
        if "aug" in self.split.lower():
            mask_dirs.reverse()
        names = [{p.name for p in d.iterdir()} if d.is_dir() else set() for d in mask_dirs]
        pairs = []
        for n, row in enumerate(read_list(list_file), 1):
            if len(row) == 2:  # DeepLab-style "IMAGE_PATH MASK_PATH" relative to root
                pairs.append((str(self.root / row[0].lstrip("/")), str(self.root / row[1].lstrip("/"))))
                continue
            if len(row) != 1:
                raise DataError(f"{list_file} line {n}: expected an image id, got {' '.join(row)!r}")
            image = self.root / "JPEGImages" / f"{row[0]}.jpg"
            for d, have in zip(mask_dirs, names):
                if f"{row[0]}.png" in have:
                    pairs.append((str(image), str(d / f"{row[0]}.png")))
                    break
            else:
                raise DataError(f"voc id {row[0]} ({list_file} line {n}) has no mask: expected "
                                f"{mask_dirs[0] / (row[0] + '.png')}")
        return pairs
