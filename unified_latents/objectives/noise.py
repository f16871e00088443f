"""Training noise drawn per example, so each process draws only its own rows of the global batch.

Row i of a step's batch has its own generator, seeded by (step key, i): its numbers do not depend
on which process draws it, on how many processes there are, or on the rows around it. What is
shared by the whole batch (the offset of stratified t) comes from one generator seeded by the key
alone, which every process builds identically. So a run is the same on 1 or N processes and on
resume, and a process never materialises the noise of rows it does not train on.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

_MASK = (1 << 63) - 1
_ROW_STRIDE = 1 << 20  # rows per step key (a global batch is far smaller)


def step_key(seed: int, step: int) -> int:
    """The key of one optimisation step's randomness."""
    return (seed * 1_000_003 + step) & _MASK


class RowNoise(Protocol):
    """What an objective's draw_noise draws from: BatchNoise, or a stand-in giving tensors of the
    same shapes (eval/memory.py MetaNoise, on the meta device)."""

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor: ...
    def uniform(self, shape: tuple[int, ...] = ()) -> torch.Tensor: ...
    def randint(self, high: int) -> torch.Tensor: ...
    def stratified(self, stratified: bool = True) -> torch.Tensor: ...


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
        return self._stack(
            [torch.randint(0, high, (), generator=g, device=self.device) for g in self._rows], (), torch.int64
        )

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


# --------------------------------------------------------------------------- generation noise on the device

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / golden ratio)


def _i64(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (products wrap; shifts made logical by masks):
    a bijection of 64-bit words whose every output bit depends on every input bit."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _i64(0xBF58476D1CE4E5B9)
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _i64(0x94D049BB133111EB)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class CounterNoise:
    """Per-example random streams computed on the device: value j of the c-th draw of example k is
    a hash of (seed k, c, j) (counter-based, like Philox), so one kernel draws a whole batch and
    example k's numbers depend only on its seed, never on the batch it shares or the device count.
    Normals by Box-Muller from two 23-bit uniforms of one 64-bit hash (tails reach about 5.9
    sigma). The same interface as the host streams (objectives/base.py seeded_noise); CPU and GPU
    give the same numbers up to float rounding of log/cos, not the host streams' numbers."""

    def __init__(self, seeds: list[int], device="cpu"):
        self.device = torch.device(device)
        keys = torch.tensor([_i64(int(s) * _GOLDEN) for s in seeds], dtype=torch.int64)
        self.keys = _mix(keys).to(self.device)  # [N]
        self.calls = 0

    def _words(self, shape: tuple[int, ...]) -> torch.Tensor:
        """[N, *shape] int64 hashes of (seed, this call, element)."""
        self.calls += 1
        n = math.prod(shape)
        stream = _mix(self.keys + _i64(self.calls * _GOLDEN))  # [N]: this call's key per example
        j = torch.arange(n, dtype=torch.int64, device=self.device) * _i64(_GOLDEN)
        return _mix(stream[:, None] + j[None]).reshape(len(self.keys), *shape)

    @staticmethod
    def _unit(words: torch.Tensor, shift: int) -> torch.Tensor:
        """23 bits of each word at `shift` as a float32 uniform strictly inside (0, 1): the centres
        of 2^23 equal cells (exact in float32, never 0 or 1: log-safe)."""
        return ((words >> shift) & 0x7FFFFF).to(torch.float32) * (1.0 / (1 << 23)) + (1.0 / (1 << 24))

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        w = self._words(tuple(shape))
        u1, u2 = self._unit(w, 40), self._unit(w, 8)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._unit(self._words(tuple(shape)), 40)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(tuple(x.shape[1:])).to(x.dtype)
