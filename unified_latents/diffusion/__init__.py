"""Diffusion maths only: schedules, parameterisation, loss integrands, samplers. No I/O, no networks."""

from .schedule import CosineSchedule, alpha_sigma, stratified_uniform
from .param import eps_from_v, x_from_v, v_from_eps_x
from .losses import elbo_integrand, prior_terminal_kl, sigmoid_weight
from .samplers import SAMPLERS, sample_lams, run_sampler
