"""Loss integrands, in nats per example (sum over every non-batch dimension; UL_SPEC 3)."""

from __future__ import annotations

import math

import torch


def _sum_per_example(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def sigmoid_weight(lam: torch.Tensor, bias: float) -> torch.Tensor:
    """The decoder/base weight on the ELBO integrand: sigmoid(b - lam), falling as lam rises."""
    return torch.sigmoid(bias - lam)


def elbo_integrand(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    lam: torch.Tensor,
    neg_dlam_dt: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.5 (-dlam/dt) w(lam) exp(lam) ||x - x_hat||^2 per example, shape [N]; w = 1 if None.

    `lam`, `neg_dlam_dt` and `weight` are per example, shape [N].

    Equals 0.5 (-dlam/dt) w ||eps - eps_hat||^2 (UL_SPEC 3, eqs. 3-4, sign of dlam/dt fixed).
    """
    mse = _sum_per_example((x.float() - x_hat.float()) ** 2)
    w = neg_dlam_dt * torch.exp(lam)
    if weight is not None:
        w = w * weight
    return 0.5 * w * mse


def prior_terminal_kl(z_clean: torch.Tensor, lam_min: float) -> torch.Tensor:
    """KL(q(z_1 | x) || N(0, I)) at lam_min, per example, shape [N] (UL_SPEC 3)."""
    a2 = 1.0 / (1.0 + math.exp(-lam_min))  # alpha_1^2 = sigmoid(lam_min)
    const = -a2 - math.log1p(-a2)  # sigma_1^2 - 1 - log sigma_1^2, stable for tiny alpha_1
    return 0.5 * _sum_per_example(a2 * z_clean.float() ** 2 + const)
