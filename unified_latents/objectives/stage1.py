"""Stage 1 of Unified Latents (UL_SPEC 2-3): encoder, diffusion prior and diffusion decoder
trained jointly on L = L_z + c_lf * L_x, both in nats per example.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..accel import autocast
from ..config import NetConfig, RunConfig
from ..data.modality import modality_of
from ..diffusion import (
    CosineSchedule,
    alpha_sigma,
    elbo_integrand,
    prior_terminal_kl,
    run_sampler,
    sample_lams,
    sigmoid_weight,
)
from ..errors import ConfigError
from ..nn import build_denoiser, build_encoder, check_grid, encoder_grid
from .base import Losses, bcast, denoise, elbo_bits, generation_noise
from .noise import RowNoise

MEAN_SEED_OFFSET = 3_000_017  # decoder seeds of the j-th sample averaged by reconstruct(mean_of=K)
VARIANCE_SEED_OFFSET = 2_000_003  # a learned variance's eps for example seed s: seed s + this


def latent_shape(cfg: RunConfig) -> tuple[int, ...]:
    """[latent_channels, *grid] that the encoder produces for the configured input size."""
    m = modality_of(cfg.data)
    grid = encoder_grid(cfg.model.encoder, m.dims, m.example_shape(cfg.data)[1:])
    return (cfg.model.latent_channels, *grid)


def check_grids(cfg: RunConfig, base: NetConfig | None = None) -> None:
    """Before training: ConfigError when the input grid does not fit the encoder or decoder, or
    the latent grid the prior (and `base`, a base model's network). Artifacts are not checked
    when loaded: what trained has run."""
    m = modality_of(cfg.data)
    size = m.example_shape(cfg.data)[1:]
    fix = (
        "set data.resolution"
        + (" and data.frames" if m.video else "")
        + " to a multiple of the patch, at least the downsampling"
    )
    check_grid(cfg.model.encoder, m.dims, size, "encoder", fix)
    per_frame = cfg.model.decoder.per_frame and m.video  # a 2-D network on each frame (else build_denoiser refuses it)
    check_grid(cfg.model.decoder, 2 if per_frame else m.dims, size[1:] if per_frame else size, "decoder", fix)
    grid = latent_shape(cfg)[1:]
    if cfg.diffusion.prior_kind == "diffusion":
        check_grid(
            cfg.model.prior,
            m.dims,
            grid,
            "prior (on the latent grid)",
            "give model.prior fewer levels or a smaller patch, or the input more pixels",
        )
    if base is not None:
        check_grid(
            base, m.dims, grid, "base model (on the latent grid)", "give model.base fewer levels or a smaller patch"
        )


@functools.lru_cache(maxsize=8)
def _alpha_sigma0(lam0: float) -> tuple[float, float]:
    """alpha(lam0), sigma(lam0) as Python floats, computed once (not read back from a tensor every
    training step)."""
    a, s = alpha_sigma(torch.tensor(lam0, dtype=torch.float64))
    return float(a), float(s)


class UnifiedLatents(nn.Module):
    """Holds E, P, D. `forward(x, labels, noise)` returns the stage-1 loss terms per example.
    Images and video share every line: `dims` (2 or 3) only picks the convolution type."""

    log_loss_factor: torch.Tensor  # buffers (registered in __init__)
    controlled_bits: torch.Tensor

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.modality = modality_of(cfg.data)
        self.dims = self.modality.dims
        m, d, c = cfg.model, cfg.diffusion, cfg.data.channels
        if d.prior_kind not in ("diffusion", "gaussian"):
            raise ConfigError(f"diffusion.prior_kind must be 'diffusion' or 'gaussian', got {d.prior_kind!r}")
        if d.decoder_kind not in ("diffusion", "mse"):
            raise ConfigError(f"diffusion.decoder_kind must be 'diffusion' or 'mse', got {d.decoder_kind!r}")
        out_ch = m.latent_channels * (2 if d.learned_variance else 1)  # mean (and log-variance)
        self.encoder = build_encoder(m.encoder, self.dims, c, out_ch)
        self.prior = build_denoiser(m.prior, self.dims, m.latent_channels, m.latent_channels)
        self.x_shape = self.modality.example_shape(cfg.data)
        self.z_shape = latent_shape(cfg)
        self.decoder = build_denoiser(
            m.decoder,
            self.dims,
            c,
            c,
            cond_ch=m.latent_channels,
            cond_frames=self.z_shape[1] if self.modality.video else 0,
        )
        self.sched_z = CosineSchedule(d.lam_z_min, d.lam0)
        self.sched_x = CosineSchedule(d.lam_x_min, d.lam_x_max, cfg.pixel_shift())
        # The loss factor is state (the bitrate controller moves it), so it is saved and restored.
        # DDP must not wait for gradients of a network an ablation leaves unused.
        self.has_unused_parameters = d.prior_kind != "diffusion"
        self.register_buffer("log_loss_factor", torch.tensor(math.log(d.loss_factor), dtype=torch.float64))
        # the controller's smoothed bitrate (starting at the target), saved and restored like c_lf
        self.register_buffer("controlled_bits", torch.tensor(float(d.target_bits), dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states and artifacts written before the smoothed bitrate existed: it starts afresh
        state_dict.setdefault(
            prefix + "controlled_bits", torch.tensor(float(self.cfg.diffusion.target_bits), dtype=torch.float64)
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    log_keys = ("prior_nats", "decoder_nats", "bits_per_image", "bpp", "loss_factor", "controlled_bits")

    def artifact_metadata(self) -> dict:
        return {}

    def latent_shift(self, base_shift: float) -> float:
        return base_shift  # UL latents: the base model's own shift

    @property
    def loss_factor(self) -> float:
        return float(self.log_loss_factor.exp())

    @property
    def decoder_net(self) -> nn.Module:
        """What a decoding step runs (the Autoencoder interface; FLOP counts use it)."""
        return self.decoder

    def pixels_per_image(self) -> int:
        """H * W, or T * H * W for video: bits per pixel are per pixel per frame (UL_SPEC 3)."""
        return math.prod(self.x_shape[1:])

    # ------------------------------------------------------------------ noise

    def draw_noise(self, rng: RowNoise) -> dict[str, torch.Tensor]:
        """Every random number this process's rows of the global batch need (objectives/noise.py)."""
        strat = self.cfg.diffusion.stratified
        out = {
            "t_z": rng.stratified(strat),
            "t_x": rng.stratified(strat),
            "eps_z0": rng.normal(self.z_shape),
            "eps_z": rng.normal(self.z_shape),
            "eps_x": rng.normal(self.x_shape),
        }
        if self.cfg.diffusion.learned_variance:  # drawn last: UL's own stream is unchanged
            out["eps_var"] = rng.normal(self.z_shape)
        if self.cfg.diffusion.cond_aug > 0:  # likewise
            out["u_aug"] = rng.uniform()
            out["eps_aug"] = rng.normal(self.z_shape)
        return out

    # ------------------------------------------------------------------ pieces

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_clean [N, *z_shape] (the mean, when the encoder also predicts a variance)."""
        with autocast(self.cfg, x.device):
            return self.encode_stats(x)[0]

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log sigma_z^2 or None): the encoder's output, split when it learns a variance."""
        h = self.encoder(x).float()
        if not self.cfg.diffusion.learned_variance:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample_latent(self, x: torch.Tensor, eps_var: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_clean, extra nats [N]). With a learned variance z_clean = mean + sigma_z eps and the
        extra term -0.5 sum log(sigma_z^2 e^lam0 + 1) credits its entropy (UL_SPEC 8); else (mean, 0)."""
        mean, logvar = self.encode_stats(x)
        if logvar is None:
            return mean, torch.zeros(mean.shape[0], device=mean.device)
        assert eps_var is not None, "a learned variance needs its noise eps_var"
        lam0 = self.cfg.diffusion.lam0
        extra = -0.5 * torch.log1p(torch.exp(logvar + lam0)).flatten(1).sum(1)
        return mean + torch.exp(0.5 * logvar) * eps_var, extra

    def encode_sample(self, x: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_clean, extra nats [N]) as the decoder was trained on them: the encoder's output, or with
        a learned variance one sample mean + sigma_z eps (eps seeded per example: seed s + 2,000,003)
        and its entropy credit. What stage 2 trains on and what every bitrate is measured on."""
        eps = None
        if self.cfg.diffusion.learned_variance:
            eps = generation_noise(self.cfg, [s + VARIANCE_SEED_OFFSET for s in seeds], x.device).normal(self.z_shape)
        with autocast(self.cfg, x.device):
            return self.sample_latent(x, eps)

    def noisy_latent(self, z_clean: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z0 = alpha(lam0) z_clean + sigma(lam0) eps: the latent the decoder sees (UL_SPEC 2)."""
        a, s = _alpha_sigma0(self.cfg.diffusion.lam0)
        return a * z_clean + s * eps

    def augmented_cond(self, z0: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z0 at lam0 -> the same latent at lam = lam0 - u * cond_aug (u [N] in [0, 1)), by the
        forward process from lam0 on: z_lam = (alpha/alpha0) z0 + sqrt(sigma^2 - (alpha sigma0 / alpha0)^2) eps,
        which is alpha z_clean + sigma eps' in distribution (variance preserving)."""
        lam0 = self.cfg.diffusion.lam0
        lam = lam0 - u.float() * self.cfg.diffusion.cond_aug
        a, s = alpha_sigma(lam)
        a0, s0 = _alpha_sigma0(lam0)
        r = a / a0
        extra = torch.sqrt((s**2 - (r * s0) ** 2).clamp_min(0.0))
        return bcast(r, z0) * z0 + bcast(extra, z0) * eps

    def prior_loss(self, z_clean: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Unweighted ELBO of z0 under the prior + terminal KL, nats per example [N] (eq. 3).

        Gradients reach the encoder through z_t AND through the target z_clean. With the
        'gaussian' ablation: KL(N(alpha0 z, sigma0^2) || N(0, I)) instead (unweighted: `forward`
        applies diffusion.kl_weight to the whole KL, this is also the bitrate meter)."""
        if self.cfg.diffusion.prior_kind == "gaussian":
            return prior_terminal_kl(z_clean, self.cfg.diffusion.lam0)
        lam = self.sched_z.lam(t)
        a, s = (bcast(v, z_clean) for v in alpha_sigma(lam))
        z_hat = denoise(self.prior, a * z_clean + s * eps, lam)
        diff = elbo_integrand(z_clean, z_hat, lam, self.sched_z.neg_dlam_dt(t))
        return diff + prior_terminal_kl(z_clean, self.cfg.diffusion.lam_z_min)

    def regress(self, z0: torch.Tensor) -> torch.Tensor:
        """The 'mse' ablation's deterministic decoder: x_hat from z0 alone (no noisy input)."""
        zeros = torch.zeros(z0.shape[0], *self.x_shape, device=z0.device)
        return self.decoder(zeros, torch.zeros(z0.shape[0], device=z0.device), cond=z0).float()

    def decoder_loss(self, x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sigmoid-weighted ELBO of x given z0, nats per example [N], before the loss factor (eq. 4).
        With the 'mse' ablation: ||x - x_hat||^2 / (2 mse_sigma^2) (Gaussian likelihood, no constant)."""
        if self.cfg.diffusion.decoder_kind == "mse":
            return ((x.float() - self.regress(z0)) ** 2).flatten(1).sum(1) / (2 * self.cfg.diffusion.mse_sigma**2)
        lam = self.sched_x.lam(t)
        a, s = (bcast(v, x) for v in alpha_sigma(lam))
        x_hat = denoise(self.decoder, a * x + s * eps, lam, cond=z0)
        w = sigmoid_weight(lam, self.cfg.diffusion.bias)
        return elbo_integrand(x, x_hat, lam, self.sched_x.neg_dlam_dt(t), w)

    # ------------------------------------------------------------------ objective

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, noise: dict[str, torch.Tensor]) -> Losses:
        z_clean, extra = self.sample_latent(x, noise.get("eps_var"))
        z0 = self.noisy_latent(z_clean, noise["eps_z0"])
        d = self.cfg.diffusion
        z_prior = z_clean.detach() if d.prior_stop_grad else z_clean
        l_z = self.prior_loss(z_prior, noise["t_z"], noise["eps_z"]) + extra
        # Stop-grad (paper Table 6 row A): the prior no longer regularises the encoder, a strongly
        # discounted KL of z0 to N(0, I) does; l_z stays the prior's honest bitrate of z0.
        reg = d.stop_grad_kl_weight * prior_terminal_kl(z_clean, d.lam0) if d.prior_stop_grad else 0.0
        z_dec = self.augmented_cond(z0, noise["u_aug"], noise["eps_aug"]) if d.cond_aug > 0 else z0
        l_x = self.decoder_loss(x, z_dec, noise["t_x"], noise["eps_x"])
        c_lf = self.log_loss_factor.exp().float()
        ln2_pixels = math.log(2) * self.pixels_per_image()
        # beta-VAE style: the KL weight scales the whole KL, the learned variance's entropy included
        w_z = d.kl_weight if d.prior_kind == "gaussian" else 1.0
        return Losses(
            total=w_z * l_z + c_lf * l_x + reg,
            terms={
                "prior_nats": l_z.detach(),
                "decoder_nats": l_x.detach(),
                "bits_per_image": l_z.detach() / math.log(2),
                "bpp": l_z.detach() / ln2_pixels,
                # the sigmoid-weighted decoder loss before c_lf, per pixel in bits: not a bitrate
                "decoder_weighted_bpp": l_x.detach() / ln2_pixels,
            },
        )

    @torch.no_grad()
    def after_step(self, metrics: dict, ok: torch.Tensor | None = None) -> dict:
        """Bitrate controller: dual ascent on log c_lf toward `target_bits` (bits per image).

        Too many bits -> lower c_lf (decoder loss cheaper, latent less useful) and vice versa. It
        holds c_lf for the first `controller_hold_samples` (an untrained prior charges ~700 bits
        for anything, and answering that collapses the latent), then follows an EMA of the batch
        bitrate (an EMA that starts at the target), and moves log c_lf by at most `controller_rate` per
        step (relative error clipped to 1). Computed on the buffers' device (no host read);
        `ok` False (a step the device skipped) leaves both buffers as they were."""
        d, llf, held = self.cfg.diffusion, self.log_loss_factor, self.controlled_bits
        if not (d.target_bits > 0 and metrics.get("samples", math.inf) > d.controller_hold_samples):
            return {"loss_factor": llf.exp()}
        bits = torch.as_tensor(metrics["bits_per_image"], dtype=torch.float64, device=llf.device)
        smooth = d.controller_smoothing * held + (1 - d.controller_smoothing) * bits
        err = ((smooth - d.target_bits) / d.target_bits).clamp(-1.0, 1.0)
        new = (llf - d.controller_rate * err).clamp(math.log(d.controller_min), math.log(d.controller_max))
        if ok is not None:
            smooth, new = torch.where(ok, smooth, held), torch.where(ok, new, llf)
        held.copy_(smooth)
        llf.copy_(new)
        return {"loss_factor": llf.exp(), "controlled_bits": held.clone()}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def decode(self, z0: torch.Tensor, seeds: list[int], steps: int | None = None, sampler: str | None = None):
        """Decoder sample x [N, *x_shape] in [-1, 1] given z0 (UL_SPEC 5 step 2)."""
        with autocast(self.cfg, z0.device):
            return self._decode(z0, seeds, steps, sampler)

    def _decode(self, z0: torch.Tensor, seeds: list[int], steps: int | None, sampler: str | None):
        if self.cfg.diffusion.decoder_kind == "mse":
            return self.regress(z0).clamp(-1, 1)
        sc = self.cfg.sample
        steps, sampler = steps or sc.decoder_steps, sampler or sc.sampler
        noise = generation_noise(self.cfg, seeds, z0.device)
        x = noise.normal(self.x_shape)
        lams = sample_lams(self.sched_x, steps, z0.device)

        def model_fn(x_t, lam):
            return denoise(self.decoder, x_t, lam, cond=z0)

        x = run_sampler(model_fn, x, lams, sampler, noise.like)
        lam_end = lams[-1].expand(x.shape[0])
        return model_fn(x, lam_end).clamp(-1, 1)  # final prediction at lam_x_max

    @torch.no_grad()
    def decode_clean(
        self, z_clean: torch.Tensor, seeds: list[int], steps: int | None = None, sampler: str | None = None
    ):
        """Decoder sample given z_clean: the log-SNR-5 noise drawn from seed + 1,000,003 as in
        `reconstruct`, so decode_clean(encode(x)) is reconstruct(x) (the encoder mean, with a learned variance)."""
        eps = generation_noise(self.cfg, [s + 1_000_003 for s in seeds], z_clean.device).normal(self.z_shape)
        return self.decode(self.noisy_latent(z_clean, eps), seeds, steps, sampler)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, seeds: list[int], steps: int | None = None, sampler: str | None = None, mean_of: int = 1
    ):
        """x -> z_clean -> z0 (fresh noise per seed) -> decoder sample; with `mean_of` K > 1, the
        mean of K decoder samples of the same z0 (an estimate of E[x | z0], the squared-error
        optimal reconstruction; sample j uses decoder seeds offset by j * MEAN_SEED_OFFSET)."""
        if mean_of < 1:
            raise ValueError(f"mean_of={mean_of}: the number of decoder samples to average must be 1 or more")
        noise = generation_noise(self.cfg, [s + 1_000_003 for s in seeds], x.device)
        eps = noise.normal(self.z_shape)
        with autocast(self.cfg, x.device):
            z_clean, _ = self.sample_latent(
                x, noise.normal(self.z_shape) if self.cfg.diffusion.learned_variance else None
            )
        z0 = self.noisy_latent(z_clean, eps)
        out = self.decode(z0, seeds, steps, sampler)
        if self.cfg.diffusion.decoder_kind == "mse":
            return out  # a regression decoder is deterministic: every sample is this one
        for j in range(1, mean_of):
            out = out + self.decode(z0, [s + j * MEAN_SEED_OFFSET for s in seeds], steps, sampler)
        return out / mean_of

    @torch.no_grad()
    def bits(self, x: torch.Tensor, seeds: list[int], n_t: int = 8) -> torch.Tensor:
        """Prior bitrate estimate per example in bits [N]: L_z averaged over n_t stratified t."""
        z_clean, extra = self.encode_sample(x, seeds)
        noise = generation_noise(self.cfg, seeds, x.device)
        with autocast(self.cfg, x.device):
            bits = elbo_bits(
                lambda t, eps: self.prior_loss(z_clean, t, eps), x.shape[0], self.z_shape, noise, x.device, n_t
            )
        return bits + extra.double() / math.log(2)

    def previews(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images worth a look during training: originals above reconstructions."""
        seeds = list(range(x.shape[0]))
        return {"reconstructions": torch.cat([x, self.reconstruct(x, seeds)], dim=0)}
