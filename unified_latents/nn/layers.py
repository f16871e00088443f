"""Building blocks written once for 2-D (images, [N, C, H, W]) and 3-D (video, [N, C, T, H, W]).

`dims` is the number of spatial axes. Networks know nothing about noise; they take the
log-SNR only as a conditioning input.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def conv_transpose_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims](*args, **kwargs)


def nd_size(dims: int, space: int, time: int) -> int | tuple[int, ...]:
    """A kernel size or stride: `space` on every spatial axis, `time` on the leading time axis
    of 3-D (video) feature maps [N, C, T, H, W]."""
    return space if dims < 3 else (time, space, space)


NORMS = ("group", "layer", "group<k>")


def check_norm(kind: str) -> bool:
    """Whether `kind` names a conv normalisation `norm` knows."""
    return kind in ("group", "layer") or re.fullmatch(r"group([1-9][0-9]*)", kind) is not None


def norm(ch: int, kind: str = "group") -> nn.GroupNorm:
    """'group': up to 32 groups (one channel per group below 64 channels: an instance norm,
    which removes every channel's mean over the image); 'group<k>' (e.g. 'group8'): k channels
    per group (at least one group; k divides the channels or the nearest common divisor is
    used), so a narrow network keeps per-channel statistics as wide ones with 32 groups do;
    'layer': one group, which removes only one mean over all channels and positions, so a
    colour cast survives it."""
    if kind == "layer":
        return nn.GroupNorm(1, ch)
    per = re.fullmatch(r"group([1-9][0-9]*)", kind)
    if per:
        return nn.GroupNorm(max(1, ch // math.gcd(ch, int(per.group(1)))), ch)
    groups = math.gcd(ch, 32) if ch >= 8 else 1
    return nn.GroupNorm(groups, ch)


def zero_init(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class NoiseEmbedding(nn.Module):
    """log-SNR [N] -> [N, dim]: sinusoidal features of lam, then a two-layer MLP."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        # lam spans about [-15, 15]; frequencies from 1/16 to ~100 resolve it.
        freqs = torch.exp(torch.linspace(math.log(1 / 16), math.log(100.0), half, device=lam.device))
        arg = lam.float()[:, None] * freqs[None]  # [N, half]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=1))  # [N, dim]


class ResBlock(nn.Module):
    """Pre-norm residual block; optional FiLM (scale, shift) from a conditioning vector."""

    def __init__(
        self, dims: int, cin: int, cout: int, emb_dim: int = 0, dropout: float = 0.0, norm_kind: str = "group"
    ):
        super().__init__()
        self.norm1, self.conv1 = norm(cin, norm_kind), conv_nd(dims, cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout, norm_kind), zero_init(conv_nd(dims, cout, cout, 3, padding=1))
        self.film = nn.Linear(emb_dim, 2 * cout) if emb_dim else None
        self.drop = nn.Dropout(dropout)
        self.skip = conv_nd(dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [N, cout, *S]
        h = self.norm2(h)
        if self.film is not None:
            assert emb is not None, "a block with FiLM needs the conditioning vector"
            scale, shift = self.film(emb).reshape(emb.shape[0], 2, -1, *([1] * (x.ndim - 2))).unbind(1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class TransformerBlock(nn.Module):
    """Tokens [N, L, W] -> [N, L, W]; adaLN-zero modulation from a conditioning vector."""

    def __init__(self, width: int, heads: int, emb_dim: int, dropout: float = 0.0, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * width, width)
        )
        self.mod = zero_init(nn.Linear(emb_dim, 6 * width))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n, seq, w = x.shape
        s1, b1, g1, s2, b2, g2 = self.mod(emb)[:, None].chunk(6, dim=-1)  # each [N, 1, W]
        h = self.norm1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).reshape(n, seq, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # [N, heads, L, W/heads]
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(n, seq, w))
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


def sincos_position(grid: tuple[int, ...], width: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal positions for any grid (2-D or 3-D): [prod(grid), width]."""
    axes = len(grid)
    per_axis = (width // (2 * axes)) * 2
    feats = []
    coords = torch.meshgrid(*[torch.arange(g, device=device, dtype=torch.float32) for g in grid], indexing="ij")
    for c in coords:
        half = per_axis // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
        arg = c.reshape(-1, 1) * freqs[None]
        feats += [arg.sin(), arg.cos()]
    pos = torch.cat(feats, dim=1)
    return F.pad(pos, (0, width - pos.shape[1]))


class Transformer(nn.Module):
    """Feature map [N, C, *S] -> same shape via `blocks` transformer blocks of width `width`."""

    def __init__(self, channels: int, width: int, blocks: int, heads: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.width = width
        self.proj_in = nn.Linear(channels, width)
        self.blocks = nn.ModuleList([TransformerBlock(width, heads, emb_dim, dropout) for _ in range(blocks)])
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n, c, *grid = x.shape
        h = self.proj_in(x.flatten(2).transpose(1, 2))  # [N, L, W]
        h = h + sincos_position(tuple(grid), self.width, x.device).to(h.dtype)
        for blk in self.blocks:
            h = blk(h, emb)
        h = self.proj_out(self.norm_out(h))  # [N, L, C]
        return h.transpose(1, 2).reshape(n, c, *grid)
