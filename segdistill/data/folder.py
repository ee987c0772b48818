"""Any dataset in a plain folder layout.

    root/
      classes.txt              one class a line: "name", "name r,g,b" or "name r g b" (colour optional)
      images/{split}/*.png|jpg  RGB images
      masks/{split}/*.png       single-channel class ids (8- or 16-bit), matched to images by file stem

Mask value k is class k (the k-th line of classes.txt); the value ``data.ignore_index`` (255 by default)
is ignored. Classes without a colour get the VOC colour map.
"""
from __future__ import annotations

import re

from ..errors import DataError
from .base import SegDataset
from .voc import voc_palette

_RGB = re.compile(r"^(\d{1,3}),(\d{1,3}),(\d{1,3})$")


def parse_classes(path) -> tuple[list[str], list[list[int]]]:
    """Names and colours from a classes.txt file (see the module docstring)."""
    names, colours = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        colour = None
        if len(tokens) >= 2 and _RGB.match(tokens[-1]):
            colour, tokens = [int(v) for v in _RGB.match(tokens[-1]).groups()], tokens[:-1]
        elif len(tokens) >= 4 and all(t.isdigit() for t in tokens[-3:]):
            colour, tokens = [int(t) for t in tokens[-3:]], tokens[:-3]
        if colour is not None and max(colour) > 255:
            raise DataError(f"{path} line {n}: colour {colour} must be three values 0..255")
        names.append(" ".join(tokens))
        colours.append(colour)
    if not names:
        raise DataError(f"{path} lists no classes; write one class name a line")
    default = voc_palette(len(names))
    return names, [c if c is not None else default[i] for i, c in enumerate(colours)]


class Folder(SegDataset):
    NAME = "folder"
    LAYOUT = "root/classes.txt, root/images/{split}/* and root/masks/{split}/*.png (same file stems)"

    def load_classes(self):
        path = self.root / "classes.txt"
        if not path.is_file():
            raise DataError(f"{path} not found; the folder dataset needs it: one class name a line "
                            "(optionally followed by its colour r,g,b), in class-id order")
        return parse_classes(path)

    def label_lut(self, mask_path):
        if "default" not in self._luts:
            self._luts["default"] = self.make_lut({k: k for k in range(self.num_classes)}, void=(self.ignore_index,))
        return self._luts["default"]

    def find_pairs(self):
        return self.pairs_by_stem(self.root / "images" / self.split, self.root / "masks" / self.split)
