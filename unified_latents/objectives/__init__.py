"""Objectives compose networks and diffusion maths, and return named loss terms."""

from .base import Autoencoder, Losses, Objective, denoise, seeded_noise
from .noise import BatchNoise, step_key
from .stage1 import UnifiedLatents, latent_shape
from .stage2 import BaseModel, encoder_fingerprint

__all__ = [
    "Autoencoder",
    "BaseModel",
    "BatchNoise",
    "Losses",
    "Objective",
    "UnifiedLatents",
    "denoise",
    "encoder_fingerprint",
    "latent_shape",
    "seeded_noise",
    "step_key",
]
