"""Training noise drawn per example, so each process draws only its own rows of the global batch.

Row i of a step's batch has its own generator, seeded by (step key, i): its numbers do not depend
on which process draws it, on how many processes there are, or on the rows around it. What is
shared by the whole batch (the offset of stratified t) comes from one generator seeded by the key
alone, which every process builds identically. So a run is the same on 1 or N processes and on
resume, and a process never materialises the noise of rows it does not train on.
"""

from __future__ import annotations

import torch

_MASK = (1 << 63) - 1
_ROW_STRIDE = 1 << 20  # rows per step key (a global batch is far smaller)


def step_key(seed: int, step: int) -> int:
    """The key of one optimisation step's randomness."""
    return (seed * 1_000_003 + step) & _MASK


class BatchNoise:
    """The random numbers of rows [lo, hi) of a global batch of n examples (objectives' draw_noise).

    Each call (normal, uniform, randint, stratified) draws one value or tensor per row, in call
    order, from that row's generator; tensors are created on `device`."""

    def __init__(self, key: int, n: int, lo: int = 0, hi: int | None = None, device="cpu"):
        hi = n if hi is None else hi
        if not 0 <= lo <= hi <= n or n >= _ROW_STRIDE:
            raise ValueError(f"rows [{lo}, {hi}) do not lie in a batch of {n}")
        self.n, self.lo, self.hi = n, lo, hi
        self.device = torch.device(device)
        base = (key * _ROW_STRIDE) & _MASK
        self._batch = torch.Generator(device="cpu").manual_seed(base)  # row -1: shared by all rows
        self._rows = [torch.Generator(device=self.device).manual_seed(base + 1 + i) for i in range(lo, hi)]

    def __len__(self) -> int:
        return self.hi - self.lo

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """[rows, *shape] standard normal."""
        return self._stack([torch.randn(shape, generator=g, device=self.device) for g in self._rows], shape)

    def uniform(self, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """[rows, *shape] uniform on [0, 1)."""
        return self._stack([torch.rand(shape, generator=g, device=self.device) for g in self._rows], shape)

    def randint(self, high: int) -> torch.Tensor:
        """[rows] integers uniform in [0, high)."""
        return self._stack([torch.randint(0, high, (), generator=g, device=self.device) for g in self._rows], (),
                           torch.int64)

    def stratified(self, stratified: bool = True) -> torch.Tensor:
        """[rows] t in [0, 1). Stratified: t_i = (u + i / n) mod 1 over the global batch with one
        offset u per batch (each of the n strata holds exactly one t); otherwise iid per row."""
        if not stratified:
            return self.uniform()
        u = torch.rand((), generator=self._batch)
        i = torch.arange(self.lo, self.hi, dtype=torch.float64)
        return torch.remainder(u.double() + i / self.n, 1.0).float().to(self.device)

    def _stack(self, parts: list[torch.Tensor], shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        if not parts:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        return torch.stack(parts)
