"""``searched``: the discrete network of a genotype of the chain or lgcnet space (``segdistill/search/genotype.py``).

``build_model("searched", K, genotype=PATH_OR_MAPPING)`` or ``build_model("searched:PATH", K)``. The network is
made of the same library blocks as the supernet (``segdistill/search/space_chain.py``): the fixed stem, per stage
the strided op and the kept layers (inputs summed by ``add`` blocks), the same fixed head; logits at stride 8 and
the features ``stem, stage1 .. stage4, pre_logits``. ``model.arch_spec = {"genotype": <mapping>}`` holds the
genotype itself, so a checkpoint rebuilds the model without the file. Without a genotype the builder uses
:data:`~segdistill.search.genotype.DEFAULT_GENOTYPE` (a hand-written reference network). The genotype fixes every
width: ``width_mult`` must be 1, ``output_stride`` None or 32, no pretrained weights; ``aux=True`` adds an FCN head
on ``stage3`` (training mode only).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..search import SPACES
from ..search.genotype import as_genotype, genotype_netspec, genotype_space, stage_plan
from ..search.space_chain import STAGE_NAMES, ChainHead, build_op, feature_layout
from ..search.space_lgcnet import LgcNet
from .heads import FCNHead
from .layers import init_weights
from .output import SegOutput
from .registry import register_model
from .zoo import check_options, pop_pretrained


class PlanStage(nn.Module):
    """Runs one stage's blocks (:func:`~segdistill.search.genotype.stage_plan`) and returns its output block's."""

    def __init__(self, blocks, out: int):
        super().__init__()
        self.block_keys = [k for k, _ in blocks]
        self.blocks = nn.ModuleList(build_op(k) for k in self.block_keys)
        self.inputs = [tuple(ins) for _, ins in blocks]
        self.out = out

    def forward(self, x):
        outs = {-1: x}
        for i, (block, ins) in enumerate(zip(self.blocks, self.inputs)):
            outs[i] = block(*[outs[j] for j in ins])
        return outs[self.out]


class SearchedNet(nn.Module):
    """The derived network of a genotype; forward returns ``SegOutput(logits, features, aux_logits)``."""

    def __init__(self, genotype: dict, num_classes: int, aux: bool = False):
        super().__init__()
        space = genotype_space(genotype, num_classes=num_classes)
        self.num_classes = num_classes
        self.stem = nn.ModuleList(build_op(k) for k in space.stem_keys())
        widths = [st["width"] for st in genotype["stages"]]
        stages, cin = [], space.stem_widths[1]
        for s, st in enumerate(genotype["stages"]):
            stages.append(PlanStage(*stage_plan(space, s, st, cin)))
            cin = st["width"]
        self.stages = nn.ModuleList(stages)
        self.head = ChainHead(space.head_keys(widths[0], widths[2]))
        self.feature_channels, self.feature_strides = feature_layout(space.stem_widths, widths, space.head_channels)
        self.logits_stride, self.output_stride = 8, 32
        self.aux_head = FCNHead(widths[1], num_classes, in_key="stage3") if aux else None
        self.apply(init_weights)
        self.train()

    def latency_netspec(self, input_shape):
        """The network as latency-library blocks at ``input_shape`` (the latency package's decomposition protocol)."""
        return genotype_netspec(self.arch_spec["genotype"], tuple(input_shape), self.num_classes)

    def forward(self, x: torch.Tensor) -> SegOutput:
        feats = {"stem": self.stem[0](x)}
        feats["stage1"] = x = self.stem[1](feats["stem"])
        for name, stage in zip(STAGE_NAMES, self.stages):
            feats[name] = x = stage(x)
        logits, feats["pre_logits"] = self.head(feats["stage2"], feats["stage4"])
        aux = self.aux_head(feats)[0] if self.aux_head is not None and self.training else None
        return SegOutput(logits=logits, features=feats, aux_logits=aux)


#: The derived network's class per genotype ``space``.
NETWORKS = {"chain": SearchedNet, "lgcnet": LgcNet}


@register_model("searched")
def searched(num_classes, width_mult=1.0, output_stride=None, aux=False, pretrained=None, genotype=None, **kw):
    """The network of a chain- or lgcnet-space genotype (a JSON path or a loaded mapping; None: the default genotype)."""
    pretrained = pop_pretrained(pretrained, kw)
    check_options("searched", kw, allowed=("genotype",))
    if width_mult != 1.0:
        raise ConfigError(f"searched: the genotype fixes every width; width_mult must be 1.0, not {width_mult:g}")
    if output_stride not in (None, 32):
        raise ConfigError(f"searched: the chain space has output stride 32 (logits at 8), not {output_stride}")
    if pretrained:
        raise ConfigError(f"searched: no pretrained backbone fits a searched network ({pretrained}); "
                          "set model.pretrained=null")
    g = as_genotype(genotype)
    model = NETWORKS[g["space"]](g, num_classes, aux=aux)
    model.arch_spec = {"genotype": g}
    return model


@register_model("chain_supernet", listed=False)
def chain_supernet(num_classes, width_mult=1.0, output_stride=None, aux=False, pretrained=None, **space_options):
    """The supernet of the chain search space (``segdistill/search/space_chain.py``) from its options (``input``,
    ``layers``, ``width_ratios``, ``base_widths``, ``stem_widths``, ``head_channels``): what a search run trains,
    so its ``best.pt`` / ``last.pt`` rebuild it, architecture weights included (``arch_spec``: the options).
    Unlisted: it is not a deployable model (derive a genotype from it: ``searched:genotype.json``)."""
    from ..search.space_chain import build_supernet

    pretrained = pop_pretrained(pretrained, space_options)
    check_options("chain_supernet", space_options,
              allowed=("input", "layers", "width_ratios", "base_widths", "stem_widths", "head_channels"))
    if width_mult != 1.0 or output_stride not in (None, 32) or aux or pretrained:
        raise ConfigError("chain_supernet: the search space fixes widths and strides; width_mult must be 1, "
                          "output_stride null or 32, aux false and no pretrained weights")
    model = build_supernet(num_classes, **{"input_shape" if k == "input" else k: v for k, v in space_options.items()})
    sp = model.space
    model.arch_spec = {"input": list(sp.input_shape), "layers": sp.layers, "width_ratios": list(sp.width_ratios),
                       "base_widths": list(sp.base_widths), "stem_widths": list(sp.stem_widths),
                       "head_channels": sp.head_channels}
    return model


@register_model("lgcnet_supernet", listed=False)
def lgcnet_supernet(num_classes, width_mult=1.0, output_stride=None, aux=False, pretrained=None, **space_options):
    """The supernet of the lgcnet search space (``segdistill/search/space_lgcnet.py``) from its options (``input``,
    ``nodes``, ``base_widths``, ``stem_widths``, ``head_channels``, ``fusion``, ``share_cells``, ``ggm_gamma``), so
    search checkpoints rebuild it (GGM weights included). Unlisted, like ``chain_supernet``."""
    from ..search.space_lgcnet import build_supernet

    pretrained = pop_pretrained(pretrained, space_options)
    check_options("lgcnet_supernet", space_options, allowed=SPACES["lgcnet"]["options"])
    if width_mult != 1.0 or output_stride not in (None, 32) or aux or pretrained:
        raise ConfigError("lgcnet_supernet: the search space fixes widths and strides; width_mult must be 1, "
                          "output_stride null or 32, aux false and no pretrained weights")
    return build_supernet(num_classes, **{"input_shape" if k == "input" else k: v for k, v in space_options.items()})
