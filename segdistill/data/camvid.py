"""CamVid in the 11-class SegNet layout.

    root/
      train.txt, val.txt, test.txt   one pair a line: "IMAGE_PATH LABEL_PATH", relative to root
      train/  trainannot/            images (480x360 PNG) and 8-bit label maps of class ids
      val/    valannot/
      test/   testannot/

The original SegNet lists hold absolute paths like ``/SegNet/CamVid/train/0001TP_006690.png``; the part
after ``CamVid/`` is taken relative to root. Without a list file the pairs come from ``{split}/`` and
``{split}annot/`` matched by file name. Label ids 0..10 are the classes below, 11 (Unlabelled) is void and
becomes ``ignore_index`` (255 is accepted as void too).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SegDataset, read_list


class CamVid(SegDataset):
    NAME = "camvid"
    LAYOUT = "root/{split}.txt listing 'IMAGE LABEL' pairs, or folders root/{split}/ and root/{split}annot/"
    CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                   "Pedestrian", "Bicyclist")
    # the SegNet CamVid colours (Road_marking dropped, as in the 11-class set)
    PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
               (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
    VOID = (11, 255)
    LIST_LINE = "'IMAGE_PATH LABEL_PATH' pair (relative to root)"
    LIST_ELSE = "delete it to pair the images of root/{split}/ with root/{split}annot/ by name, "

    def _resolve(self, p: str) -> str:
        if Path(p).is_absolute() and Path(p).exists():
            return p
        if "CamVid/" in p:
            p = p.rsplit("CamVid/", 1)[1]
        return str(self.root / p.lstrip("/"))

    def find_pairs(self):
        list_file = self.root / f"{self.split}.txt"
        if list_file.is_file():
            self.list_file = list_file
            pairs = []
            for n, row in enumerate(read_list(list_file), 1):
                if len(row) != 2:
                    raise DataError(f"{list_file} line {n}: expected 'IMAGE_PATH LABEL_PATH', got {' '.join(row)!r}")
                pairs.append((self._resolve(row[0]), self._resolve(row[1])))
            return pairs
        if not (self.root / self.split).is_dir():
            raise DataError(f"camvid split {self.split!r}: neither the list file {list_file} nor the folder "
                            f"{self.root / self.split} exists; expected {self.LAYOUT}")
        return self.pairs_by_stem(self.root / self.split, self.root / f"{self.split}annot")
