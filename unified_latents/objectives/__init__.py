"""Objectives compose networks and diffusion maths, and return named loss terms."""

from .base import Autoencoder, Losses, Objective, denoise, seeded_noise
from .noise import BatchNoise, step_key
from .stage1 import UnifiedLatents, latent_shape
from .stage2 import BaseModel, encoder_fingerprint
