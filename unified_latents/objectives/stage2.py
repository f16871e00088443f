"""Stage 2 of Unified Latents (UL_SPEC 4-5): a base diffusion model on the frozen encoder's
latents, and generation: base model from lam_min up to log-SNR 5 (the encoder's noise level,
stopping there), then the stage-1 decoder.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from torch import nn

from ..config import RunConfig, to_dict
from ..diffusion import (
    CosineSchedule,
    alpha_sigma,
    elbo_integrand,
    prior_terminal_kl,
    run_sampler,
    sample_lams,
    sigmoid_weight,
    stratified_uniform,
    x_from_v,
)
from ..diffusion.guidance import guided
from ..nn import build_denoiser
from .base import Losses, bcast, elbo_bits, seeded_noise
from .stage1 import UnifiedLatents, _autocast

DECODER_SEED_OFFSET = 7_919  # decoder noise of sample k uses seed k + offset (base uses k)


def encoder_fingerprint(stage1: UnifiedLatents) -> str:
    """sha256 of the encoder's config and weights: ties cached latents to one encoder."""
    h = hashlib.sha256()
    h.update(json.dumps(to_dict(stage1.cfg.model.encoder), sort_keys=True).encode())
    h.update(json.dumps([stage1.cfg.data.resolution, stage1.cfg.data.channels, stage1.cfg.model.latent_channels]).encode())
    for k, v in sorted(stage1.encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BaseModel(nn.Module):
    """Base diffusion model on z_clean with the sigmoid-weighted loss, lam in [lam_min, lam0].

    Holds the frozen stage-1 model (for decoding), so one artifact generates images."""

    def __init__(self, cfg: RunConfig, stage1: UnifiedLatents):
        super().__init__()
        self.cfg = cfg
        self.stage1 = stage1.eval().requires_grad_(False)
        ch = stage1.cfg.model.latent_channels
        self.num_classes = cfg.data.num_classes
        self.net = build_denoiser(cfg.model.base, stage1.dims, ch, ch, num_classes=self.num_classes)
        lam0 = stage1.cfg.diffusion.lam0  # the maximum log-SNR is the encoder's, not a free choice
        self.sched = CosineSchedule(stage1.cfg.diffusion.lam_z_min, lam0, cfg.base.shift)
        self.z_shape = stage1.z_shape
        self.x_shape = stage1.x_shape

    def train(self, mode: bool = True):
        super().train(mode)
        self.stage1.eval()  # frozen: never in training mode
        return self

    def artifact_metadata(self) -> dict:
        return {"stage1_config": to_dict(self.stage1.cfg), "encoder_fingerprint": encoder_fingerprint(self.stage1)}

    def pixels_per_image(self) -> int:
        return self.stage1.pixels_per_image()

    # ------------------------------------------------------------------ training

    def draw_noise(self, n: int, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
        return {
            "t": stratified_uniform(n, generator, device, self.stage1.cfg.diffusion.stratified),
            "eps": torch.randn((n, *self.z_shape), generator=generator, device=device),
            "drop": torch.rand(n, generator=generator, device=device),
        }

    def denoise(self, z_t: torch.Tensor, lam: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        a, s = (bcast(v, z_t) for v in alpha_sigma(lam))
        return x_from_v(z_t, self.net(z_t, lam, labels=labels).float(), a, s)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, noise: dict[str, torch.Tensor]) -> Losses:
        """z: z_clean [N, *z_shape] of the frozen encoder (never rescaled)."""
        if labels is not None and self.num_classes:
            null = torch.full_like(labels, self.num_classes)
            labels = torch.where(noise["drop"] < self.cfg.base.label_dropout, null, labels)
        elif self.num_classes:
            labels = None  # unconditional data: always the null label
        weighted, elbo = self.losses(z, labels, noise["t"], noise["eps"])
        return Losses(total=weighted, terms={"base_nats": weighted.detach(), "elbo_bits_per_image": elbo.detach() / math.log(2)})

    def losses(self, z, labels, t, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid(b_base - lam)-weighted loss, unweighted ELBO incl. terminal KL), nats [N],
        from one draw of (t, eps): the training loss and a bitrate estimate of the same draw."""
        lam = self.sched.lam(t)
        a, s = (bcast(v, z) for v in alpha_sigma(lam))
        z_hat = self.denoise(a * z + s * eps, lam, labels)
        ndl = self.sched.neg_dlam_dt(t)
        weighted = elbo_integrand(z, z_hat, lam, ndl, sigmoid_weight(lam, self.cfg.base.bias))
        elbo = elbo_integrand(z.detach(), z_hat.detach(), lam, ndl) + prior_terminal_kl(z, self.sched.lam_min)
        return weighted, elbo

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ generation

    def model_fn(self, labels: torch.Tensor | None, guidance: float = 1.0, interval: list[float] | None = None):
        """(z_t, lam) -> z_hat, with classifier-free guidance when labels are given."""

        def cond(z_t, lam):
            with _autocast(z_t.device):
                return self.denoise(z_t, lam, labels)

        if labels is None or not self.num_classes:
            return cond
        null = torch.full_like(labels, self.num_classes)

        def uncond(z_t, lam):
            with _autocast(z_t.device):
                return self.denoise(z_t, lam, null)

        return guided(cond, uncond, guidance, interval)

    @torch.no_grad()
    def sample_latents(self, seeds, labels=None, steps=None, sampler=None, guidance=None, interval=None):
        """z0 samples [N, *z_shape]: the base model run from lam_min up to lam0 = 5 and stopped
        there (the state at the encoder's noise level, NOT a final prediction)."""
        sc = self.cfg.sample
        noise = seeded_noise(seeds, next(self.net.parameters()).device)
        z = noise.normal(self.z_shape)
        lams = sample_lams(self.sched, steps or sc.base_steps, z.device)
        fn = self.model_fn(labels, sc.guidance if guidance is None else guidance,
                           sc.guidance_interval if interval is None else interval)
        return run_sampler(fn, z, lams, sampler or sc.sampler, noise.like)

    @torch.no_grad()
    def generate(self, seeds, labels=None, steps=None, decoder_steps=None, sampler=None, guidance=None, interval=None):
        """Images [N, *x_shape] in [-1, 1]: z0 from the base model, then the decoder."""
        z0 = self.sample_latents(seeds, labels, steps, sampler, guidance, interval)
        return self.stage1.decode(z0, [s + DECODER_SEED_OFFSET for s in seeds], decoder_steps, sampler)

    @torch.no_grad()
    def bits(self, z: torch.Tensor, labels: torch.Tensor | None, seeds: list[int], n_t: int = 8) -> torch.Tensor:
        """Unweighted-ELBO bitrate of z0 under the base model, bits per example [N] (Table 5's
        second column): the same estimator as the stage-1 prior's, with this network."""
        return elbo_bits(lambda t, eps: self.losses(z, labels, t, eps)[1], z.shape[0], self.z_shape, seeds, z.device, n_t)

    def previews(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        n = 16
        device = next(self.net.parameters()).device
        labels = torch.arange(n, device=device) % self.num_classes if self.num_classes else None
        return {"samples": self.generate(list(range(n)), labels)}
