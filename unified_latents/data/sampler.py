"""Deterministic data order: global sample position -> dataset index.

Epoch e is a permutation drawn from (seed, e), so the order depends only on the seed and
the number of samples seen: resuming at position p replays exactly what a straight run
would have seen, whatever the device count or per-device batch.
"""

from __future__ import annotations

import torch


class DataOrder:
    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch in memory
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Dataset indices of global sample positions [start, start + count)."""
        pos = torch.arange(start, start + count)
        out = torch.empty(count, dtype=torch.long)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm(epoch)[pos[sel] % self.n]
        return out
