"""Data beyond memory: peak memory of training from a large prepared dataset, and loader speed.

    python benchmarks/data_loading.py [--images 200000] [--small 2000] [--steps 20] [--workers 2]

Builds two prepared datasets in a temporary folder from Fashion-MNIST garments, recoloured (a
random colour per garment and per background) and upscaled to 64x64 RGB: --images examples and
--small examples. Then, each in a fresh process:
  (a) `ul train` for --steps steps on each (the rgb32 networks at 64x64, batch 128): peak resident
      memory (VmHWM) of the training process, large against small;
  (b) the loader alone (the training order, --workers DataLoader workers) in images/s, against
      the training step's own images/s measured in (a);
  (c) with --eval-artifact A (a base-model artifact): `ul eval --samples 1000 --recon 0
      --ref-count 1000` timed on this machine (--eval-device; reference features cached first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_latents.data.images import load_fmnist  # noqa: E402
from unified_latents.data.prepared import prepare_chunks  # noqa: E402

PART = 50_000


def garments(n: int, seed: int = 0):
    """Chunks of (uint8 [k, 3, 64, 64], labels): recoloured, upscaled Fashion-MNIST garments."""
    src = load_fmnist("train")
    base, labels = src.images.float() / 255, src.labels
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, PART):
        k = min(PART, n - start)
        idx = torch.arange(start, start + k) % base.shape[0]
        m = torch.nn.functional.interpolate(base[idx], size=64, mode="bilinear", align_corners=False)  # [k, 1, 64, 64]
        fg, bg = torch.rand(k, 3, 1, 1, generator=g), torch.rand(k, 3, 1, 1, generator=g)
        yield (255 * (m * fg + (1 - m) * bg)).round().to(torch.uint8).numpy(), labels[idx].tolist()


TRAIN = [
    "--preset",
    "rgb32",
    "--no-progress",
    "--set",
    "data.resolution=64",
    "--set",
    "train.image_every=0",
    "--set",
    "train.ckpt_every=0",
    "--set",
    "train.log_every=1",
    "--set",
    "data.eval_source=''",
]

# ru_maxrss survives fork and exec (it would report the benchmark's own memory at the fork), so
# the peak is read from VmHWM, which starts afresh with the new program's address space.
RUN = """
import runpy, sys, json
sys.argv = ["ul", *json.loads(sys.argv[1])]
try:
    runpy.run_module("unified_latents", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
print("PEAK", hwm)
"""


def train_peak(data: Path, out: Path, steps: int, workers: int) -> dict:
    args = [
        "train",
        *TRAIN,
        "--data",
        str(data),
        "--outdir",
        str(out),
        "--set",
        f"train.total_samples={128 * steps}",
        "--set",
        f"data.workers={workers}",
    ]
    r = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    recs = [json.loads(ln) for ln in (out / "stats.jsonl").read_text().splitlines()][3:]  # after warm-up
    return {
        "peak_gib": int(r.stdout.split("PEAK", 1)[1]) / 2**20,
        "train_ips": len(recs) * 128 / sum(x["sec"] for x in recs),
    }


def loader_ips(data: Path, workers: int, batches: int = 200) -> float:
    from unified_latents.config import apply_overrides
    from unified_latents.data import DataOrder, load_images
    from unified_latents.data.sampler import MicroBatches, micro_batch_loader
    from unified_latents.presets import get_preset

    cfg = apply_overrides(get_preset("rgb32"), ["data.resolution=64", f"data.source={data}"])
    d = load_images(cfg.data)
    items = MicroBatches(d, DataOrder(len(d), 0), 0, 128 * batches, 128, 0, 128, 128)
    it = iter(micro_batch_loader(items, workers, pin=False))
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    return (batches - 1) * 128 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-artifact", type=Path, help="also time `ul eval` of 1,000 samples of this base artifact")
    ap.add_argument("--eval-device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        for name, n in (("large", args.images), ("small", args.small)):
            prepare_chunks(tmp / name, garments(n), 64, 3, True, f"garments-{n}", progress=False)
        prep_s = time.time() - t0
        size = sum(f.stat().st_size for f in (tmp / "large").rglob("*") if f.is_file())
        rows = {
            name: train_peak(tmp / name, tmp / f"run-{name}", args.steps, args.workers) for name in ("small", "large")
        }
        ips = {w: loader_ips(tmp / "large", w) for w in (0, args.workers)}
    print(
        f"prepared {args.images:,} + {args.small:,} images in {prep_s:.0f} s; the large set is {size / 2**30:.2f} GiB "
        f"on disk ({size / args.images / 1024:.1f} KiB per image); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print(
        "| dataset | images | peak resident memory of the training process | training images/s "
        f"({args.workers} workers) |"
    )
    print("|---|---|---|---|")
    for name, n in (("small", args.small), ("large", args.images)):
        r = rows[name]
        print(f"| {name} | {n:,} | {r['peak_gib']:.2f} GiB | {r['train_ips']:.1f} |")
    print(
        f"\npeak RSS, large minus small: {rows['large']['peak_gib'] - rows['small']['peak_gib']:+.2f} GiB "
        "(target: within 1.5 GiB)"
    )
    print(
        f"loader alone on the large set: {ips[0]:.0f} images/s in-process, {ips[args.workers]:.0f} images/s with "
        f"{args.workers} workers; the training step takes {rows['large']['train_ips']:.1f} images/s"
    )
    if args.eval_artifact:
        print(f"ul eval, 1,000 samples with their Inception features ({args.eval_device}): {eval_seconds(args):.0f} s")


def eval_seconds(args) -> float:
    cmd = [
        sys.executable,
        "-m",
        "unified_latents",
        "eval",
        "--artifact",
        str(args.eval_artifact),
        "--recon",
        "0",
        "--ref-count",
        "1000",
        "--device",
        args.eval_device,
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*cmd, "--samples", "10"], env=env, check=True, capture_output=True)  # fills the reference cache
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--samples", "1000"], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
