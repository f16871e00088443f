"""uint8 <-> float conversions and the uint8 resizing shared by image and video loaders."""

from __future__ import annotations

import numpy as np
import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, channels, H, W]: gray repeated to RGB, RGB to ITU-R 601 luma."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x[:, :1].expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as Pillow's "L"
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, C, size, size]: shorter side resized (bicubic, antialiased), center crop."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    y = torch.nn.functional.interpolate(x.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return y[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def crop_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Remove the border added by `pad` (metrics are measured on the original pixels)."""
    return x[..., pad : x.shape[-2] - pad, pad : x.shape[-1] - pad] if pad else x


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """Clips [N, C, T, H, W] -> frames [N * T, C, H, W] (for per-frame metrics and Inception)."""
    return x.transpose(1, 2).flatten(0, 1)


def pil_chw(im) -> np.ndarray:
    """A PIL image as a writable uint8 array [C, H, W] (a copy: torch.from_numpy takes it)."""
    a = np.array(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
