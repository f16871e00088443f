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
from ..data.modality import modality_of
from ..diffusion import alpha_sigma
from ..nn import encoder_grid


class PixelSpace(nn.Module):
    """The identity in place of a stage-1 model: encode(x) = x, decode(z) = z clipped."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = copy.deepcopy(cfg)
        d = self.cfg.diffusion
        d.lam0, d.lam_z_min = d.lam_x_max, d.lam_x_min  # the base model runs over the pixel range
        self.pixel_shift = cfg.pixel_shift()
        self.modality = modality_of(cfg.data)
        self.dims = self.modality.dims
        self.x_shape = self.z_shape = self.modality.example_shape(cfg.data)
        self.encoder = nn.Identity()  # no weights: the fingerprint is the config alone
        self.decoder_net = None  # decoding is the identity: no network, no FLOPs

    def latent_shift(self, base_shift: float) -> float:
        return self.pixel_shift + base_shift  # the pixel schedule's resolution shift (UL_SPEC 1)

    def pixels_per_image(self) -> int:
        return math.prod(self.x_shape[1:])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def encode_sample(self, x: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return x.float(), torch.zeros(x.shape[0], device=x.device)

    def noisy_latent(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(torch.tensor(self.cfg.diffusion.lam0, dtype=torch.float64))
        return float(a) * z + float(s) * eps

    def decode(self, z0: torch.Tensor, seeds=None, steps=None, sampler=None) -> torch.Tensor:
        return z0.float().clamp(-1, 1)


def pixel_config(base: RunConfig) -> RunConfig:
    """The pixel-diffusion baseline's config from a preset's stage-2 one: the same base network on
    pixels, with patches the size of the encoder's downsampling so it sees the same token grid."""
    cfg = copy.deepcopy(base)
    cfg.stage = "pixel"
    m = modality_of(cfg.data)
    grid = encoder_grid(cfg.model.encoder, m.dims, m.example_shape(cfg.data)[1:])
    cfg.model.base.patch = cfg.data.resolution // grid[-1]
    return cfg
