"""Pieces shared by every objective: the interfaces the training loop and stage 2 rely on, the
loss container, per-sample noise, and the one denoiser wrapper around every network call."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ..accel import resolve
from ..diffusion import alpha_sigma, x_from_v
from .noise import CounterNoise

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.modality import Modality
    from .noise import RowNoise


@dataclass
class Losses:
    """`total` [N] is what gets optimised (mean over the global batch); `terms` are per-example
    values [N] for logging, each in the unit its name says (nats, bits, bits per pixel)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class Objective(Protocol):
    """What the training loop needs from a model (training/loop.py never asks which one it runs)."""

    log_keys: tuple[str, ...]  # loss terms and after_step values worth printing, in order
    has_unused_parameters: bool  # DDP must not wait for gradients of a network left unused

    def draw_noise(self, rng: RowNoise) -> dict[str, torch.Tensor]:
        """Every random number this process's rows of the global batch need, each tensor [rows, ...]
        drawn through `rng` (objectives/noise.py), so the rows' numbers do not depend on the rank."""

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, noise: dict[str, torch.Tensor]) -> Losses:
        """forward: per-example loss terms of the examples `x` given their slice of the noise."""

    def after_step(self, metrics: dict, ok: torch.Tensor | None = None) -> dict:
        """Called after each optimizer step with the batch's metrics (0-d tensors on the device, or
        floats); returns values to log (tensors or floats). `ok`: a 0-d bool tensor, False when the
        device skipped the step (the fused optimizer's found_inf), which must then change nothing."""

    def previews(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pictures worth a look during training: {name: float images or clips in [-1, 1]}."""

    def artifact_metadata(self) -> dict:
        """Extra metadata stored in the inference artifact."""


if TYPE_CHECKING:

    class ObjectiveModule(torch.nn.Module, Objective):
        """For annotations only: an nn.Module that is an Objective, what the training loop holds
        (Python's types have no intersection; the objectives match Objective structurally)."""


class Autoencoder(Protocol):
    """The space stage 2 diffuses in: UL's frozen stage 1, or the identity on pixels (PixelSpace)."""

    cfg: RunConfig  # its diffusion.lam0 / lam_z_min bound the base model's log-SNR range
    modality: Modality  # images or video: what the base model's previews and evaluation save
    dims: int  # 2 (images) or 3 (video): the convolution type of the base network
    x_shape: tuple[int, ...]  # one example [C, H, W] or [C, T, H, W]
    z_shape: tuple[int, ...]  # one latent

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder network, whose weights are fingerprinted (stage2.encoder_fingerprint)."""

    @property
    def decoder_net(self) -> torch.nn.Module | None:
        """The network each decoding step calls (None: decoding is free)."""

    # nn.Module's, which BaseModel uses to freeze it
    def eval(self) -> Autoencoder: ...
    def requires_grad_(self, requires_grad: bool = True) -> Autoencoder: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """float x [N, *x_shape] in [-1, 1] -> z_clean [N, *z_shape]."""

    def encode_sample(self, x: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_clean the decoder was trained on, entropy credit in nats [N]): what stage 2 trains on."""

    def noisy_latent(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z0 = alpha(lam0) z + sigma(lam0) eps: where the base model stops sampling."""

    def decode(
        self, z0: torch.Tensor, seeds: list[int], steps: int | None = None, sampler: str | None = None
    ) -> torch.Tensor:
        """z0 [N, *z_shape] -> x [N, *x_shape] in [-1, 1]."""

    def pixels_per_image(self) -> int:
        """The divisor of bits per pixel (video: per pixel per frame)."""

    def latent_shift(self, base_shift: float) -> float:
        """The base model's log-SNR schedule shift given base.shift."""


def denoise(
    net: Callable[..., torch.Tensor],
    x_t: torch.Tensor,
    lam: torch.Tensor,
    cond: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_hat = alpha x_t - sigma v (UL_SPEC 6) of a v-predicting network: the one place where the
    parameterisation of a network call is set. Precision is the caller's context: the training
    loop's autocast, or an inference method's `accel.autocast` (bf16 where training used it)."""
    a, s = (bcast(v, x_t) for v in alpha_sigma(lam))
    v = net(x_t, lam, cond=cond, labels=labels)  # [N, *x_t.shape[1:]]
    return x_from_v(x_t, v.float(), a, s)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class HostNoise:
    """Per-example random streams from CPU generators, copied to `device`."""

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


def seeded_noise(seeds: list[int], device=None, on_device: bool = False) -> HostNoise | CounterNoise:
    """Per-example random streams: example k's noise depends only on its seed, never on the
    batch it shares or the device count (DESIGN principle 8). `on_device` (accel.noise): drawn
    by one kernel on the device (objectives/noise.py CounterNoise) instead of per seed on the
    host and copied; the two give different numbers, each reproducible."""
    return CounterNoise(seeds, device or "cpu") if on_device else HostNoise(seeds, device)


def generation_noise(cfg: RunConfig, seeds: list[int], device) -> HostNoise | CounterNoise:
    """seeded_noise where `cfg`'s accel.noise puts it on `device`."""
    return seeded_noise(seeds, device, resolve(cfg, device).device_noise)


def elbo_bits(
    nats_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    z_shape: tuple[int, ...],
    noise: HostNoise | CounterNoise,
    device,
    n_t: int = 8,
) -> torch.Tensor:
    """Bits per example [N] of an ELBO: `nats_fn(t [N], eps [N, *z_shape]) -> nats [N]` averaged
    over n_t stratified t per example, drawn from `noise` (the held-out bitrate estimator; UL_SPEC 7)."""
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for k in range(n_t):
        t = torch.remainder(noise.uniform(()) + k / n_t, 1.0)
        total += nats_fn(t, noise.normal(z_shape)).double()
    return total / n_t / math.log(2)
