"""Deterministic data order: global sample position -> dataset index.

Epoch e is a permutation drawn from (seed, e), so the order depends only on the seed and
the number of samples seen: resuming at position p replays exactly what a straight run
would have seen, whatever the device count or per-device batch.
"""

from __future__ import annotations

import signal
from typing import Protocol

import torch
import torch.utils.data


class Examples(Protocol):
    """What training reads (ImageData, LatentData, ShardedLatents): its length, and the examples at
    some indices as (float x, labels or None)."""

    def __len__(self) -> int: ...

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


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


class MicroBatches(torch.utils.data.Dataset):
    """This process's micro-batches from global position `start` on, item k = the k-th one (in
    training order): what a DataLoader's workers decode ahead of the training step. An item is
    `data.get(indices)`, so it is the same whichever worker makes it."""

    def __init__(
        self, data: Examples, order: DataOrder, start: int, end: int, batch: int, rank: int, per_rank: int, micro: int
    ):
        self.data, self.order, self.start, self.batch = data, order, start, batch
        self.lo, self.micro, self.per_step = rank * per_rank, micro, per_rank // micro
        self.steps = max(0, (end - start + batch - 1) // batch)

    def __len__(self) -> int:
        return self.steps * self.per_step

    def __getitem__(self, k: int):
        step, j = divmod(k, self.per_step)
        idx = self.order.indices(self.start + step * self.batch, self.batch)
        return self.data.get(idx[self.lo + j * self.micro : self.lo + (j + 1) * self.micro])


def _ignore_stop_signals(_worker: int) -> None:
    """Workers leave SIGINT/SIGTERM to the training process, which checkpoints and then ends them
    (a scheduler signals every process of the job; a worker dying first would fail the step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def micro_batch_loader(dataset: MicroBatches, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """Items in order, decoded by `workers` processes ahead of use (0: in this process, on demand)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if workers else None,
    )
