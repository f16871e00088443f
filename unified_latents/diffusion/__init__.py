"""Diffusion maths only: schedules, parameterisation, loss integrands, samplers. No I/O, no networks."""

from .losses import elbo_integrand, prior_terminal_kl, sigmoid_weight
from .param import eps_from_v, v_from_eps_x, x_from_v
from .samplers import SAMPLERS, run_sampler, sample_lams
from .schedule import CosineSchedule, alpha_sigma, stratified_uniform

__all__ = [
    "CosineSchedule",
    "SAMPLERS",
    "alpha_sigma",
    "elbo_integrand",
    "eps_from_v",
    "prior_terminal_kl",
    "run_sampler",
    "sample_lams",
    "sigmoid_weight",
    "stratified_uniform",
    "v_from_eps_x",
    "x_from_v",
]
