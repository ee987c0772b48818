"""Depth-level dynamic MobileNetV2: ``ddnn_{fcn,deeplabv3,deeplabv3plus,lraspp}_mobilenetv2``.

The MobileNetV2 member of the DDNN families (:mod:`segdistill.dynamic.model` holds the shared machinery: named
depths, per-depth BN statistics, ``set_depth``, ``arch_spec`` and the registered builders; this module only says which
blocks a depth runs).

**Depth configuration.** Inverted-residual blocks run in each of MobileNetV2's 7 bottleneck stages, ``[n1, ..., n7]``
with ``1 <= n_i <= N_i``, ``N = [1, 2, 3, 4, 3, 3, 1]`` (the ``n`` column of the t, c, n, s table: Sandler et al.,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, Table 2; torchvision's
``inverted_residual_setting``). Defaults, named by the number of blocks run: ``b7 [1,1,1,1,1,1,1]``,
``b11 [1,1,2,2,2,2,1]``, ``b14 [1,2,2,3,3,2,1]``, ``b17 [1,2,3,4,3,3,1]`` (the full MobileNetV2). The stem conv
(``features.0``) and the last 1x1 conv (``features.18``) always run.

**Which blocks run: the first n_i of stage i**, as for the ResNets. Why: the first block of a stage is the one that
changes resolution and/or width (its depthwise conv is strided, or dilated in place of the stride at output stride
8/16, and its projection changes the channel count), so it has no residual connection and cannot be skipped without
changing every later shape. Every later block of the stage has stride 1 and equal input and output widths, so it is
residual, ``y = x + F(x)``: skipping it is ``F = 0``, ``y = x``, the input passes on with its shape, and any prefix of
the stage's blocks gives the same output shape as the whole stage. Keeping a prefix (rather than any subset) keeps each
kept block's input the output of the block before it in the full net, the mildest change, as stochastic depth and the
DDNN paper drop the last residual blocks. (Shapes alone cannot tell a stage's first block at every width: at
``width_mult=0.25`` the first stage's block maps 8 to 8 channels at stride 1 and is residual, so stages come from the
table, checked against the built network.)

**Keys.** The module layout is the static :class:`~segdistill.models.backbones.mobilenetv2.MobileNetV2`'s, i.e.
torchvision's ``features.N...`` with the classifier dropped: a full-depth DDNN loads a torchvision MobileNetV2 state
dict. A DDNN whose deepest named depth is shallower than MobileNetV2 builds only the blocks it can run and keeps their
torchvision indices (``features.0, 1, 2, 4, ...``), so its keys are a subset of torchvision's, as a ResNet-18's are of a
ResNet-34's.

**Named features** are the static model's: ``stem`` after stage 1 (1/2), ``stage1`` after stage 2 (1/4), ``stage2``
after stage 3 (1/8), ``stage3`` after stage 5 (1/16, or 1/8 at output stride 8), ``stage4`` after the last 1x1 conv;
each taken after the last *active* block of its stage, so every depth gives the same names, sizes and widths (what
EKD's attention term compares).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..models.backbones.mobilenetv2 import InvertedResidual, MobileNetV2
from .model import DynamicBackbone, bns_of, register_family

#: Blocks per bottleneck stage of MobileNetV2 (the table's ``n`` column).
STAGE_REPEATS = (1, 2, 3, 4, 3, 3, 1)
DEFAULT_DEPTHS = {"b7": [1, 1, 1, 1, 1, 1, 1], "b11": [1, 1, 2, 2, 2, 2, 1], "b14": [1, 2, 2, 3, 3, 2, 1],
                  "b17": list(STAGE_REPEATS)}


class DynamicMobileNetV2(DynamicBackbone, MobileNetV2):
    """A MobileNetV2 whose bottleneck stage ``i`` runs its first ``depth[i]`` inverted-residual blocks (torchvision's
    ``features.N`` keys; see the module docstring). ``family`` is always ``mobilenetv2`` (the signature every
    :class:`~segdistill.dynamic.model.DepthFamily` backbone has)."""

    def __init__(self, family: str, depths: dict[str, list[int]], width_mult: float = 1.0, output_stride: int = 32):
        super().__init__(width_mult=width_mult, output_stride=output_stride)
        # feature index of every block, per stage (torchvision's numbering: features.0 is the stem conv)
        starts = [1 + sum(STAGE_REPEATS[:k]) for k in range(len(STAGE_REPEATS))]
        self.stage_blocks = [list(range(s, s + n)) for s, n in zip(starts, STAGE_REPEATS)]
        self.last = len(self.features) - 1
        if self.last != 1 + sum(STAGE_REPEATS):
            raise RuntimeError(f"MobileNetV2 has {len(self.features)} features, not the stem + {sum(STAGE_REPEATS)} "
                               "blocks + last conv that DynamicMobileNetV2 expects")
        for blocks in self.stage_blocks:
            for i in blocks[1:]:
                blk = self.features[i]
                if not (isinstance(blk, InvertedResidual) and blk.use_res_connect):
                    raise RuntimeError(f"features.{i} is not a residual block, so it cannot be skipped")
        # the static model's feature taps (index -> name); a tap on a stage's last block moves with the active depth
        self.taps = {i: tap for i, (_, _, tap) in enumerate(MobileNetV2.units(self)) if tap}
        self.tap_stage = {}
        for i, tap in self.taps.items():
            stage = next((k for k, b in enumerate(self.stage_blocks) if i in b), None)
            if stage is not None and i != self.stage_blocks[stage][-1]:
                raise RuntimeError(f"feature {tap} is tapped inside stage {stage + 1}, not after its last block")
            if stage is not None:
                self.tap_stage[stage] = tap
        deepest = self.deepest_of(depths)
        keep = {0, self.last} | {i for b, n in zip(self.stage_blocks, deepest) for i in b[:n]}
        self.features = nn.Sequential(OrderedDict((str(i), f) for i, f in enumerate(self.features) if i in keep))
        self.init_depths(depths)

    def feature(self, i: int) -> nn.Module:
        """``features.<i>`` by torchvision's index (the Sequential may skip indices; see the module docstring)."""
        return self.features._modules[str(i)]

    def active(self, depth=None) -> list[tuple[int, str | None]]:
        """(feature index, tap after it or None) of every module that ``depth`` (default: the active one) runs."""
        depth = self.depth if depth is None else depth
        run = [(0, None)]
        for k, (blocks, n) in enumerate(zip(self.stage_blocks, depth)):
            run += [(i, self.tap_stage.get(k) if j == n - 1 else None) for j, i in enumerate(blocks[:n])]
        return run + [(self.last, self.taps.get(self.last))]

    def depth_bns(self, depth) -> list[tuple[str, nn.BatchNorm2d]]:
        """(path, BN) of every BN layer that ``depth`` runs."""
        return [bn for i, _ in self.active(depth) for bn in bns_of(f"features.{i}", self.feature(i))]

    def units(self):
        """The active depth's units only: (name, module, feature tap), each tap after its stage's last active block."""
        return [(f"features.{i}", self.feature(i), tap) for i, tap in self.active()]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, tap in self.active():
            x = self.feature(i)(x)
            if tap:
                out[tap] = x
        return out


register_family("mobilenetv2", DynamicMobileNetV2, STAGE_REPEATS, DEFAULT_DEPTHS)
