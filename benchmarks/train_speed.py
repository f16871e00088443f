"""Stage-1 training throughput and model FLOP utilisation (MFU) of a preset.

    python benchmarks/train_speed.py [--preset fmnist] [--steps 60] [--device cpu|cuda]

Throughput is measured through the real training loop (`unified_latents.training.train`,
optimizer, EMA and logging included) on the preset's data, after a warm-up. MFU divides the
achieved model FLOP/s (FLOPs counted by torch.utils.flop_counter over one real forward and
backward) by the machine's dense matmul FLOP/s, measured in the same run."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.config import apply_overrides  # noqa: E402
from unified_latents.presets import get_preset  # noqa: E402
from unified_latents.data import load_images  # noqa: E402
from unified_latents.eval import stage1_report  # noqa: E402
from unified_latents.objectives.registry import build_model  # noqa: E402
from unified_latents.training import train  # noqa: E402


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def counted_train_flops(cfg, device) -> float:
    """Counted FLOPs of one training forward + backward, per sample."""
    model = build_model(cfg).to(device)
    n = cfg.train.batch
    x = torch.rand(n, *model.x_shape, device=device) * 2 - 1
    noise = model.draw_noise(n, torch.Generator(device=device).manual_seed(0), device)
    with FlopCounterMode(display=False) as fc:
        model(x, None, noise).total.mean().backward()
    return fc.get_total_flops() / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="fmnist")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = get_preset(args.preset)
    total = cfg.train.batch * (args.steps + args.warmup)
    cfg = apply_overrides(cfg, [f"train.total_samples={total}", "train.log_every=1", "train.image_every=0",
                                f"train.ckpt_every={total}", *args.overrides])
    data = load_images(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # the loop's per-step lines
            train(cfg, Path(tmp), lambda: build_model(cfg), data, device=device, progress=False)
        recs = [json.loads(ln) for ln in (Path(tmp) / "stats.jsonl").read_text().splitlines()]
    secs = sum(r["sec"] for r in recs[args.warmup + 1 :])
    steps = len(recs) - args.warmup - 1
    sps = steps * cfg.train.batch / secs
    with torch.device("meta"):
        rep = stage1_report(build_model(cfg))
    counted = counted_train_flops(cfg, device)
    dtype = torch.bfloat16 if (device.type == "cuda" and cfg.train.amp) else torch.float32
    peak = matmul_flops(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    rows = [
        ("device", name),
        ("preset / global batch", f"{args.preset} / {cfg.train.batch}"),
        ("parameters", f"{rep['total']['params']:,}"),
        ("throughput (samples/s)", f"{sps:,.1f}"),
        ("steps/s", f"{sps / cfg.train.batch:.2f}"),
        ("train FLOPs/sample, 3x forward (paper convention)", f"{rep['total']['train_flops'] / 1e9:.4f} G"),
        ("train FLOPs/sample, counted fwd+bwd", f"{counted / 1e9:.4f} G"),
        ("achieved model FLOP/s (counted)", f"{sps * counted / 1e9:,.2f} G"),
        (f"measured matmul FLOP/s ({str(dtype).split('.')[-1]} 2048^2)", f"{peak / 1e9:,.1f} G"),
        ("MFU (achieved / matmul)", f"{100 * sps * counted / peak:.2f} %"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'quantity':<{w}} | value |\n|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{w}} | {v} |")


if __name__ == "__main__":
    main()
