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

from ..accel import autocast
from ..config import RunConfig, to_dict
from ..diffusion import (
    CosineSchedule,
    alpha_sigma,
    elbo_integrand,
    prior_terminal_kl,
    run_sampler,
    sample_lams,
    sigmoid_weight,
)
from ..diffusion.guidance import guided
from ..errors import ConfigError
from ..nn import build_denoiser
from .base import Autoencoder, Losses, bcast, denoise, elbo_bits, generation_noise
from .noise import RowNoise

DECODER_SEED_OFFSET = 7_919  # decoder noise of sample k uses seed k + offset (base uses k)
CONTEXT_SEED_OFFSET = 104_729  # the context latents' encoder noise (z0 = alpha0 z + sigma0 eps)


LATER_ENCODER_FIELDS = {"patch_t": 1, "time_down": -1}  # NetConfig fields added after the first release


def encoder_fingerprint(stage1: Autoencoder) -> str:
    """sha256 of the encoder's config and weights: ties cached latents to one encoder."""
    h = hashlib.sha256()
    enc = to_dict(stage1.cfg.model.encoder)
    for key, default in LATER_ENCODER_FIELDS.items():  # at their defaults they change nothing: old caches stay valid
        if enc.get(key) == default:
            enc.pop(key)
    h.update(json.dumps(enc, sort_keys=True).encode())
    h.update(
        json.dumps([stage1.cfg.data.resolution, stage1.cfg.data.channels, stage1.cfg.model.latent_channels]).encode()
    )
    if stage1.cfg.diffusion.learned_variance:  # cached latents are seeded samples, not the means of earlier versions
        h.update(b"latents: one seeded sample per example")
    for k, v in sorted(stage1.encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BaseModel(nn.Module):
    """Base diffusion model on z_clean with the sigmoid-weighted loss, lam in [lam_min, lam0].

    Holds the frozen stage-1 model (for decoding), so one artifact generates images.

    Video with `base.context`: the network also sees a prefix of known latent frames (their z0,
    masked, plus the mask) as a conditioning map. Training draws the prefix length per example
    uniformly from 0..T_latent-1 (0 = unconditional) and leaves the known frames out of the loss;
    sampling keeps them fixed (UL_SPEC 4: "Video: context frames")."""

    log_keys = ("base_nats", "elbo_bits_per_image")
    has_unused_parameters = False
    latent_scale: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, cfg: RunConfig, stage1: Autoencoder):
        super().__init__()
        self.cfg = cfg
        self.stage1 = stage1.eval().requires_grad_(False)
        ch = stage1.z_shape[0]
        self.num_classes = cfg.data.num_classes
        self.modality = stage1.modality
        self.context = bool(cfg.base.context) and self.modality.video
        self.net = build_denoiser(
            cfg.model.base, stage1.dims, ch, ch, cond_ch=ch + 1 if self.context else 0, num_classes=self.num_classes
        )
        lam0 = stage1.cfg.diffusion.lam0  # the maximum log-SNR is the encoder's, not a free choice
        self.sched = CosineSchedule(stage1.cfg.diffusion.lam_z_min, lam0, stage1.latent_shift(cfg.base.shift))
        # SD-style latent scale factor (only for baselines: UL never rescales, UL_SPEC 4). Set
        # from the training latents' std when base.scale_latents is on; saved with the weights.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.z_shape = stage1.z_shape
        self.x_shape = stage1.x_shape

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the scale factor existed were never rescaled.
        state_dict.setdefault(prefix + "latent_scale", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.stage1.eval()  # frozen: never in training mode
        return self

    def artifact_metadata(self) -> dict:
        return {"stage1_config": to_dict(self.stage1.cfg), "encoder_fingerprint": encoder_fingerprint(self.stage1)}

    def pixels_per_image(self) -> int:
        return self.stage1.pixels_per_image()

    # ------------------------------------------------------------------ training

    def draw_noise(self, rng: RowNoise) -> dict[str, torch.Tensor]:
        out = {
            "t": rng.stratified(self.stage1.cfg.diffusion.stratified),
            "eps": rng.normal(self.z_shape),
            "drop": rng.uniform(),
        }
        if self.context:  # drawn last: the image stream is unchanged
            out["ctx_k"] = rng.randint(self.z_shape[1])
            out["eps_ctx"] = rng.normal(self.z_shape)
        return out

    # ------------------------------------------------------------------ context (video)

    def context_mask(self, k: torch.Tensor) -> torch.Tensor:
        """[N] known latent frames -> mask [N, 1, T, 1, 1] (1 on the first k frames)."""
        frames = torch.arange(self.z_shape[1], device=k.device)
        return (frames[None] < k[:, None]).float().reshape(-1, 1, self.z_shape[1], 1, 1)

    def context_cond(
        self, z0_ctx: torch.Tensor | None, mask: torch.Tensor | None, n: int, device
    ) -> torch.Tensor | None:
        """The conditioning map [N, C + 1, *grid]: masked context z0 and the mask (zeros = none)."""
        if not self.context:
            return None
        if mask is None:
            return torch.zeros(n, self.z_shape[0] + 1, *self.z_shape[1:], device=device)
        assert z0_ctx is not None, "a context mask comes with the context's z0"
        m = mask.expand(-1, 1, *self.z_shape[1:])
        return torch.cat([z0_ctx * m, m], dim=1)

    def frames_per_latent(self) -> int:
        return self.x_shape[1] // self.z_shape[1]

    @torch.no_grad()
    def encode_context(self, clips: torch.Tensor, frames: int) -> tuple[torch.Tensor, int]:
        """Context clips float [N, C, T, H, W] in [-1, 1] of which the first `frames` are given ->
        (z_clean [N, *z_shape], known latent frames k). Frames from `frames` on are replaced by the
        last given one before encoding, so nothing after the context leaks in; only latent frames
        made entirely of given frames are kept (k = frames // frames_per_latent)."""
        if not self.context:
            raise ConfigError("this base model was trained without context frames (base.context=false)")
        per = self.frames_per_latent()
        k = frames // per
        if k < 1 or frames > self.x_shape[1]:
            raise ConfigError(
                f"--context-frames must be between {per} (one latent frame is {per} frames) and "
                f"{self.x_shape[1]}, got {frames}"
            )
        held = clips.clone()
        held[:, :, frames:] = clips[:, :, frames - 1 : frames]
        return self.stage1.encode(held), min(k, self.z_shape[1])

    def denoise(
        self, z_t: torch.Tensor, lam: torch.Tensor, labels: torch.Tensor | None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z_hat of the base network (no context given: the empty conditioning map)."""
        if cond is None and self.context:
            cond = self.context_cond(None, None, z_t.shape[0], z_t.device)
        return denoise(self.net, z_t, lam, cond, labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, noise: dict[str, torch.Tensor]) -> Losses:
        """z: z_clean [N, *z_shape] of the frozen encoder (never rescaled for UL)."""
        z = z * self.latent_scale
        if labels is not None and self.num_classes:
            null = torch.full_like(labels, self.num_classes)
            labels = torch.where(noise["drop"] < self.cfg.base.label_dropout, null, labels)
        elif self.num_classes:
            labels = None  # unconditional data: always the null label
        ctx = None
        if self.context:
            mask = self.context_mask(noise["ctx_k"])
            ctx = (mask, self.context_cond(self.stage1.noisy_latent(z, noise["eps_ctx"]), mask, z.shape[0], z.device))
        weighted, elbo = self.losses(z, labels, noise["t"], noise["eps"], ctx)
        return Losses(
            total=weighted, terms={"base_nats": weighted.detach(), "elbo_bits_per_image": elbo.detach() / math.log(2)}
        )

    def losses(self, z, labels, t, eps, ctx=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid(b_base - lam)-weighted loss, unweighted ELBO incl. terminal KL), nats [N],
        from one draw of (t, eps): the training loss and a bitrate estimate of the same draw.
        `ctx` = (mask, cond): known latent frames are conditioned on and carry no loss."""
        lam = self.sched.lam(t)
        a, s = (bcast(v, z) for v in alpha_sigma(lam))
        z_hat = self.denoise(a * z + s * eps, lam, labels, None if ctx is None else ctx[1])
        if ctx is not None:
            z_hat = ctx[0] * z + (1 - ctx[0]) * z_hat  # known frames: no error, no gradient
        ndl = self.sched.neg_dlam_dt(t)
        weighted = elbo_integrand(z, z_hat, lam, ndl, sigmoid_weight(lam, self.cfg.base.bias))
        elbo = elbo_integrand(z.detach(), z_hat.detach(), lam, ndl) + prior_terminal_kl(z, self.sched.lam_min)
        return weighted, elbo

    def after_step(self, metrics: dict, ok: torch.Tensor | None = None) -> dict:
        return {}

    # ------------------------------------------------------------------ generation

    def model_fn(
        self,
        labels: torch.Tensor | None,
        guidance: float = 1.0,
        interval: list[float] | None = None,
        ctx: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None,
    ):
        """(z_t, lam) -> z_hat, with classifier-free guidance when labels are given. With
        `ctx` = (mask, cond map, context z_clean) the known frames' prediction is their true
        z_clean, so every step keeps them consistent with the context."""
        cmap = None if ctx is None else ctx[1]

        def cond(z_t, lam):
            return self.denoise(z_t, lam, labels, cmap)

        fn = cond
        if labels is not None and self.num_classes:
            null = torch.full_like(labels, self.num_classes)

            def uncond(z_t, lam):
                return self.denoise(z_t, lam, null, cmap)

            fn = guided(cond, uncond, guidance, interval)
        if ctx is None:
            return fn
        mask, _, z_ctx = ctx
        return lambda z_t, lam: mask * z_ctx + (1 - mask) * fn(z_t, lam)

    @torch.no_grad()
    def sample_latents(self, seeds, labels=None, steps=None, sampler=None, guidance=None, interval=None, context=None):
        """z0 samples [N, *z_shape]: the base model run from lam_min up to lam0 = 5 and stopped
        there (the state at the encoder's noise level, NOT a final prediction).

        `context` = (z_clean [N, *z_shape], k): the first k latent frames are given; they come
        back as the context's own z0 (alpha0 z_clean + sigma0 eps), unchanged by the sampler."""
        device = next(self.net.parameters()).device
        with autocast(self.cfg, device):
            return self._sample_latents(seeds, labels, steps, sampler, guidance, interval, context, device)

    def _sample_latents(self, seeds, labels, steps, sampler, guidance, interval, context, device):
        sc = self.cfg.sample
        noise = generation_noise(self.cfg, seeds, device)
        z = noise.normal(self.z_shape)
        lams = sample_lams(self.sched, steps or sc.base_steps, z.device)
        ctx = None
        if context is not None:
            z_ctx, k = context
            z_ctx = z_ctx.to(device) * self.latent_scale
            mask = self.context_mask(torch.full((len(seeds),), int(k), device=device))
            z0_ctx = self.stage1.noisy_latent(
                z_ctx, generation_noise(self.cfg, [s + CONTEXT_SEED_OFFSET for s in seeds], device).normal(self.z_shape)
            )
            ctx = (mask, self.context_cond(z0_ctx, mask, len(seeds), device), z_ctx)
        fn = self.model_fn(
            labels,
            sc.guidance if guidance is None else guidance,
            sc.guidance_interval if interval is None else interval,
            ctx,
        )
        z = run_sampler(fn, z, lams, sampler or sc.sampler, noise.like)
        return z if ctx is None else ctx[0] * z0_ctx + (1 - ctx[0]) * z

    @torch.no_grad()
    def generate(
        self,
        seeds,
        labels=None,
        steps=None,
        decoder_steps=None,
        sampler=None,
        guidance=None,
        interval=None,
        context=None,
    ):
        """Images [N, *x_shape] in [-1, 1]: z0 from the base model, then the decoder."""
        z0 = self.sample_latents(seeds, labels, steps, sampler, guidance, interval, context) / self.latent_scale
        return self.stage1.decode(z0, [s + DECODER_SEED_OFFSET for s in seeds], decoder_steps, sampler)

    @torch.no_grad()
    def bits(self, z: torch.Tensor, labels: torch.Tensor | None, seeds: list[int], n_t: int = 8) -> torch.Tensor:
        """Unweighted-ELBO bitrate of z0 under the base model, bits per example [N] (Table 5's
        second column): the same estimator as the stage-1 prior's, with this network. With a latent
        scale factor the bits are those of the scaled latents."""
        z = z * self.latent_scale
        noise = generation_noise(self.cfg, seeds, z.device)
        with autocast(self.cfg, z.device):
            return elbo_bits(
                lambda t, eps: self.losses(z, labels, t, eps)[1], z.shape[0], self.z_shape, noise, z.device, n_t
            )

    @torch.no_grad()
    def image_bits(self, x: torch.Tensor, labels: torch.Tensor | None, seeds: list[int], n_t: int = 8) -> torch.Tensor:
        """Bits per example [N] of images x: this model's ELBO of the latent the decoder was trained
        on (encode_sample), plus a learned variance's entropy credit, counted as the prior's bits count it."""
        z, extra = self.stage1.encode_sample(x, seeds)
        return self.bits(z, labels, seeds, n_t) + extra.double() / math.log(2)

    def previews(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.modality.preview_samples
        device = next(self.net.parameters()).device
        labels = torch.arange(n, device=device) % self.num_classes if self.num_classes else None
        out = {"samples": self.generate(list(range(n)), labels)}
        if self.context:  # rows: the held-out clips' reconstructions, then continuations of their first latent frame
            z = z[:n].to(device)
            seeds = list(range(z.shape[0]))
            recon = self.stage1.decode(self.stage1.noisy_latent(z, torch.randn_like(z)), seeds)  # z: unscaled
            out["continuations"] = torch.cat([recon, self.generate(seeds, None, context=(z, 1))])
        return out
