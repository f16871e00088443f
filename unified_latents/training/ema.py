"""Exponential moving average of a model's trainable parameters.

The EMA model is a copy of the model that shares its frozen parameters (stage 1 inside a base
model) instead of copying them: they never change, so the copy costs memory only for what is
trained, and the update touches only that. Buffers (the loss-factor controller's state) are
copied from the model after each update. Sharded (FSDP) models are averaged shard by shard.
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA(Generic[M]):
    def __init__(self, model: M, decay: float):
        self.decay = decay
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.model = copy.deepcopy(model, memo=dict(frozen)).eval()
        for p in self.model.parameters():
            if id(p) not in frozen:
                p.requires_grad_(False)

    @staticmethod
    def trainable(model: nn.Module) -> list[str]:
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def decay_at(self, step: int) -> float:
        """Warm-up: average uniformly over the first steps, then at the configured decay."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, ok: torch.Tensor | None = None) -> None:
        """Average in the model's weights after optimizer step `step`. `ok` (a 0-d bool tensor on the
        device): whether the device took that step; where it did not, the average is unchanged
        (weight 0), without a host read."""
        d = self.decay_at(step)
        src = dict(model.named_parameters())
        dst = dict(self.model.named_parameters())
        names = [n for n in self.trainable(model) if n in dst]
        if names:
            dsts, srcs = [_local(dst[n]) for n in names], [_local(src[n].detach()) for n in names]
            if ok is None:
                torch._foreach_lerp_(dsts, srcs, 1 - d)
            else:  # a list of 0-d weights: one 0-d tensor would be read as a Python scalar (a host read)
                torch._foreach_lerp_(dsts, srcs, [ok.to(dsts[0].dtype) * (1 - d)] * len(dsts))
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b if ok is None else torch.where(ok, b, e))  # a skipped step copies nothing
