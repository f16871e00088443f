"""Classifier-free guidance as a wrapper around model functions (UL_SPEC 4)."""

from __future__ import annotations

import torch

from .samplers import ModelFn


def guided(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float, interval: list[float] | None = None) -> ModelFn:
    """x_hat = uncond + scale * (cond - uncond), applied where lam lies in `interval` = [lo, hi]
    (everywhere if empty); elsewhere, and at scale 1, the conditional prediction alone."""
    if scale == 1.0:
        return cond_fn
    lo, hi = (interval[0], interval[1]) if interval else (-float("inf"), float("inf"))

    def fn(z_t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        c = cond_fn(z_t, lam)
        inside = (lam >= lo) & (lam <= hi)
        if not bool(inside.any()):
            return c
        u = uncond_fn(z_t, lam)
        g = u + scale * (c - u)
        return torch.where(inside.view(-1, *([1] * (c.ndim - 1))), g, c)

    return fn
