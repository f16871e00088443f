"""Image grids and PNG files (Pillow): uint8 tensors out to disk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_write
from .transforms import to_uint8


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] (float in [-1, 1] or uint8) -> HxWxC uint8 array, nrow images per row."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            x[i].permute(1, 2, 0).cpu().numpy()
        )
    return out


def save_png(array: np.ndarray, path: Path, scale: int = 1) -> None:
    im = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    atomic_write(Path(path), lambda tmp: im.save(tmp, format="PNG"))


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, scale: int = 1) -> None:
    save_png(grid(images, nrow), path, scale)


def save_strip(clips: torch.Tensor, path: Path, scale: int = 1) -> None:
    """Clips [N, C, T, H, W] -> one PNG with a row of T frames per clip (time runs left to right)."""
    save_grid(clips.transpose(1, 2).flatten(0, 1), path, nrow=clips.shape[2], scale=scale)
