"""Networks only: no noise, no losses."""

from .networks import (
    DENOISERS,
    ENCODERS,
    ResNetEncoder,
    UNet,
    ViT,
    build_denoiser,
    build_encoder,
    check_grid,
    encoder_grid,
)

__all__ = [
    "DENOISERS",
    "ENCODERS",
    "ResNetEncoder",
    "UNet",
    "ViT",
    "build_denoiser",
    "build_encoder",
    "check_grid",
    "encoder_grid",
]
