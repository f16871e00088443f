"""v-parameterisation (UL_SPEC 6): v = alpha eps - sigma x."""

import torch


def x_from_v(z_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return alpha * z_t - sigma * v


def eps_from_v(z_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return sigma * z_t + alpha * v


def v_from_eps_x(eps: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return alpha * eps - sigma * x
