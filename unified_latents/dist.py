"""torch.distributed setup: torchrun's environment or a single process; rank-0 helpers."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Literal, overload

import torch
import torch.distributed as dist

from .errors import TrainingError, UserError


def init(device: str = "auto") -> torch.device:
    """Join the process group if launched by torchrun; return this process's device. `device`:
    "auto" (this process's GPU when there is one, else the CPU), "cuda", "cuda:N" (GPU N, one
    process) or "cpu"."""
    index = _gpu_index(device)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {device}: this PyTorch sees no GPU (torch.cuda.is_available() is False); use --device cpu"
        )
    if not use_cuda:
        _join("gloo", None)
        return torch.device("cpu")
    if index is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError(
            f"--device {device} names one GPU; under torchrun each process takes its own: pass --device cuda"
        )
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible (cuda:0 ...)")
    gpu = torch.device("cuda", local_gpu() if index is None else index)
    torch.cuda.set_device(gpu)
    _join("nccl", gpu)
    return gpu


def _gpu_index(device: str) -> int | None:
    """N of "cuda:N"; None for auto, cuda and cpu; UserError for anything else."""
    if device in ("auto", "cuda", "cpu"):
        return None
    head, _, tail = device.partition(":")
    if head != "cuda" or not tail.isdigit():
        raise UserError(f"--device must be auto, cuda, cuda:N or cpu, got {device!r}")
    return int(tail)


def local_gpu() -> int:
    """This process's GPU index among the visible ones: LOCAL_RANK where every process of a node
    sees all its GPUs (torchrun), modulo the visible count where a launcher gives each process its
    own (srun with one GPU per task: LOCAL_RANK 3 and a single visible GPU, index 0)."""
    return int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())


def _join(backend: str, device: torch.device | None) -> None:
    """Join the process group when launched by torchrun (RANK and WORLD_SIZE set); binding NCCL to
    this process's GPU (device_id) lets it connect eagerly instead of guessing the device."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30), device_id=device)  # None: unbound


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


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for new tensors: on a GPU what the driver reports free, on the CPU the kernel's
    MemAvailable (Linux); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


def any_of(flags: list[bool]) -> list[bool]:
    """Each flag: true on any process (every process gets the same answer). Host values summed over
    a gloo group, so asking costs no device synchronisation."""
    if not dist.is_initialized():
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_objects_group())
    return [v > 0 for v in t.tolist()]


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
    """Run `fn()` on rank 0 only and return its result there (None elsewhere); every process learns
    whether it worked, so a failure there (a full disk) raises everywhere instead of leaving the
    others waiting in a collective."""
    err, out = None, None
    if is_main():
        try:
            out = fn()
        except Exception as e:  # re-raised below on rank 0; reported on the others
            err = e
    if not all_agree(err is None):
        if err is not None:
            raise err
        raise TrainingError(f"rank 0 failed while {what}; see its message")
    return out


def on_every(fn, what: str, error: type[Exception] = TrainingError):
    """fn() on every process; if it failed on any, every process raises (the failing one its own
    error, the others `error`), so no one is left waiting in the next collective and all take the
    same path. Returns this process's result."""
    err, out = None, None
    try:
        out = fn()
    except Exception as e:  # re-raised below, after every process knows
        err = e
    if not all_agree(err is None):
        raise err or error(f"another process failed while {what}; see its message")
    return out


def main_first(fn, what: str):
    """fn() on rank 0 first (filling a cache, say), then on the others."""
    out = on_main(fn, what)
    return out if is_main() else fn()


def my_share(n: int) -> tuple[int, int]:
    """This process's contiguous share [lo, hi) of n items (shares differ by at most one)."""
    w, r = world(), rank()
    return r * n // w, (r + 1) * n // w


# The gloo group of object gathers (created on first use, by every process at once).
_OBJECTS: list[dist.ProcessGroup] = []


def _objects_group():
    if not _OBJECTS:
        _OBJECTS.append(dist.new_group(backend="gloo"))  # CPU memory, never GPU memory, even under NCCL
    return _OBJECTS[0]


def gather_objects(obj, everyone: bool = True) -> list | None:
    """Every process's `obj` in rank order: on every process, or (everyone=False) on rank 0 only
    (None elsewhere). Small values or CPU tensors; sent over a gloo group."""
    if not dist.is_initialized():
        return [obj]
    group = _objects_group()
    if everyone:
        parts: list | None = [None] * world()
        dist.all_gather_object(parts, obj, group=group)
        return parts
    parts = [None] * world() if is_main() else None

    dist.gather_object(obj, parts, dst=0, group=group)
    return parts


@overload
def gather_cat(t: torch.Tensor, everyone: Literal[True] = True) -> torch.Tensor: ...
@overload
def gather_cat(t: torch.Tensor, everyone: bool) -> torch.Tensor | None: ...
def gather_cat(t: torch.Tensor, everyone: bool = True) -> torch.Tensor | None:
    """Every process's `t` (its share, same trailing shape) concatenated in rank order, on the CPU;
    on every process, or on rank 0 only (None elsewhere). Shares may differ in length."""
    parts = gather_objects(t.cpu(), everyone)
    if parts is None:
        return None
    return torch.cat([p for p in parts if p.shape[0]] or parts[:1])  # empty shares may lack the trailing shape
