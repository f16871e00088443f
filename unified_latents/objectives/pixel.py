"""Pixel-space diffusion, the paper's no-latent baseline (Table 1, Fig. 4), as the stage-2 base
model on the identity "autoencoder": the base model's latents are the pixels themselves, its
log-SNR range is the pixel one [lam_x_min, lam_x_max] with the resolution shift (UL_SPEC 1),
and decoding returns the state at lam_x_max (noise std ~5e-4 at 15: far below one grey level).

One code path for both: `BaseModel(cfg, PixelSpace(cfg))` trains, samples, counts FLOPs and
measures the ELBO exactly as it does on UL latents."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..config import RunConfig
from ..diffusion import alpha_sigma
from .stage1 import data_dims, data_shape


class PixelSpace(nn.Module):
    """The identity in place of a stage-1 model: encode(x) = x, decode(z) = z clipped."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = copy.deepcopy(cfg)
        d = self.cfg.diffusion
        d.lam0, d.lam_z_min = d.lam_x_max, d.lam_x_min  # the base model runs over the pixel range
        self.schedule_shift = cfg.pixel_shift() + cfg.base.shift
        self.dims = data_dims(cfg)
        self.x_shape = self.z_shape = data_shape(cfg)
        self.encoder = nn.Identity()  # no weights: the fingerprint is the config alone

    def pixels_per_image(self) -> int:
        return math.prod(self.x_shape[1:])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def noisy_latent(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(torch.tensor(self.cfg.diffusion.lam0, dtype=torch.float64))
        return float(a) * z + float(s) * eps

    def decode(self, z0: torch.Tensor, seeds=None, steps=None, sampler=None) -> torch.Tensor:
        return z0.float().clamp(-1, 1)
