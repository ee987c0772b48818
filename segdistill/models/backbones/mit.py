"""Mix Transformer (MiT-B0/B1/B2) encoder of SegFormer.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021.

* Overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2) so stages are at 1/4, 1/8, 1/16, 1/32.
* Efficient self-attention: keys/values are computed on a map shrunk by the spatial-reduction ratio
  (8, 4, 2, 1 per stage) with a strided conv + LayerNorm; attention itself is ``F.scaled_dot_product_attention``.
* Mix-FFN: fc1 -> 3x3 depthwise conv -> GELU -> fc2 (the depthwise conv replaces positional encodings).

Parameter names follow the NVlabs ``mit_b*.pth`` ImageNet checkpoints (``patch_embed1.proj``, ``block1.0.attn.q``,
``block1.0.mlp.dwconv.dwconv``, ``norm1`` ...); their classifier ``head.*`` is not part of this module.

Named outputs: ``stage1`` .. ``stage4`` (B, C_i, H/2^(i+1), W/2^(i+1)); there is no ``stem``.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ConfigError
from ..layers import DropPath, init_weights


class DWConv(nn.Module):
    """3x3 depthwise conv on a token sequence (the "Mix" in Mix-FFN)."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H: int, W: int):
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: Linear -> DWConv -> GELU -> Linear."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, H: int, W: int):
        x = self.drop(self.act(self.dwconv(self.fc1(x), H, W)))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Multi-head self-attention with spatial reduction of keys/values (``sr`` conv + ``norm``, when sr_ratio > 1)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, sr_ratio=1):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"MiT: dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H: int, W: int):
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).transpose(1, 2)
        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(B, C, H, W)
            x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 sr_ratio=1, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, H: int, W: int):
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride (overlapping patches), then LayerNorm over the flattened tokens."""

    def __init__(self, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


def _init_mit(m: nn.Module) -> None:
    """SegFormer's init: trunc-normal linears (``init_weights``), convs normal(0, sqrt(2 / fan_out)) with the
    fan-out divided by groups (so the depthwise convs are not initialised near zero)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        init_weights(m)


_SPECS = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
}


def _scale_dim(dim: int, heads: int, width_mult: float) -> int:
    """Scale a stage width, rounded to a multiple of ``heads * 8`` (so every head keeps >= 8 channels)."""
    unit = heads * 8
    return max(unit, int(dim * width_mult / unit + 0.5) * unit)


class MixVisionTransformer(nn.Module):
    """MiT encoder returning ``{"stage1", ..., "stage4"}`` at strides 4, 8, 16, 32.

    Args:
        embed_dims, depths: per-stage widths and block counts (see ``_SPECS``).
        num_heads, mlp_ratios, sr_ratios: per-stage, SegFormer defaults (1, 2, 5, 8), 4, (8, 4, 2, 1).
        drop_path_rate: stochastic-depth rate, linearly increasing over all blocks (0.1 as in SegFormer training).
        width_mult: scales the stage widths (rounded to multiples of heads * 8); pretrained weights need 1.0.
    """

    def __init__(self, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                 mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, width_mult: float = 1.0, in_chans: int = 3, arch: str = "mit"):
        super().__init__()
        self.arch = arch
        self.width_mult = float(width_mult)
        dims = [_scale_dim(d, h, width_mult) for d, h in zip(embed_dims, num_heads)]
        self.embed_dims = dims
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        prev = in_chans
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(patch, stride, prev, dims[i]))
            self.add_module(f"block{i + 1}", nn.ModuleList([
                Block(dims[i], num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate, dpr[cur + j],
                      sr_ratios[i], norm_layer)
                for j in range(depths[i])
            ]))
            self.add_module(f"norm{i + 1}", norm_layer(dims[i]))
            cur += depths[i]
            prev = dims[i]
        self.feature_channels = {f"stage{i + 1}": dims[i] for i in range(4)}
        self.feature_strides = {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
        self.apply(_init_mit)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (1..4): patch embedding, transformer blocks, norm; (B, C, H, W) map in and out."""
        return _run_stage(getattr(self, f"patch_embed{i}"), getattr(self, f"block{i}"), getattr(self, f"norm{i}"), x)

    def units(self) -> list[tuple[str, nn.Module, str | None]]:
        """The backbone as units run one after another: (name, module, feature taken after it or None).
        The latency library times models unit by unit (``segdistill.latency.zoo``)."""
        return [(f"stage{i}", MiTStage(self, i), f"stage{i}") for i in range(1, 5)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(1, 5):
            x = out[f"stage{i}"] = self.stage(i, x)
        return out


def _run_stage(patch_embed: nn.Module, blocks: nn.ModuleList, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x, H, W = patch_embed(x)
    for blk in blocks:
        x = blk(x, H, W)
    x = norm(x)
    return x.reshape(x.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()


class MiTStage(nn.Module):
    """Stage ``i`` of a MixVisionTransformer as a module of its own (the same parameters, shared)."""

    def __init__(self, mit: MixVisionTransformer, i: int):
        super().__init__()
        self.patch_embed, self.blocks, self.norm = getattr(mit, f"patch_embed{i}"), getattr(mit, f"block{i}"), getattr(mit, f"norm{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_stage(self.patch_embed, self.blocks, self.norm, x)


def mit(arch: str, width_mult: float = 1.0, drop_path_rate: float = 0.1, **kw) -> MixVisionTransformer:
    """Build ``mit_b0`` / ``mit_b1`` / ``mit_b2``."""
    if arch not in _SPECS:
        raise ConfigError(f"unknown MiT {arch!r}; choose one of {sorted(_SPECS)}")
    return MixVisionTransformer(**_SPECS[arch], width_mult=width_mult, drop_path_rate=drop_path_rate, arch=arch, **kw)


def mit_b0(**kw):
    return mit("mit_b0", **kw)


def mit_b1(**kw):
    return mit("mit_b1", **kw)


def mit_b2(**kw):
    return mit("mit_b2", **kw)
