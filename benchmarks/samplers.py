"""Samplers at equal network calls: DDIM against DPM-Solver++(2M) (and the preset's ancestral).

    python benchmarks/samplers.py --artifact runs/fmnist/base/artifact.safetensors \
        [--steps 8,16] [--samples 500] [--recon 250] [--reference ancestral:64:32]

For every sampler and step count N (base model N steps, decoder N steps plus its final
prediction) it evaluates the base-model artifact with those sampling settings, the same seeds
and the same held-out examples, and prints one table row: network calls per generated image,
gFID and KID of `--samples` samples, rFID and PSNR of `--recon` reconstructions (the decoder
with that sampler), and the wall time of the evaluation. `--reference` adds a row with other
settings (default: the presets' ancestral 64 base + 32 decoder steps). FID on a few hundred
samples is biased upwards; compare rows with each other, not with 50k-sample FIDs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.eval.evaluate import EvalRequest, evaluate  # noqa: E402
from unified_latents.objectives.registry import load_model  # noqa: E402


def measure(model, sampler: str, base_steps: int, decoder_steps: int, args) -> dict:
    sampling = {"sampler": sampler, "base_steps": base_steps, "decoder_steps": decoder_steps}
    t0 = time.time()
    res = evaluate(model, EvalRequest(args.samples, args.recon, args.ref_count, sampling=sampling, progress=False))
    rec = res.reconstructions
    return {
        "sampler": sampler,
        "base": base_steps,
        "decoder": decoder_steps,
        "calls": base_steps + decoder_steps + 1,
        "gfid": res.samples.gfid,
        "kid": res.samples.kid * 1e3,
        "rfid": rec.rfid if rec else float("nan"),
        "psnr": rec.psnr if rec else float("nan"),
        "sec": time.time() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, required=True, help="base-model artifact")
    ap.add_argument("--steps", default="8,16", help="comma-separated step counts (base and decoder alike)")
    ap.add_argument("--samplers", default="ddim,dpm++2m")
    ap.add_argument("--reference", default="ancestral:64:32", help="sampler:base_steps:decoder_steps row ('' = none)")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--recon", type=int, default=250)
    ap.add_argument("--ref-count", type=int, default=2000)
    args = ap.parse_args()
    model, _ = load_model(args.artifact, "cpu", stage="base")
    runs = [(s, n, n) for n in (int(v) for v in args.steps.split(",")) for s in args.samplers.split(",")]
    if args.reference:
        name, b, d = args.reference.split(":")
        runs.append((name, int(b), int(d)))
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    rows = []
    for sampler, b, d in runs:
        rows.append(measure(model, sampler, b, d, args))
        r = rows[-1]
        print(
            f"  {sampler} {b}+{d}: gFID {r['gfid']:.2f}, rFID {r['rfid']:.2f}, PSNR {r['psnr']:.2f} ({r['sec']:.0f} s)",
            flush=True,
        )
    print(
        f"\n| sampler | base + decoder steps | network calls / image | gFID ({args.samples}) | KID x 1e3 | "
        f"rFID ({args.recon}) | PSNR (dB) | eval wall s |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['sampler']} | {r['base']} + {r['decoder']} | {r['calls']} | {r['gfid']:.2f} | {r['kid']:.1f} | "
            f"{r['rfid']:.2f} | {r['psnr']:.2f} | {r['sec']:.0f} |"
        )


if __name__ == "__main__":
    main()
