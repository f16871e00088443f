"""Quality levers of the networks and the training dynamics, each a full pipeline run of one preset
with a few settings changed, side by side on this machine.

    python benchmarks/levers.py [--preset fmnist] [--variants baseline,group8,noclip,...]
        [--samples-per-stage N] [--samples N] [--recon N] [--outdir runs/levers]

Every variant trains both stages for the preset's budget (or `--samples-per-stage` each, for a
quicker screen), generates `--samples` class-conditional samples and reconstructs `--recon`
held-out images, then reports the prior's bits per image, PSNR/SSIM, rFID and gFID beside the wall
time of the run and the machine's float32 matmul rate (measured before the first variant).
None of the levers changes the cost of a training step beyond noise, so equal samples are equal
wall time; the table shows the measured minutes so that this can be checked. Resumable: a
finished variant's eval.json is read, not recomputed (its minutes are then those of its run).
Prints a Markdown table and writes levers.md in --outdir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import matmul_flops  # noqa: E402

from unified_latents.files import atomic_write_text  # noqa: E402
from unified_latents.jobs import run_pipeline  # noqa: E402

NETS = ("encoder", "prior", "decoder", "base")
UVIT_BASE = ["model.base.transformer_blocks=2", "model.base.width=128", "model.base.heads=4"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the preset as it is", []),
    "group8": ("8 channels per norm group in every network", [f"model.{n}.norm=group8" for n in NETS]),
    "noclip": ("no gradient clipping (train.grad_clip=0)", ["train.grad_clip=0"]),
    "condaug2": ("decoder conditioning augmentation to lam0 - 2", ["diffusion.cond_aug=2"]),
    "condaug0": ("no decoder conditioning augmentation (diffusion.cond_aug=0)", ["diffusion.cond_aug=0"]),
    "baseshift": ("base schedule placed by the latents' std (base.shift_auto)", ["base.shift_auto=true"]),
    "baseshift3": ("base schedule shift 3 (base.shift=3)", ["base.shift=3"]),
    "mp": (
        "magnitude-preserving U-Nets (EDM2) for prior, decoder and base",
        [f"model.{n}.arch=unet_mp" for n in ("prior", "decoder", "base")],
    ),
    "baseshift5": ("base schedule shift 5 (base.shift=5)", ["base.shift=5"]),
    "upextra": ("one more residual block per decoder up level", ["model.decoder.up_extra=1"]),
    "upextra0": ("no extra decoder up blocks (model.decoder.up_extra=0)", ["model.decoder.up_extra=0"]),
    "group8-decoder": ("8 channels per norm group in the decoder only", ["model.decoder.norm=group8"]),
    "mp-rsqrt": (
        "magnitude-preserving U-Nets with EDM2's inverse-square-root learning rate from 8k samples",
        [
            *(f"model.{n}.arch=unet_mp" for n in ("prior", "decoder", "base")),
            "train.lr_decay=rsqrt",
            "train.lr_ref_samples=8000",
        ],
    ),
    # The CPU presets have no transformer blocks: these two give the base model a U-ViT middle
    # (two blocks of width 128 at its lowest level) to measure mid_zero_init against its absence.
    "uvit": ("base model with a 2-block transformer middle (U-ViT)", UVIT_BASE),
    "uvit-midzero": (
        "the U-ViT base with its middle's output projection zero-initialised (mid_zero_init)",
        [*UVIT_BASE, "model.base.mid_zero_init=true"],
    ),
    "group8-noclip": (
        "group8 and no gradient clipping",
        [*(f"model.{n}.norm=group8" for n in NETS), "train.grad_clip=0"],
    ),
}


def _row(name: str, title: str, ev: dict, minutes: float) -> str:
    return (
        f"| {name} | {title} | {ev['prior_bits_per_image']:.1f} | {ev['psnr']:.2f} / {ev['ssim']:.3f} | "
        f"{ev['rfid']:.2f} | {ev['gfid']:.2f} | {ev['kid'] * 1e3:.2f} | {minutes:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fmnist")
    ap.add_argument("--variants", default="baseline,group8,noclip")
    ap.add_argument("--samples-per-stage", type=int, default=0, help="training samples per stage (0: the preset's)")
    ap.add_argument("--samples", type=int, default=None, help="generated samples (default: the main job's)")
    ap.add_argument("--recon", type=int, default=None, help="reconstructions (default: the main job's)")
    ap.add_argument("--ref-count", type=int, default=None, help="reference images (default: the main job's)")
    ap.add_argument("--set", action="append", default=[], help="an override applied to every variant")
    ap.add_argument("--outdir", type=Path, default=Path("runs/levers"))
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gflops = matmul_flops(device, torch.float32) / 1e9
    print(f"float32 matmul {gflops:.1f} GFLOP/s on {device}", flush=True)
    rows = []
    for name in names:
        title, over = VARIANTS[name]
        over = [*over, *args.set]
        if args.samples_per_stage:
            over.append(f"train.total_samples={args.samples_per_stage}")
        run = args.outdir / name
        minutes_file = run / "levers-minutes.json"
        if not (run / "eval.json").exists():
            print(f"== {name}: {title}", flush=True)
            t0 = time.time()
            run_pipeline(args.preset, over, run, device, args.samples, args.recon, args.ref_count, progress=False)
            atomic_write_text(minutes_file, json.dumps({"minutes": (time.time() - t0) / 60, "gflops": gflops}))
        ev = json.loads((run / "eval.json").read_text())
        minutes = json.loads(minutes_file.read_text())["minutes"] if minutes_file.exists() else float("nan")
        rows.append(_row(name, title, ev, minutes))
        print(rows[-1], flush=True)
    budget = f"{args.samples_per_stage:,} samples per stage" if args.samples_per_stage else "the preset's budget"
    table = "\n".join(
        [
            f"Preset {args.preset}, {budget}, {' '.join(args.set) or 'no other overrides'}; "
            f"float32 matmul {gflops:.1f} GFLOP/s; gFID/rFID/PSNR counts "
            f"{args.samples or 'default'}/{args.recon or 'default'} (eval.json of each run has them).",
            "",
            "| variant | change | bits/image (prior) | PSNR (dB) / SSIM | rFID | gFID | KID x 1e3 | minutes |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    atomic_write_text(args.outdir / "levers.md", f"# Quality levers ({args.preset})\n\n{table}\n")


if __name__ == "__main__":
    main()
