"""Pieces shared by every objective: the loss container and per-sample noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Losses:
    """`total` [N] is what gets optimised (mean over the global batch); `terms` are per-example
    values [N] for logging, each in the unit its name says (nats, bits, bits per pixel)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class seeded_noise:
    """Per-example random streams: example k's noise depends only on its seed, never on the
    batch it shares or the device count (DESIGN principle 8)."""

    def __init__(self, seeds: list[int], device=None):
        self.device = torch.device(device or "cpu")
        self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.stack([torch.randn(shape, generator=g) for g in self.gens])
        return out.to(self.device)

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.stack([torch.rand(shape, generator=g) for g in self.gens])
        return out.to(self.device)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(tuple(x.shape[1:])).to(x.dtype)


def elbo_bits(nats_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int, z_shape: tuple[int, ...],
              seeds: list[int], device, n_t: int = 8) -> torch.Tensor:
    """Bits per example [N] of an ELBO: `nats_fn(t [N], eps [N, *z_shape]) -> nats [N]` averaged
    over n_t stratified t per example (the held-out bitrate estimator; UL_SPEC 7)."""
    noise = seeded_noise(seeds, device)
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for k in range(n_t):
        t = torch.remainder(noise.uniform(()) + k / n_t, 1.0)
        total += nats_fn(t, noise.normal(z_shape)).double()
    return total / n_t / math.log(2)
