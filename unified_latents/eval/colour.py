"""How much the encoder's latent reacts to colour: a check that latents are not colour-blind.

Sensitivity to a change x -> x' is (rms(E(x') - E(x)) / std(E(x))) / (rms(x' - x) / std(x)):
the latent's relative change per unit of relative input change. About 1 means the latent
moves as much as the pixels do (a one-pixel shift scores about 1.2 on photo crops); near 0
means the encoder ignores the change. `colour_report` measures it for swapping red and blue
and also gives the swap's latent change in units of the encoder noise at log-SNR lam0
(`noise_margin`): below about 1 the decoder cannot tell the two latents apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import alpha_sigma


def sensitivity(
    encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, x2: torch.Tensor
) -> tuple[float, float]:
    """(sensitivity, rms latent change) of `encode` for x -> x2 (floats in [-1, 1], same shape)."""
    z, z2 = encode(x).double(), encode(x2).double()
    dz = (z2 - z).pow(2).mean().sqrt()
    dx = (x2.double() - x.double()).pow(2).mean().sqrt()
    return float((dz / z.std()) / (dx / x.double().std())), float(dz)


def swap_red_blue(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, ...] -> the same images with channels 0 and 2 exchanged."""
    return x[:, [2, 1, 0]]


@torch.no_grad()
def colour_report(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lam0: float) -> dict[str, float]:
    """Colour sensitivity of `encode` on RGB images x [N, 3, ...] in [-1, 1] (see module doc)."""
    if x.shape[1] != 3:
        raise ValueError(f"colour sensitivity needs RGB images [N, 3, ...], got {x.shape[1]} channels")
    s, dz = sensitivity(encode, x, swap_red_blue(x))
    shift, _ = sensitivity(encode, x, torch.roll(x, 1, dims=-1))
    a, sig = alpha_sigma(torch.tensor(float(lam0), dtype=torch.float64))
    return {"colour_sensitivity": s, "shift_sensitivity": shift, "noise_margin": float(a * dz / sig)}
