"""torch.distributed setup: torchrun's environment or a single process; rank-0 helpers."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import TrainingError, UserError


def init(device: str = "auto") -> torch.device:
    """Join the process group if launched by torchrun; return this process's device. `device`:
    "auto" (this process's GPU when there is one, else the CPU), "cuda" or "cpu"."""
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device must be auto, cuda or cpu, got {device!r}")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this PyTorch sees no GPU (torch.cuda.is_available() is False); use --device cpu")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    if use_cuda:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place and returned)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def broadcast_object(obj):
    """Rank 0's `obj` on every process (a small picklable value between our own processes)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_agree(flag: bool) -> bool:
    """True on every process when `flag` is true on every process."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=_collective_device())
    return all_sum(t).item() == 0


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def side_group():
    """A separate gloo group (all processes must call this together), so a background checkpoint
    write never shares a communicator with the training step; None in one process."""
    return dist.new_group(backend="gloo") if dist.is_initialized() else None


def on_main(fn, what: str):
    """Run `fn()` on rank 0 only; every process learns whether it worked, so a failure there
    (a full disk) raises everywhere instead of leaving the others waiting in a collective."""
    err = None
    if is_main():
        try:
            fn()
        except Exception as e:  # re-raised below on rank 0; reported on the others
            err = e
    if not all_agree(err is None):
        if err is not None:
            raise err
        raise TrainingError(f"rank 0 failed while {what}; see its message")


def my_share(n: int) -> tuple[int, int]:
    """This process's contiguous share [lo, hi) of n items (shares differ by at most one)."""
    w, r = world(), rank()
    return r * n // w, (r + 1) * n // w


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order, on every process (small values or CPU tensors)."""
    if not dist.is_initialized():
        return [obj]
    parts = [None] * world()
    dist.all_gather_object(parts, obj)
    return parts


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every process's `t` (its share, same trailing shape) concatenated in rank order, on every
    process, on the CPU. Shares may differ in length."""
    parts = gather_objects(t.cpu())
    return torch.cat([p for p in parts if p.shape[0]] or parts[:1])  # empty shares may lack the trailing shape


@contextmanager
def main_first():
    """Rank 0 runs the block first (filling a cache, say); the others run it after."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
