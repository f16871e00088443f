"""Samplers as pure functions (UL_SPEC 5).

A model function maps `(z_t [N, ...], lam [N]) -> x_hat` (the clean-data prediction). Each
sampler takes one step from log-SNR `lam_t` to a higher `lam_s`, given the previous step's
(x_hat, lam) as `prev` (None on the first step; only the multistep DPM-Solver++(2M) uses it);
`run_sampler` walks a grid
and returns the state at the last log-SNR (NOT a final prediction: the base model's output
is the noisy z0 at log-SNR 5, which the decoder then consumes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedule import CosineSchedule, alpha_sigma

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]  # like(tensor) -> standard normal noise


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def ancestral_step(z_t, x_hat, lam_t, lam_s, noise_fn: NoiseFn, prev=None):
    """Sample q(z_s | z_t, x = x_hat): c = -expm1(lam_t - lam_s), var = sigma_s^2 c."""
    a_t, _ = alpha_sigma(lam_t)
    a_s, s_s = alpha_sigma(lam_s)
    c = -torch.expm1(lam_t - lam_s)
    mean = a_s * ((1 - c) * z_t / a_t + c * x_hat)
    return mean + s_s * c.sqrt() * noise_fn(z_t)


def ddim_step(z_t, x_hat, lam_t, lam_s, noise_fn: NoiseFn | None, prev=None):
    """Deterministic: z_s = alpha_s x_hat + sigma_s eps_hat (`noise_fn` is not used)."""
    a_t, s_t = alpha_sigma(lam_t)
    a_s, s_s = alpha_sigma(lam_s)
    eps_hat = (z_t - a_t * x_hat) / s_t
    return a_s * x_hat + s_s * eps_hat


def dpmpp_2m_step(z_t, x_hat, lam_t, lam_s, noise_fn: NoiseFn | None, prev=None):
    """DPM-Solver++(2M) (Lu et al. 2022) in this file's log-SNR: with h = (lam_s - lam_t) / 2 (the
    solver's half-log-SNR step), z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D, where
    D = x_hat on the first step (which is exactly DDIM) and afterwards the linear extrapolation
    D = (1 + 1/(2r)) x_hat - 1/(2r) x_prev, with r = h_prev / h, from `prev` = (x_prev, lam_prev),
    the previous step's prediction and log-SNR. Deterministic, second order in the step size."""
    a_s, s_s = alpha_sigma(lam_s)
    _, s_t = alpha_sigma(lam_t)
    h = (lam_s - lam_t) / 2
    d = x_hat
    if prev is not None:
        x_prev, lam_prev = prev
        r = (lam_t - lam_prev) / 2 / h
        d = (1 + 1 / (2 * r)) * x_hat - x_prev / (2 * r)
    return (s_s / s_t) * z_t - a_s * torch.expm1(-h) * d


SAMPLERS = {"ancestral": ancestral_step, "ddim": ddim_step, "dpm++2m": dpmpp_2m_step}


def sample_lams(schedule: CosineSchedule, steps: int, device=None) -> torch.Tensor:
    """steps + 1 log-SNRs from lam_min up to lam_max (uniform in t, the schedule's spacing)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return schedule.lam(t).to(device=device, dtype=torch.float32)


def run_sampler(model_fn: ModelFn, z_init: torch.Tensor, lams: torch.Tensor, sampler: str, noise_fn: NoiseFn):
    """Walk z from lams[0] to lams[-1]; returns the state at lams[-1]."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    step = SAMPLERS[sampler]
    z = z_init
    n = z.shape[0]
    prev = None  # (x_hat, lam) of the previous step: the multistep solver's history
    for i in range(len(lams) - 1):
        lam_t = lams[i].expand(n)
        lam_s = lams[i + 1].expand(n)
        x_hat = model_fn(z, lam_t)
        lt = _bcast(lam_t, z)
        z = step(z, x_hat, lt, _bcast(lam_s, z), noise_fn, prev)
        prev = (x_hat, lt)
    return z
