"""Search spaces as blocks: the candidate ops of each layer, so ``lut build --space`` measures all of them and the
search gets an expected latency (``SearchSpace.expected_latency``).

A space is chain-structured here: fixed stem blocks, then layers (each one op chosen among its candidates, reading
the previous layer's output), then fixed head blocks and the final resize. Register a new one with
``SPACES[name] = builder(input_shape, num_classes, **options) -> SearchSpace`` (options: the space's own, e.g. the
chain space's ``base_widths``, as ``search.*`` sets them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import LatencyError
from .network import NetSpec, Node
from .predictor import LatencyPredictor
from .standalone import BlockKey


@dataclass
class SearchSpace:
    name: str
    input_shape: tuple[int, ...]
    stem: list[BlockKey]
    layers: list[list[BlockKey]]
    head: list[BlockKey]

    def keys(self) -> list[str]:
        return [str(k) for k in self.stem + [op for layer in self.layers for op in layer] + self.head]

    def net(self, choices: Sequence[int]) -> NetSpec:
        """The chain network taking op ``choices[l]`` in layer ``l``."""
        if len(choices) != len(self.layers):
            raise LatencyError(f"{self.name}: {len(choices)} choices for {len(self.layers)} layers")
        keys = self.stem + [layer[c] for layer, c in zip(self.layers, choices)] + self.head
        nodes = [Node(str(k), (i - 1,)) for i, k in enumerate(keys)]
        return NetSpec(f"{self.name}{list(choices)}", self.input_shape, nodes, "space", {"choices": list(choices)})

    def expected_latency(self, predictor: LatencyPredictor, alpha) -> torch.Tensor:
        """Differentiable expected latency (ms) under architecture logits ``alpha`` (one vector per layer)."""
        return predictor.expected([[str(k) for k in layer] for layer in self.layers], alpha,
                                  fixed=[str(k) for k in self.stem + self.head])


def mbv2_chain(input_shape=(1, 3, 180, 240), num_classes: int = 11) -> SearchSpace:
    """MobileNetV2's macro layout (output stride 16, last stage dilated) with 8 candidate ops per layer: MBConv
    k3/k5 x e3/e6, 3x3 depthwise-separable, 3x3 conv, 3x3 zoomed conv, skip (a 1x1 projection where the layer strides
    or widens), plus a 3x3 conv dilated 2 on stride-1 layers. Head: 1x1 classifier and the final resize."""
    _, c, H, W = input_shape
    stem = [BlockKey("conv", c, 32, H, W, 3, 2, act="relu6")]
    h, w = stem[0].out_shape()[1:]
    stem.append(BlockKey("mbconv", 32, 16, h, w, 3, 1, 1, 1, "relu6"))
    cin, layers = 16, []
    for cout, n, s, d in [(24, 2, 2, 1), (32, 3, 2, 1), (64, 4, 2, 1), (96, 3, 1, 1), (160, 3, 1, 2)]:
        for i in range(n):
            st = s if i == 0 else 1
            base = dict(cin=cin, cout=cout, h=h, w=w, stride=st)
            ops = [BlockKey("mbconv", kernel=k, expansion=e, dilation=d, act="relu6", **base)
                   for k in (3, 5) for e in (3, 6)]
            ops += [BlockKey("dwsep", kernel=3, dilation=d, act="relu", **base),
                    BlockKey("conv", kernel=3, dilation=d, act="relu", **base),
                    BlockKey("zoomconv", kernel=3, act="relu", **base), BlockKey("skip", **base)]
            if st == 1:
                ops.append(BlockKey("dilconv", kernel=3, dilation=2 * d, act="relu", **base))
            layers.append(ops)
            cin, (h, w) = cout, ops[0].out_shape()[1:]
    head = [BlockKey("conv", cin, num_classes, h, w, 1, act="none"),
            BlockKey("resize", num_classes, num_classes, h, w, out_h=H, out_w=W)]
    return SearchSpace("mbv2-chain", tuple(input_shape), stem, layers, head)


SPACES: dict[str, Callable[..., SearchSpace]] = {"mbv2-chain": mbv2_chain}


def _chain(input_shape=(1, 3, 180, 240), num_classes: int = 11, **options):
    """The stage-wise fully connected chain space (``segdistill/search/space_chain.py``; imported here lazily: the
    search package imports this one)."""
    from ..search.space_chain import ChainSpace

    return ChainSpace(tuple(input_shape), num_classes, **_tuples(options))


SPACES["chain"] = _chain


def _lgcnet(input_shape=(1, 3, 180, 240), num_classes: int = 11, **options):
    """The LGCNet cell space (``segdistill/search/space_lgcnet.py``)."""
    from ..search.space_lgcnet import LgcSpace

    return LgcSpace(tuple(input_shape), num_classes, **_tuples(options))


SPACES["lgcnet"] = _lgcnet


def _tuples(options: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def build_space(name: str, input_shape=(1, 3, 180, 240), num_classes: int = 11, **options) -> SearchSpace:
    """The space ``name`` at ``input_shape``; ``options`` are its own (e.g. ``base_widths=[96, 192, 320]``), an
    unknown one is a LatencyError naming it."""
    if name not in SPACES:
        raise LatencyError(f"unknown search space {name!r}; known: {', '.join(SPACES)}")
    try:
        return SPACES[name](tuple(input_shape), num_classes, **options)
    except TypeError as e:
        raise LatencyError(f"search space {name!r}: {e} (options given: {', '.join(options) or 'none'})") from None
