"""The paper's stage-1 ablations (Tables 5-6, UL_SPEC 8) on this data, each a full pipeline.

    python benchmarks/ablations.py [--preset fmnist] [--samples-per-stage 48000]
        [--loss-factor 22] [--samples 500] [--recon 200] [--variants ul,mse,gaussian,stopgrad,lam10]
        [--outdir runs/ablations]

Every variant trains stage 1 and stage 2 for the same number of samples with the loss factor
fixed (the controller off, as in the paper), then measures the prior's bits per pixel, PSNR and
rFID of `--recon` reconstructions and gFID/KID of `--samples` class-conditional samples.
Resumable (a finished variant is skipped); prints a Markdown table and writes ablations.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.jobs import run_pipeline  # noqa: E402
from unified_latents.training.checkpoint import atomic_write_text  # noqa: E402

VARIANTS = {
    "ul": ("UL (diffusion prior + diffusion decoder)", []),
    "mse": ("diffusion prior + MSE (L2) decoder", ["diffusion.decoder_kind=mse"]),
    "gaussian": ("N(0, I) KL prior + diffusion decoder", ["diffusion.prior_kind=gaussian"]),
    "stopgrad": (
        "stop-grad into the prior + KL to N(0, I) weighted 0.01 (paper Table 6 row A)",
        ["diffusion.prior_stop_grad=true"],
    ),
    "stopgrad-nokl": (
        "stop-grad into the prior, no regulariser at all",
        ["diffusion.prior_stop_grad=true", "diffusion.stop_grad_kl_weight=0"],
    ),
    "lam10": ("encoder noise log-SNR 10 instead of 5", ["diffusion.lam0=10"]),
    "learnedvar": ("learned encoder variance", ["diffusion.learned_variance=true"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fmnist")
    ap.add_argument("--samples-per-stage", type=int, default=48_000, help="training samples of stage 1 and of stage 2")
    ap.add_argument(
        "--loss-factor", type=float, default=22.0, help="fixed c_lf (fmnist: the controller settles near 22)"
    )
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--recon", type=int, default=200)
    ap.add_argument("--ref-count", type=int, default=2000)
    ap.add_argument("--variants", default="ul,mse,gaussian,stopgrad,lam10")
    ap.add_argument("--outdir", type=Path, default=Path("runs/ablations"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        title, over = VARIANTS[name]
        over = [
            *over,
            "diffusion.target_bits=0",
            f"diffusion.loss_factor={args.loss_factor}",
            f"train.total_samples={args.samples_per_stage}",
        ]
        print(f"== {name}: {title}", flush=True)
        run = args.outdir / name
        run_pipeline(args.preset, over, run, device, args.samples, args.recon, args.ref_count, progress=False)
        ev = json.loads((run / "eval.json").read_text())
        rows.append((title, ev))
        print(
            f"{name}: bpp {ev['prior_bpp']:.4f} PSNR {ev['psnr']:.2f} rFID {ev['rfid']:.2f} gFID {ev['gfid']:.2f}",
            flush=True,
        )
    lines = [
        "| variant | bits/pixel (prior) | bits/image | PSNR (dB) | rFID | gFID | KID x 1e3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, e in rows:
        lines.append(
            f"| {title} | {e['prior_bpp']:.4f} | {e['prior_bits_per_image']:.1f} | {e['psnr']:.2f} | "
            f"{e['rfid']:.2f} | {e['gfid']:.2f} | {e['kid'] * 1e3:.2f} |"
        )
    if rows:
        e = rows[0][1]
        lines.append(
            f"\nEach variant: {args.samples_per_stage:,} samples per stage, c_lf = {args.loss_factor:g} fixed; "
            f"gFID/KID {e['gfid_samples']} samples, rFID/PSNR {e['rfid_samples']} reconstructions, "
            f"vs {e['reference_images']} {e['reference']} images."
        )
    table = "\n".join(lines)
    print(table)
    atomic_write_text(args.outdir / "ablations.md", "# Stage-1 ablations\n\n" + table + "\n")


if __name__ == "__main__":
    main()
