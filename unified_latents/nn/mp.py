"""Magnitude-preserving U-Net (EDM2's design, Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", Sec. 3 / Fig. 2), written for 2-D and 3-D grids.

Every layer keeps unit-variance activations at unit variance: weights are normalised per output
channel on every forward pass and forced back to unit norm in training (so the learning rate sets
the relative size of an update and no weight decay is needed), SiLU is rescaled to unit output
variance, residual sums and skip concatenations are weighted so their magnitude is preserved, the
encoder path normalises each pixel's feature vector instead of group norms, and the output is
scaled by a learned gain that starts at zero. The denoiser signature is the other networks':
`forward(x_t, lam, cond=None, labels=None) -> v_hat`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetConfig
from ..errors import ConfigError

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
SILU_STD = 0.596  # std of silu(x) for x ~ N(0, 1)
RES_BALANCE = 0.3  # weight of a block's residual branch in its magnitude-preserving sum
CAT_BALANCE = 0.5  # weight of the skip in the decoder path's concatenation
# Weights are stored at this root-mean-square (the forward pass normalises them anyway): Adam's
# steps are about the learning rate per element, so the presets' shared rate of 2e-3 moves them
# relative to their size as EDM2's 1e-2 moves unit-rms weights, while the other networks of the
# model (the encoder) keep theirs.
STORE_RMS = 0.2
# The learned scalar gains (modulation and output, zero at the start) are stored divided by the
# same factor, so that Adam's steps of about the learning rate move them at EDM2's 1e-2 per step
# too: stored as they are used, a gain would need ~500 steps at 2e-3 to reach 1.
GAIN_SCALE = 1 / STORE_RMS


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit root-mean-square over `dim` (all but the first axis when None)."""
    dim = tuple(range(1, x.ndim)) if dim is None else dim
    n = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    n = torch.add(eps, n, alpha=math.sqrt(n.numel() / x.numel()))
    return x / n.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_STD


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to unit variance for independent unit-variance a and b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Channel concatenation with `b` weighted t and `a` 1 - t, of unit variance overall."""
    na, nb = a.shape[1], b.shape[1]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=1)


class MPConv(nn.Module):
    """Convolution (or, with `kernel` 0, a linear layer) with weights of unit norm per output channel."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, ...], dims: int):
        super().__init__()
        self.dims = dims
        k = () if kernel == 0 else (kernel if isinstance(kernel, tuple) else (kernel,) * dims)
        self.weight = nn.Parameter(torch.randn(cout, cin, *k) * STORE_RMS)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.float()
        if self.training:  # forced weight normalisation: the stored weights stay at unit norm
            with torch.no_grad():
                self.weight.copy_(normalize(w) * STORE_RMS)
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))  # unit-variance output for unit-variance input
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return _CONV[self.dims](x, w, padding=w.shape[-1] // 2)


def space_to_depth(x: torch.Tensor, f: tuple[int, ...]) -> torch.Tensor:
    """[N, C, *S] -> [N, C * prod(f), *S / f]: non-overlapping patches as channels."""
    n, c, *s = x.shape
    shape = [n, c]
    for size, k in zip(s, f, strict=True):
        shape += [size // k, k]
    x = x.reshape(shape)
    d = len(s)
    perm = [0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d))]
    return x.permute(perm).reshape(n, c * math.prod(f), *(size // k for size, k in zip(s, f, strict=True)))


def depth_to_space(x: torch.Tensor, f: tuple[int, ...]) -> torch.Tensor:
    """The inverse of space_to_depth."""
    n, ck, *g = x.shape
    d, c = len(g), ck // math.prod(f)
    x = x.reshape(n, c, *f, *g)
    perm = [0, 1, *(a for i in range(d) for a in (2 + d + i, 2 + i))]
    return x.permute(perm).reshape(n, c, *(size * k for size, k in zip(g, f, strict=True)))


class MPBlock(nn.Module):
    """One residual block: pixel norm (encoder path only), two 3x3 convolutions around a
    multiplicative log-SNR modulation, a magnitude-preserving residual sum."""

    def __init__(self, dims: int, cin: int, cout: int, emb_dim: int, encoder: bool, dropout: float):
        super().__init__()
        self.encoder, self.dropout = encoder, dropout
        self.skip = MPConv(cin, cout, 1, dims) if cin != cout else None
        self.conv0 = MPConv(cout, cout, 3, dims)
        self.conv1 = MPConv(cout, cout, 3, dims)
        self.emb = MPConv(emb_dim, cout, 0, dims)
        self.emb_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.skip is not None:
            x = self.skip(x)  # [N, cout, *S]
        if self.encoder:
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv0(mp_silu(x))
        c = self.emb(emb, gain=self.emb_gain * GAIN_SCALE) + 1  # [N, cout]
        y = mp_silu(y * c.reshape(*c.shape, *([1] * (x.ndim - 2))).to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        return mp_sum(x, self.conv1(y), t=RES_BALANCE).clamp(-256, 256)


class MPUNet(nn.Module):
    """U-Net of magnitude-preserving blocks; the registry name is "unet_mp". Patches become
    channels at the input and back at the output; z0 (the decoder's cond) and a constant channel
    are concatenated to the input on the first level's grid; one skip per level, as in "unet"."""

    def __init__(self, cfg: NetConfig, dims: int, in_ch: int, out_ch: int, cond_ch: int = 0, num_classes: int = 0):
        super().__init__()
        if cfg.transformer_blocks:
            raise ConfigError("unet_mp has no transformer blocks: set transformer_blocks=0 or use arch=unet")
        ch, e = cfg.channels, cfg.emb_dim
        self.dims, self.num_classes, self.cond_ch = dims, num_classes, cond_ch
        self.patch = (cfg.patch_t, *(cfg.patch,) * (dims - 1)) if dims == 3 else (cfg.patch,) * dims
        self.register_buffer("freqs", torch.randn(e, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("phases", torch.rand(e, generator=torch.Generator().manual_seed(1)))
        self.emb_noise = MPConv(e, e, 0, dims)
        self.emb_label = MPConv(num_classes + 1, e, 0, dims) if num_classes else None
        self.conv_in = MPConv(in_ch * math.prod(self.patch) + cond_ch + 1, ch[0], 3, dims)
        self.down = nn.ModuleList()
        self.strides: list[tuple[int, ...]] = []
        for i, (c, nb) in enumerate(zip(ch, cfg.blocks, strict=True)):
            cin = ch[max(i - 1, 0)]
            blocks = [MPBlock(dims, cin if j == 0 else c, c, e, True, cfg.dropout) for j in range(nb)]
            self.down.append(nn.ModuleList(blocks))
            if i < len(ch) - 1:
                halve_t = cfg.time_down < 0 or i < cfg.time_down
                self.strides.append((2 if halve_t else 1, 2, 2) if dims == 3 else (2,) * dims)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c, nb = ch[i], cfg.blocks[i] + cfg.up_extra
            cin = ch[min(i + 1, len(ch) - 1)] + c  # the coarser level's output and this level's skip
            blocks = [MPBlock(dims, cin if j == 0 else c, c, e, False, cfg.dropout) for j in range(nb)]
            self.up.append(nn.ModuleList(blocks))
        self.conv_out = MPConv(ch[0], out_ch * math.prod(self.patch), 3, dims)
        self.out_gain = nn.Parameter(torch.zeros([]))

    def embed(self, lam: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = lam.float()[:, None] / 8  # log-SNR in about [-15, 15] -> [-2, 2]
        freqs, phases = cast(torch.Tensor, self.freqs), cast(torch.Tensor, self.phases)
        fourier = torch.cos(2 * math.pi * (x * freqs[None] + phases[None])) * math.sqrt(2)  # [N, emb]
        emb = self.emb_noise(fourier)
        if self.emb_label is not None:
            if labels is None:
                labels = torch.full((lam.shape[0],), self.num_classes, device=lam.device, dtype=torch.long)
            onehot = F.one_hot(labels, self.num_classes + 1).float() * math.sqrt(self.num_classes + 1)
            emb = mp_sum(emb, self.emb_label(onehot), t=0.5)
        return mp_silu(emb)  # [N, emb]

    def forward(self, x, lam, cond=None, labels=None):
        emb = self.embed(lam, labels)
        h = space_to_depth(x, self.patch)  # [N, C * prod(patch), *S/p]
        parts = [h, torch.ones_like(h[:, :1])]
        if self.cond_ch:
            assert cond is not None, "a network built with a cond input needs the cond"
            parts.append(F.interpolate(cond.to(h.dtype), size=h.shape[2:], mode="nearest"))
        h = self.conv_in(torch.cat(parts, dim=1))  # [N, c0, *S/p]
        skips = []
        for i, blocks in enumerate(self.down):
            for blk in cast(nn.ModuleList, blocks):  # ModuleList is not generic: its items read as Module
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.strides):
                h = _POOL[self.dims](h, self.strides[i], ceil_mode=True)
        for blocks in self.up:
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = mp_cat(h, skip, t=CAT_BALANCE)  # [N, c_coarser + c, *S_level]
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, emb)
        return depth_to_space(self.conv_out(h, gain=self.out_gain * GAIN_SCALE), self.patch)  # [N, out_ch, *S]
