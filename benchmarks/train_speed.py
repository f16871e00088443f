"""Training throughput, memory and model FLOP utilisation (MFU) of a preset's stage 1 and base model.

    python benchmarks/train_speed.py [--preset fmnist] [--stage both|latents|base] [--steps 60]
                                     [--device cpu|cuda] [--shard ddp|fsdp] [--compile] [--set k=v]
    torchrun --nproc_per_node=8 benchmarks/train_speed.py --preset imagenet512 --device cuda --shard fsdp

Each row runs the real training loop (`unified_latents.training.train`: optimizer, EMA, logging,
sharding) for --steps timed steps after --warmup steps. Data: the preset's own when it names a
source, otherwise random examples of the right shape (speed does not depend on pixel values);
the base model trains on random latents under a randomly initialised, frozen stage 1. MFU
divides the achieved model FLOP/s (FLOPs of one forward + backward counted by
torch.utils.flop_counter on the meta device) by the dense matmul FLOP/s measured in the same run,
bf16 on CUDA with train.amp, float32 otherwise. Memory: the peak allocated on the GPU, or the
process's peak resident memory on CPU."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents import dist  # noqa: E402
from unified_latents.config import apply_overrides  # noqa: E402
from unified_latents.data import load_images  # noqa: E402
from unified_latents.eval.memory import MetaNoise  # noqa: E402
from unified_latents.objectives import BaseModel, UnifiedLatents  # noqa: E402
from unified_latents.presets import get_preset  # noqa: E402
from unified_latents.training import train  # noqa: E402


def matmul_flops(device: torch.device, dtype: torch.dtype, rounds: int = 5, reps: int = 10) -> float:
    """Dense n x n matmul FLOP/s on `device`: the best of several rounds (a busy moment only lowers it)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class RandomData:
    """n random examples of one shape (images in [-1, 1], or latents ~ N(0, I)) with labels."""

    def __init__(self, shape, n: int, classes: int, gaussian: bool):
        self.shape, self.n, self.classes, self.gaussian = tuple(shape), n, classes, gaussian

    def __len__(self) -> int:
        return self.n

    def get(self, idx):
        g = torch.Generator().manual_seed(int(idx[0]))
        x = (
            torch.randn(len(idx), *self.shape, generator=g)
            if self.gaussian
            else torch.rand(len(idx), *self.shape, generator=g) * 2 - 1
        )
        return x, (idx % self.classes if self.classes else None)


def build(preset: str, stage: str, overrides: list[str]):
    """(config, model builder, data, input shape of one training example)."""
    s1 = apply_overrides(get_preset(preset, "latents"), overrides if stage == "latents" else [])
    if stage == "latents":
        with torch.device("meta"):
            shape = UnifiedLatents(s1).x_shape
        data = load_images(s1.data) if s1.data.source else RandomData(shape, 4096, s1.data.num_classes, False)
        return s1, lambda: UnifiedLatents(s1), data, shape
    cfg = apply_overrides(get_preset(preset, "base"), overrides)
    make = lambda: BaseModel(cfg, UnifiedLatents(s1))  # noqa: E731 (stage 1 random and frozen: speed only)
    with torch.device("meta"):
        shape = make().z_shape
    return cfg, make, RandomData(shape, 4096, cfg.data.num_classes, True), shape


def counted_train_flops(make, shape, classes: int) -> float:
    """FLOPs of one training forward + backward per example, counted on the meta device."""
    n = 2
    with torch.device("meta"):
        model = make()
    x = torch.zeros(n, *shape, device="meta")
    labels = torch.zeros(n, dtype=torch.long, device="meta") if classes else None
    with FlopCounterMode(display=False) as fc:
        model(x, labels, model.draw_noise(MetaNoise(n))).total.sum().backward()
    return fc.get_total_flops() / n


def measure(preset: str, stage: str, steps: int, warmup: int, device, overrides: list[str]) -> dict:
    cfg, make, data, shape = build(preset, stage, overrides)
    b = cfg.train.batch
    total = b * (steps + warmup)
    cfg = apply_overrides(
        cfg,
        [
            f"train.total_samples={total}",
            f"train.warmup_samples={b}",
            "train.log_every=1",
            "train.image_every=0",
            "train.ckpt_every=0",
        ],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = dist.broadcast_object(tmp)  # one run folder for all processes (rank 0's)
        with contextlib.redirect_stdout(io.StringIO()):  # the loop's per-step lines
            train(cfg, Path(tmp), make, data, device=device, progress=False, artifact_kind=stage)
        recs = [json.loads(ln) for ln in (Path(tmp) / "stats.jsonl").read_text().splitlines()] if dist.is_main() else []
        dist.barrier()
    timed = recs[warmup + 1 :]
    sps = len(timed) * b / sum(r["sec"] for r in timed) if timed else float("nan")
    mem = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    params = sum(p.numel() for p in _meta(make).parameters() if p.requires_grad)
    return {
        "batch": b,
        "params": params,
        "sps": sps,
        "flops": counted_train_flops(make, shape, cfg.data.num_classes),
        "mem": mem,
        "amp": cfg.train.amp,
    }


def _meta(make):
    with torch.device("meta"):
        return make()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="fmnist")
    ap.add_argument("--stage", choices=["both", "latents", "base"], default="both")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shard", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    own = dist.init()  # joins torchrun's process group; this process's GPU when there are GPUs
    device = own if args.device == "cuda" else torch.device(args.device)
    over = [f"train.shard={args.shard}", f"train.compile={str(args.compile).lower()}", *args.overrides]
    stages = ["latents", "base"] if args.stage == "both" else [args.stage]
    rows = {s: measure(args.preset, s, args.steps, args.warmup, device, over) for s in stages}
    bf16 = device.type == "cuda" and all(r["amp"] for r in rows.values())
    peak = matmul_flops(device, torch.bfloat16 if bf16 else torch.float32)
    if dist.is_main():
        print_table(args, device, rows, peak, bf16)
    dist.shutdown()


def print_table(args, device, rows: dict, peak: float, bf16: bool) -> None:
    world = dist.world()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.preset}, {world} process(es) on {name}, shard={args.shard}, compile={args.compile}; "
        f"matmul {'bf16' if bf16 else 'fp32'} measured {peak / 1e9:,.1f} GFLOP/s per device\n"
    )
    print(
        "| stage | trainable params | global batch | samples/s | GFLOP/sample (fwd+bwd) | achieved GFLOP/s "
        "per device | MFU | peak memory per process |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for stage, r in rows.items():
        per_dev = r["sps"] * r["flops"] / world
        print(
            f"| {stage} | {r['params']:,} | {r['batch']} | {r['sps']:.4g} | {r['flops'] / 1e9:.3f} | "
            f"{per_dev / 1e9:,.1f} | {100 * per_dev / peak:.1f} % | {r['mem'] / 2**30:.2f} GiB |"
        )


if __name__ == "__main__":
    main()
