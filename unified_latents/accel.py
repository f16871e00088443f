"""Every device-dependent performance choice, resolved in one place.

`resolve(cfg, device)` turns the config's `accel` section (config.py AccelConfig) into an `Accel`:
bf16 autocast, channels-last memory, TF32, the fused AdamW kernel, pinned memory with
non-blocking copies, cuDNN autotuning and where generation noise is drawn. "auto" picks by device
(on for CUDA); "on"/"off" force a choice on any device. The rest of the package asks the resolved
`Accel`, never the device type, so every path a GPU takes is one a CPU test can take too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .config import RunConfig

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank: 2-D and 3-D convolutions


@dataclass(frozen=True)
class Accel:
    device: torch.device
    amp: bool  # bf16 autocast around network calls (fp32 master weights, fp32 losses)
    channels_last: bool
    tf32: bool
    fused_adam: bool
    pin_memory: bool  # pinned host batches, copied with non_blocking=True
    cudnn_benchmark: bool
    device_noise: bool  # generation noise from counter-based streams on the device (objectives/noise.py)
    workers: int  # DataLoader processes decoding training batches ahead of the step

    def autocast(self):
        """bf16 autocast on this device, or nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def to_device(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """A host batch on the device (asynchronously from pinned memory), in this layout."""
        if x is None:
            return None
        return self.layout(x.to(self.device, non_blocking=self.pin_memory))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input feature map in the memory format of the convolutions it meets."""
        fmt = FORMATS.get(x.dim()) if self.channels_last else None
        return x.contiguous(memory_format=fmt) if fmt is not None else x


def _pick(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def resolve(cfg: RunConfig, device: torch.device | str) -> Accel:
    """The choices of `cfg.accel` on `device` ("auto" = on for CUDA; amp also needs train.amp)."""
    device = torch.device(device)
    a, cuda = cfg.accel, device.type == "cuda"
    return Accel(
        device=device,
        amp=_pick(a.amp, cuda and cfg.train.amp),
        channels_last=_pick(a.channels_last, cuda),
        tf32=_pick(a.tf32, cuda),
        fused_adam=_pick(a.fused_adam, cuda),
        pin_memory=_pick(a.pin_memory, cuda),
        cudnn_benchmark=_pick(a.cudnn_benchmark, cuda),
        device_noise=a.noise == "device" or (a.noise == "auto" and cuda),
        workers=cfg.data.workers if cfg.data.workers >= 0 else auto_workers(cuda),
    )


def auto_workers(cuda: bool) -> int:
    """data.workers=-1: on CUDA, 4 loader processes per training process (at most the CPUs each
    process has, less one for itself), so decoding overlaps the GPU step; none elsewhere (a CPU
    trainer needs its cores for the step)."""
    if not cuda:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(4, per_process - 1))


def autocast(cfg: RunConfig, device: torch.device | str):
    """bf16 autocast around inference network calls where training used it (accel.amp)."""
    return resolve(cfg, device).autocast()


def apply_backends(acc: Accel) -> None:
    """The process-wide switches: TF32 for float32 matmuls and convolutions, cuDNN autotuning. Set
    through set_float32_matmul_precision and cudnn.allow_tf32, which torch keeps in step with its
    per-backend `fp32_precision` switches (setting only those makes the older getters raise, and
    torch.compile's autotuning reads them)."""
    torch.set_float32_matmul_precision("high" if acc.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = acc.tf32
    torch.backends.cudnn.benchmark = acc.cudnn_benchmark


@contextmanager
def exact_fp32():
    """Float32 without TF32 and without autocast, whatever the process has switched on: for the
    Inception features of FID, which are compared with features computed elsewhere."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def to_channels_last(module: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer channels-last and every 5-D one channels-last-3d (Conv3d's
    weights: `Module.to(memory_format=channels_last)` refuses them); others as they are."""
    for t in (*module.parameters(), *module.buffers()):
        fmt = FORMATS.get(t.dim())
        if fmt is not None and not t.is_contiguous(memory_format=fmt):
            t.data = t.data.contiguous(memory_format=fmt)
    return module


def lay_out(module: nn.Module, acc: Accel) -> nn.Module:
    """`module` in the memory format `acc` asks for (training and inference alike)."""
    return to_channels_last(module) if acc.channels_last else module


def contiguous(tree):
    """A nested dict of tensors with every plain tensor in the default (contiguous) layout: what
    safetensors writes. Sharded tensors (DTensor) are left to their writer."""
    if isinstance(tree, dict):
        return {k: contiguous(v) for k, v in tree.items()}
    if torch.is_tensor(tree) and not hasattr(tree, "to_local"):
        return tree.contiguous()
    return tree
