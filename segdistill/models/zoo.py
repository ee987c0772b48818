"""Every registered model. ``build_model(name, num_classes, width_mult=, output_stride=, aux=, pretrained=)``.

Names: ``{fcn,deeplabv3,deeplabv3plus,pspnet}_{resnet18,resnet34,resnet50,resnet101,mobilenetv2}``,
``lraspp_resnet18``, ``lraspp_mobilenetv2``, ``segformer_mitb0|1|2``.

* ``width_mult`` scales backbone and head widths (small students); ``pretrained`` (a local ImageNet backbone state
  dict, e.g. torchvision's or NVlabs' ``mit_b*.pth``) needs ``width_mult=1.0``.
* ``output_stride`` (8, 16 or 32) defaults to 8 for ResNet / MobileNetV2 models. LR-ASPP defaults to 16: its
  high-level branch runs at 1/16 as in the MobileNetV3 paper while its logits follow the 1/8 low-level map.
  SegFormer ignores it (the MiT encoder is not dilated; logits at 1/4).
* ``aux=True`` adds an FCN head on ``stage3`` whose logits come back as ``aux_logits`` in training mode.
* Extra keywords: ``drop_path_rate`` (SegFormer only, default 0.1); ``pretrained_backbone`` is an alias of
  ``pretrained``.
"""
from __future__ import annotations

from ..errors import ConfigError
from .backbones import build_backbone, load_backbone_weights
from .heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead, LRASPPHead, PSPHead, SegFormerHead
from .layers import make_divisible
from .registry import register_model
from .segmentor import Segmentor


def pop_pretrained(pretrained, kw):
    alias = kw.pop("pretrained_backbone", None)
    return pretrained if pretrained is not None else alias


def check_options(name, kw, allowed=()):
    extra = sorted(set(kw) - set(allowed))
    if extra:
        raise ConfigError(
            f"{name}: unknown option(s) {extra}; builders take width_mult, output_stride, aux, pretrained"
            + (f", {', '.join(allowed)}" if allowed else "")
        )


def _backbone(arch, width_mult, output_stride, pretrained, **kw):
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be > 0, got {width_mult}")
    if pretrained and width_mult != 1.0:
        raise ConfigError(
            f"pretrained backbone weights ({pretrained}) only fit width_mult=1.0, not {width_mult:g}; "
            "set model.pretrained=null or width_mult=1.0"
        )
    backbone = build_backbone(arch, width_mult=width_mult, output_stride=output_stride, **kw)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    return backbone


def make_head(kind, backbone, num_classes, width_mult, output_stride):
    ch = backbone.feature_channels
    if kind == "fcn":
        return FCNHead(ch["stage4"], num_classes)
    if kind == "deeplabv3":
        return DeepLabV3Head(ch["stage4"], num_classes, output_stride, width_mult)
    if kind == "deeplabv3plus":
        return DeepLabV3PlusHead(ch["stage4"], ch["stage1"], num_classes, output_stride, width_mult)
    if kind == "pspnet":
        return PSPHead(ch["stage4"], num_classes, width_mult)
    if kind == "lraspp":
        return LRASPPHead(ch["stage2"], ch["stage4"], num_classes, width_mult)
    raise ConfigError(f"unknown head {kind!r}")


def _register_cnn(kind: str, arch: str, default_os: int = 8):
    name = f"{kind}_{arch}"

    def builder(num_classes, width_mult=1.0, output_stride=default_os, aux=False, pretrained=None, **kw):
        pretrained = pop_pretrained(pretrained, kw)
        check_options(name, kw)
        backbone = _backbone(arch, width_mult, output_stride, pretrained)
        head = make_head(kind, backbone, num_classes, width_mult, output_stride)
        return Segmentor(backbone, head, num_classes, aux=aux)

    builder.__name__ = name
    builder.__doc__ = f"{kind} head on {arch} (output stride {default_os} by default)."
    register_model(name)(builder)


def _register_segformer(variant: str, embed_dim: int):
    name = f"segformer_mit{variant}"

    def builder(num_classes, width_mult=1.0, output_stride=8, aux=False, pretrained=None, **kw):
        pretrained = pop_pretrained(pretrained, kw)
        check_options(name, kw, allowed=("drop_path_rate",))
        # output_stride is accepted for a uniform signature and ignored: MiT is always 4..32, logits at 1/4.
        backbone = _backbone(f"mit_{variant}", width_mult, 32, pretrained, drop_path_rate=kw.get("drop_path_rate", 0.1))
        head = SegFormerHead(backbone.feature_channels, num_classes, make_divisible(embed_dim * width_mult))
        return Segmentor(backbone, head, num_classes, aux=aux)

    builder.__name__ = name
    builder.__doc__ = f"SegFormer-{variant.upper()}: MiT-{variant.upper()} encoder + all-MLP head (embed {embed_dim})."
    register_model(name)(builder)


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"):
    for _kind in ("fcn", "deeplabv3", "deeplabv3plus", "pspnet"):
        _register_cnn(_kind, _arch)
for _arch in ("resnet18", "mobilenetv2"):
    _register_cnn("lraspp", _arch, default_os=16)

_register_segformer("b0", 256)
_register_segformer("b1", 256)
_register_segformer("b2", 768)
