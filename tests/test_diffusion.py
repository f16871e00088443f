"""UL_SPEC section 9: the maths checked against analytic answers."""

import math

import pytest
import torch
from torch import nn

from unified_latents.diffusion import (
    CosineSchedule,
    alpha_sigma,
    elbo_integrand,
    eps_from_v,
    run_sampler,
    sample_lams,
    v_from_eps_x,
    x_from_v,
)
from unified_latents.objectives import UnifiedLatents


@pytest.mark.parametrize("lo,hi,shift", [(-15, 5, 0.0), (-15, 15, 1.386), (-10, 10, -2.0)])
def test_schedule_endpoints_and_derivative(lo, hi, shift):
    s = CosineSchedule(lo, hi, shift)
    assert s.lam(torch.tensor(0.0)).item() == hi
    assert s.lam(torch.tensor(1.0)).item() == lo
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd = (s.lam(t + h) - s.lam(t - h)) / (2 * h)
    torch.testing.assert_close(s.neg_dlam_dt(t), -fd, rtol=1e-5, atol=1e-6)
    assert (s.neg_dlam_dt(t) > 0).all()
    assert (s.lam(t[1:]) < s.lam(t[:-1])).all()  # decreasing in t


def test_alpha_sigma_preserve_variance():
    lam = torch.linspace(-20, 20, 101, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(lam))
    torch.testing.assert_close(torch.log(a**2 / s**2), lam)
    a5, s5 = alpha_sigma(torch.tensor(5.0, dtype=torch.float64))
    assert abs(a5.item() - 0.9966) < 1e-4 and abs(s5.item() - 0.0818) < 1e-4


def test_parameterisation_round_trip_and_eps_x_identity():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g)
    lam = torch.linspace(-8, 8, 16).view(-1, 1, 1, 1)
    a, s = alpha_sigma(lam)
    z = a * x + s * eps
    v = v_from_eps_x(eps, x, a, s)
    torch.testing.assert_close(x_from_v(z, v, a, s), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_v(z, v, a, s), eps, atol=1e-5, rtol=1e-5)
    # ||eps - eps_hat||^2 = exp(lam) ||x - x_hat||^2 for any prediction (UL_SPEC 9)
    v_hat = v + 0.3 * torch.randn(v.shape, generator=g)
    e2 = ((eps - eps_from_v(z, v_hat, a, s)) ** 2).flatten(1).sum(1)
    x2 = ((x - x_from_v(z, v_hat, a, s)) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(e2, torch.exp(lam.flatten()) * x2, rtol=1e-4, atol=1e-5)


class GaussianOracle(nn.Module):
    """Optimal v-prediction for data ~ N(mu, std^2) (every dimension independent)."""

    def __init__(self, std: float, mu: float = 0.0):
        super().__init__()
        self.std, self.mu = std, mu

    def x_hat(self, z_t, lam):
        a, s = (v.view(-1, *([1] * (z_t.ndim - 1))) for v in alpha_sigma(lam.double()))
        gain = a * self.std**2 / (a**2 * self.std**2 + s**2)
        return (self.mu + gain * (z_t.double() - a * self.mu)).to(z_t.dtype)

    def forward(self, z_t, lam, cond=None, labels=None):
        a, s = (v.view(-1, *([1] * (z_t.ndim - 1))) for v in alpha_sigma(lam))
        return (a * z_t - self.x_hat(z_t, lam)) / s  # v such that x_from_v gives x_hat


@pytest.mark.parametrize("std", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_prior_loss_gaussian_oracle(tiny_cfg, std, shift):
    """E[L_z] = 0.5 ln(1 + s^2 e^5) nats per dimension, for any schedule with those endpoints."""
    model = UnifiedLatents(tiny_cfg)
    model.prior = GaussianOracle(std)
    model.sched_z = CosineSchedule(-15.0, 5.0, shift)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    z = std * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    t = torch.remainder(torch.rand((), generator=g) + torch.arange(n) / n, 1.0).double()
    eps = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        loss = model.prior_loss(z, t, eps)
    expected = 0.5 * math.log(1 + std**2 * math.exp(5))
    stderr = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - expected) < max(4 * stderr, 0.01 * expected), (loss.mean().item(), expected)


def test_prior_loss_is_sum_over_dimensions(tiny_cfg):
    model = UnifiedLatents(tiny_cfg)
    model.prior = GaussianOracle(1.0)
    z = torch.randn(4, 2, 4, 4)
    t, eps = torch.rand(4), torch.randn(4, 2, 4, 4)
    whole = model.prior_loss(z, t, eps)
    parts = sum(model.prior_loss(z[:, c : c + 1], t, eps[:, c : c + 1]) for c in range(2))
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++2m"])
def test_sampler_reproduces_gaussian_target(sampler):
    mu, std = 0.7, 0.5
    oracle = GaussianOracle(std, mu)
    sched = CosineSchedule(-15.0, 15.0)
    lams = sample_lams(sched, 200)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(40_000, 1, generator=g)

    def noise_fn(like):
        return torch.randn(like.shape, generator=g)

    out = run_sampler(oracle.x_hat, z, lams, sampler, noise_fn)
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() - std) < 0.01


def _flow_error(sampler: str, steps: int) -> float:
    """Largest error against the exact probability-flow map of Gaussian data N(mu, std^2): the
    flow keeps each z's standardised value, (z - alpha mu) / sqrt(alpha^2 std^2 + sigma^2)."""
    mu, std = 0.7, 0.5
    sched = CosineSchedule(-10.0, 5.0)
    lams = sample_lams(sched, steps).double()
    z0 = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    out = run_sampler(GaussianOracle(std, mu).x_hat, z0, lams, sampler, torch.zeros_like)
    (a0, s0), (a1, s1) = alpha_sigma(lams[0]), alpha_sigma(lams[-1])
    exact = a1 * mu + (z0 - a0 * mu) * (a1**2 * std**2 + s1**2).sqrt() / (a0**2 * std**2 + s0**2).sqrt()
    return (out - exact).abs().max().item()


def test_dpm_solver_is_second_order_and_beats_ddim_at_equal_calls():
    from unified_latents.cli.parser import SAMPLER_NAMES
    from unified_latents.diffusion import SAMPLERS

    assert sorted(SAMPLER_NAMES) == sorted(SAMPLERS)
    # one step: no history yet, so DPM-Solver++(2M) is DDIM, ending exactly at the grid's end
    assert _flow_error("dpm++2m", 1) == pytest.approx(_flow_error("ddim", 1), abs=1e-12)
    e16, e32, e64 = (_flow_error("dpm++2m", n) for n in (16, 32, 64))
    d16, d32 = _flow_error("ddim", 16), _flow_error("ddim", 32)
    assert e16 < d16 / 3 and e32 < d32 / 5  # closer at the same number of network calls
    assert 3.0 < e32 / e64 < 5.5  # halving the step quarters the error: second order
    assert 1.6 < d16 / d32 < 2.6  # DDIM: first order


def test_elbo_integrand_weight_is_sigmoid_of_b_minus_lam():
    from unified_latents.diffusion import sigmoid_weight

    lam = torch.tensor([-5.0, 0.0, 5.0])
    w = sigmoid_weight(lam, 0.0)
    assert w[0] > w[1] > w[2]  # falls as lam rises: fine detail discounted
    torch.testing.assert_close(w[1], torch.tensor(0.5))
    # exp(lam) sigmoid(b - lam) = exp(b) sigmoid(lam - b) (the paper's x-space form)
    b = 1.3
    torch.testing.assert_close(torch.exp(lam) * sigmoid_weight(lam, b), math.exp(b) * torch.sigmoid(lam - b))
    x, xh = torch.ones(3, 2), torch.zeros(3, 2)
    out = elbo_integrand(x, xh, lam, torch.ones(3), w)
    torch.testing.assert_close(out, 0.5 * torch.exp(lam) * w * 2)
