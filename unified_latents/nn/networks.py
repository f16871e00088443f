"""Encoder and denoiser networks, and the registry that builds them from a NetConfig.

Denoisers share one signature: `forward(x_t, lam, cond=None, labels=None) -> v_hat` with
`x_t` [N, C, *S], `lam` [N], `cond` an optional feature map (the decoder's z0) resized to
the network's grid, `labels` optional class indices (index `num_classes` means "no label").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetConfig
from ..errors import ConfigError
from .layers import (
    NORMS,
    NoiseEmbedding,
    ResBlock,
    Transformer,
    check_norm,
    conv_nd,
    conv_transpose_nd,
    nd_size,
    norm,
    zero_init,
)
from .mp import MPUNet


def _patch(cfg: NetConfig, dims: int):
    """Kernel = stride of the input patch embedding (and of the output un-patching)."""
    return nd_size(dims, cfg.patch, cfg.patch_t)


def _down(cfg: NetConfig, dims: int, level: int):
    """Stride-2 conv after `level`; in video it halves time only for the first `time_down` levels."""
    halve_t = cfg.time_down < 0 or level < cfg.time_down
    return nd_size(dims, 2, 2 if halve_t else 1)


def _level_factors(cfg: NetConfig, dims: int) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Per axis: the patch, then the stride of each stride-2 level (none in a ViT)."""
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,) * dims  # noqa: E731
    levels = len(cfg.channels) - 1 if cfg.arch != "vit" else 0
    return as_tuple(_patch(cfg, dims)), [as_tuple(_down(cfg, dims, level)) for level in range(levels)]


def encoder_grid(cfg: NetConfig, dims: int, size: tuple[int, ...]) -> tuple[int, ...]:
    """The grid ([H, W] or [T, H, W]) an encoder maps an input grid `size` to."""
    patch, strides = _level_factors(cfg, dims)
    grid = [s // k for s, k in zip(size, patch, strict=True)]
    for st in strides:
        grid = [(g + k - 1) // k for g, k in zip(grid, st, strict=True)]  # kernel 3, padding 1: ceil(g / stride)
    return tuple(grid)


def check_grid(cfg: NetConfig, dims: int, size: tuple[int, ...], role: str, fix: str) -> None:
    """ConfigError unless every axis of the grid `size` that a network sees is a multiple of its
    patch (else un-patching cannot give back the input's size) and at least the factor its patch
    and stride-2 levels shrink it by (else its deepest levels see nothing but padding). Uneven
    sizes between levels are fine: the U-Net resizes at its skips, the encoder rounds up."""
    patch, strides = _level_factors(cfg, dims)
    factor = list(patch)
    for st in strides:
        factor = [f * k for f, k in zip(factor, st, strict=True)]
    show = lambda t: "x".join(map(str, t))  # noqa: E731
    if any(s % p for s, p in zip(size, patch, strict=True)):
        raise ConfigError(
            f"the {role} sees a {show(size)} grid, which is not a multiple of its patch {show(patch)}: {fix}"
        )
    if any(s < f for s, f in zip(size, factor, strict=True)):
        raise ConfigError(
            f"the {role} sees a {show(size)} grid, smaller than its downsampling {show(factor)} "
            f"(patch and stride-2 levels): {fix}"
        )


class ResNetEncoder(nn.Module):
    """Deterministic encoder x [N, C, *S] -> z_clean [N, latent, *S / (patch * 2^(levels-1))]."""

    def __init__(self, cfg: NetConfig, dims: int, in_ch: int, out_ch: int):
        super().__init__()
        ch = cfg.channels
        self.patch = conv_nd(dims, in_ch, ch[0], _patch(cfg, dims), stride=_patch(cfg, dims))
        layers: list[nn.Module] = []
        for i, (c, nb) in enumerate(zip(ch, cfg.blocks, strict=True)):
            cin = ch[max(i - 1, 0)]
            for j in range(nb):
                layers.append(ResBlock(dims, cin if j == 0 else c, c, dropout=cfg.dropout, norm_kind=cfg.norm))
            if i < len(ch) - 1:
                layers.append(conv_nd(dims, c, c, 3, stride=_down(cfg, dims, i), padding=1))
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(norm(ch[-1], cfg.norm), nn.SiLU(), conv_nd(dims, ch[-1], out_ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.patch(x)))


def _resized(cond: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """cond on a level's grid: averaged where the grid is coarser, repeated (nearest) where finer."""
    src = cond.shape[2:]
    if any(t < s for s, t in zip(src, size, strict=True)):
        pools: dict[int, Callable[..., torch.Tensor]] = {
            1: F.adaptive_avg_pool1d,
            2: F.adaptive_avg_pool2d,
            3: F.adaptive_avg_pool3d,
        }
        cond = pools[len(size)](cond, [min(s, t) for s, t in zip(src, size, strict=True)])
    return cond if cond.shape[2:] == size else F.interpolate(cond, size=size, mode="nearest")


class _Denoiser(nn.Module):
    """Shared conditioning: log-SNR embedding plus an optional class embedding."""

    def __init__(self, cfg: NetConfig, num_classes: int):
        super().__init__()
        self.emb = NoiseEmbedding(cfg.emb_dim)
        self.num_classes = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, cfg.emb_dim) if num_classes else None

    def embed(self, lam: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        e = self.emb(lam)  # [N, emb]
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((lam.shape[0],), self.num_classes, device=lam.device, dtype=torch.long)
            e = e + self.label_emb(labels)
        return F.silu(e)


class UNet(_Denoiser):
    """Convolutional U-Net with FiLM log-SNR conditioning; transformer blocks at the coarsest
    level make it a U-ViT (UL_SPEC 6). One level and no transformer = a plain ResNet denoiser."""

    def __init__(self, cfg: NetConfig, dims: int, in_ch: int, out_ch: int, cond_ch: int = 0, num_classes: int = 0):
        super().__init__(cfg, num_classes)
        ch, e = cfg.channels, cfg.emb_dim
        self.patch_in = conv_nd(dims, in_ch, ch[0], _patch(cfg, dims), stride=_patch(cfg, dims))
        self.cond_in = conv_nd(dims, cond_ch, ch[0], 3, padding=1) if cond_ch else None
        # cond_all_levels: z0 also enters each deeper level on its grid, before its blocks (zero-initialised, so
        # training starts from the first-level-only network)
        self.cond_deep = (
            nn.ModuleList([zero_init(conv_nd(dims, cond_ch, c, 3, padding=1)) for c in ch[:-1]])
            if cond_ch and cfg.cond_all_levels
            else None
        )
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, (c, nb) in enumerate(zip(ch, cfg.blocks, strict=True)):
            cin = ch[max(i - 1, 0)]
            self.down.append(
                nn.ModuleList([ResBlock(dims, cin if j == 0 else c, c, e, cfg.dropout, cfg.norm) for j in range(nb)])
            )
            last = i == len(ch) - 1
            self.downsample.append(
                nn.Identity() if last else conv_nd(dims, c, c, 3, stride=_down(cfg, dims, i), padding=1)
            )
        self.mid = (
            Transformer(ch[-1], cfg.width, cfg.transformer_blocks, cfg.heads, e, cfg.dropout)
            if cfg.transformer_blocks
            else None
        )
        if self.mid is not None and cfg.mid_zero_init:  # the residual middle starts as the identity
            zero_init(self.mid.proj_out)
        self.up, self.upconv = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(ch))):
            c, nb = ch[i], cfg.blocks[i] + cfg.up_extra
            cin = ch[min(i + 1, len(ch) - 1)]
            self.upconv.append(nn.Identity() if i == len(ch) - 1 else conv_nd(dims, cin, c, 3, padding=1))
            self.up.append(
                nn.ModuleList([ResBlock(dims, 2 * c if j == 0 else c, c, e, cfg.dropout, cfg.norm) for j in range(nb)])
            )
        self.out_norm = norm(ch[0], cfg.norm)
        self.patch_out = zero_init(conv_transpose_nd(dims, ch[0], out_ch, _patch(cfg, dims), stride=_patch(cfg, dims)))

    def forward(self, x, lam, cond=None, labels=None):
        emb = self.embed(lam, labels)  # [N, emb]
        h = self.patch_in(x)  # [N, c0, *S/p]
        if self.cond_in is not None:
            h = h + self.cond_in(_resized(cond, h.shape[2:]))  # z0 on the first level's grid
        skips = []
        for i, (blocks, down) in enumerate(zip(self.down, self.downsample, strict=True)):
            if i and self.cond_deep is not None:
                h = h + self.cond_deep[i - 1](_resized(cond, h.shape[2:]))
            for blk in cast(nn.ModuleList, blocks):  # ModuleList is not generic: its items read as Module
                h = blk(h, emb)
            skips.append(h)
            h = down(h)
        if self.mid is not None:
            h = h + self.mid(h, emb)
        for blocks, upconv in zip(self.up, self.upconv, strict=True):
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = torch.cat([upconv(h), skip], dim=1)  # [N, 2c, *S_level]
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, emb)
        return self.patch_out(F.silu(self.out_norm(h)))  # [N, out_ch, *S]


class ViT(_Denoiser):
    """Patch-embedding transformer denoiser (the paper's prior; UL_SPEC 6)."""

    def __init__(self, cfg: NetConfig, dims: int, in_ch: int, out_ch: int, cond_ch: int = 0, num_classes: int = 0):
        super().__init__(cfg, num_classes)
        w = cfg.width
        self.patch_in = conv_nd(dims, in_ch, w, _patch(cfg, dims), stride=_patch(cfg, dims))
        self.cond_in = conv_nd(dims, cond_ch, w, 3, padding=1) if cond_ch else None
        self.body = Transformer(w, w, cfg.transformer_blocks, cfg.heads, cfg.emb_dim, cfg.dropout)
        self.out_norm = nn.LayerNorm(w)
        self.patch_out = zero_init(conv_transpose_nd(dims, w, out_ch, _patch(cfg, dims), stride=_patch(cfg, dims)))

    def forward(self, x, lam, cond=None, labels=None):
        emb = self.embed(lam, labels)
        h = self.patch_in(x)  # [N, W, *S/p]
        if self.cond_in is not None:
            h = h + self.cond_in(F.interpolate(cond, size=h.shape[2:], mode="nearest"))
        h = self.body(h, emb)
        h = self.out_norm(h.movedim(1, -1)).movedim(-1, 1)
        return self.patch_out(h)  # [N, out_ch, *S]


ENCODERS: dict[str, Callable[..., nn.Module]] = {"resnet_encoder": ResNetEncoder}
DENOISERS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "vit": ViT, "unet_mp": MPUNet}


class PerFrame(nn.Module):
    """A video denoiser made of a 2-D one run on every frame alone (2-D convolutions cost a third
    of 3-D ones per weight). Each frame sees its own noisy frame and, as cond, z0 at its own time
    (linear between latent frames), the clip's whole z0 (latent frames stacked as channels) and
    sinusoids of the frame's time. Same signature as the 2-D network."""

    FREQS = (1, 2, 4, 8)  # sin and cos of pi * k * (frame time in (0, 1))

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, lam, cond=None, labels=None):
        n, t = x.shape[0], x.shape[2]
        frames = lambda v: v.transpose(1, 2).reshape(n * t, v.shape[1], *v.shape[3:])  # noqa: E731
        if cond is not None:
            when = (torch.arange(t, device=x.device, dtype=cond.dtype) + 0.5) / t
            waves = torch.stack([f(torch.pi * k * when) for k in self.FREQS for f in (torch.sin, torch.cos)])
            waves = waves.view(1, -1, t, 1, 1).expand(n, -1, t, *cond.shape[3:])  # [N, 8, T, h, w]
            stacked = cond.flatten(1, 2)[:, :, None].expand(-1, -1, t, -1, -1)  # [N, c*T', T, h, w]
            aligned = F.interpolate(
                cond, size=(t, *cond.shape[3:]), mode="trilinear", align_corners=False
            )  # [N, c, T, h, w]
            cond = frames(torch.cat([aligned, stacked, waves], dim=1))
        labels = labels.repeat_interleave(t) if labels is not None else None
        out = self.inner(frames(x), lam.repeat_interleave(t), cond, labels)  # [N*T, C, H, W]
        return out.view(n, t, *out.shape[1:]).transpose(1, 2)


_PER_FRAME_ONLY = (
    "per_frame applies only to the decoder of a video model (data.frames > 1): "
    "set it as model.decoder.per_frame=true, or leave it false"
)


def build_encoder(cfg: NetConfig, dims: int, in_ch: int, out_ch: int) -> nn.Module:
    _check(cfg, ENCODERS, "encoder")
    _check_cond_levels(cfg, "encoder", cond_ch=0)
    if cfg.per_frame:
        raise ConfigError(f"encoder: {_PER_FRAME_ONLY}")
    return ENCODERS[cfg.arch](cfg, dims, in_ch, out_ch)


def build_denoiser(
    cfg: NetConfig, dims: int, in_ch: int, out_ch: int, cond_ch: int = 0, num_classes: int = 0, cond_frames: int = 0
) -> nn.Module:
    """`cond_frames`: the latent frames of z0, which a per-frame video decoder stacks as channels."""
    _check(cfg, DENOISERS, "denoiser")
    _check_cond_levels(cfg, "denoiser", cond_ch)
    if not cfg.per_frame:
        return DENOISERS[cfg.arch](cfg, dims, in_ch, out_ch, cond_ch, num_classes)
    if dims != 3 or not cond_ch or not cond_frames:
        raise ConfigError(f"denoiser: {_PER_FRAME_ONLY}")
    inner_cond = cond_ch * (1 + cond_frames) + 2 * len(PerFrame.FREQS)
    return PerFrame(DENOISERS[cfg.arch](cfg, 2, in_ch, out_ch, inner_cond, num_classes))


def _check_cond_levels(cfg: NetConfig, role: str, cond_ch: int) -> None:
    """cond_all_levels only means something for a U-Net that takes a cond (the decoder): never ignored silently."""
    if cfg.cond_all_levels and (cfg.arch != "unet" or not cond_ch):
        raise ConfigError(
            f"{role} ({cfg.arch}{'' if cond_ch else ', no z0 input'}): cond_all_levels applies only to "
            f"the decoder's U-Net; set it as model.decoder.cond_all_levels with model.decoder.arch=unet"
        )


def _check(cfg: NetConfig, registry: dict, role: str) -> None:
    if not check_norm(cfg.norm):
        raise ConfigError(f"{role}: norm {cfg.norm!r} is not one of: {', '.join(NORMS)}")
    if cfg.arch not in registry:
        raise ConfigError(f"unknown {role} arch {cfg.arch!r}; choose one of: {', '.join(sorted(registry))}")
    if cfg.arch != "vit" and len(cfg.channels) != len(cfg.blocks):
        raise ConfigError(
            f"{role}: channels {cfg.channels} and blocks {cfg.blocks} must have the same length (one entry per level)"
        )
    if cfg.up_extra and not cfg.arch.startswith("unet"):
        raise ConfigError(f"{role}: up_extra applies only to U-Nets (arch unet or unet_mp), not arch={cfg.arch}")
    if cfg.mid_zero_init and not (cfg.arch == "unet" and cfg.transformer_blocks):
        raise ConfigError(
            f"{role}: mid_zero_init applies only to a U-ViT (arch=unet with transformer_blocks > 0), "
            f"not arch={cfg.arch} with transformer_blocks={cfg.transformer_blocks}"
        )
    if (cfg.arch == "vit" or cfg.transformer_blocks) and cfg.width % cfg.heads:
        raise ConfigError(f"{role}: width {cfg.width} is not divisible by heads {cfg.heads}")
