"""Variance-preserving log-SNR schedules (UL_SPEC 1).

`x_t = alpha x + sigma eps` with `alpha^2 = sigmoid(lam)`, `sigma^2 = sigmoid(-lam)`.
The truncated cosine schedule `lam(t) = -2 log tan(u) + shift`, with `u` linear in `t`,
hits its endpoints exactly: `lam(0) = lam_max`, `lam(1) = lam_min`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma of a VP diffusion at log-SNR `lam` (computed stably, in the input's dtype)."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


@dataclass(frozen=True)
class CosineSchedule:
    lam_min: float
    lam_max: float
    shift: float = 0.0

    def _u_range(self) -> tuple[float, float]:
        # lam = -2 log tan(u) + shift  <=>  u = atan(exp(-(lam - shift) / 2)); u rises as lam falls.
        u0 = math.atan(math.exp(-(self.lam_max - self.shift) / 2))
        u1 = math.atan(math.exp(-(self.lam_min - self.shift) / 2))
        return u0, u1

    def _u(self, t: torch.Tensor) -> torch.Tensor:
        u0, u1 = self._u_range()
        return u0 + t * (u1 - u0)

    def lam(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64 if not torch.is_tensor(t) else t.dtype)
        out = -2.0 * torch.log(torch.tan(self._u(t))) + self.shift
        # Pin the endpoints exactly (float rounding in atan/tan would miss them by ~1e-6).
        out = torch.where(t <= 0, torch.full_like(out, self.lam_max), out)
        return torch.where(t >= 1, torch.full_like(out, self.lam_min), out)

    def neg_dlam_dt(self, t: torch.Tensor) -> torch.Tensor:
        """-dlam/dt > 0: d/du(-2 log tan u) = -4 / sin(2u), times du/dt = u1 - u0."""
        u0, u1 = self._u_range()
        return 4.0 * (u1 - u0) / torch.sin(2.0 * self._u(t))


def stratified_uniform(n: int, generator: torch.Generator | None, device=None, stratified: bool = True):
    """n draws of t in [0, 1): one shared offset spread over n strata, or iid."""
    if not stratified:
        return torch.rand(n, generator=generator, device=device)
    u = torch.rand((), generator=generator, device=device)
    return torch.remainder(u + torch.arange(n, device=device, dtype=torch.float32) / n, 1.0)
