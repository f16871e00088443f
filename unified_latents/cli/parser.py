"""The `ul` argument parser: every sub-command, its arguments and their help (main.py dispatches)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..presets import PRESETS
from .args import at_least, ema_length_arg, guidance, positive, zero_or_two_plus
from .data_cmd import add_data_commands
from .demo_cmd import add_demo_command
from .distill_cmd import add_distill_command
from .export_cmd import add_export_command


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _device_arg(p: argparse.ArgumentParser, split: bool) -> None:
    more = (
        " Under torchrun the work is split over the processes; outputs do not depend on how many."
        if split
        else " Runs in one process."
    )
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="where the networks run: auto (default: this process's GPU when there is one), cuda or cpu." + more,
    )


TRUST = " (TorchScript is a program: any file but the pinned Inception needs --trust-torchscript)"


def _inception_args(p: argparse.ArgumentParser, text: str) -> None:
    """--inception (and the --trust-torchscript that a file other than the pinned one needs)."""
    p.add_argument("--inception", help=text + TRUST)
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="load --inception/--i3d (or UL_INCEPTION/UL_I3D) files other than the pinned FID Inception: "
        "TorchScript files are programs that run when loaded, so pass only files you trust",
    )


SAMPLER_NAMES = ["ancestral", "ddim", "dpm++2m"]  # diffusion/samplers.py SAMPLERS (not imported: keeps --help fast)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="fmnist", help=f"named preset: {', '.join(PRESETS)} (default: fmnist)")
    p.add_argument(
        "--baseline",
        choices=["kl-vae"],
        help="train a baseline instead of UL: kl-vae (Stable-Diffusion-style KL autoencoder, scaled latents)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ul", description="Unified Latents: train, reconstruct, inspect.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    _training_commands(sub)
    _job_commands(sub)
    _artifact_commands(sub)
    _eval_commands(sub)
    add_data_commands(sub)
    add_export_command(sub)
    add_demo_command(sub)
    add_distill_command(sub)
    return ap


def _training_commands(sub) -> None:
    """train, reconstruct."""
    t = sub.add_parser("train", help="train a stage (rerun the same command to resume)")
    t.add_argument(
        "--stage",
        default="latents",
        choices=["latents", "base", "pixel"],
        help="latents (stage 1: encoder + prior + decoder), base (stage 2 on frozen latents), or "
        "pixel (the pixel-diffusion baseline: the base model on pixels, no latents)",
    )
    _config_args(t)
    t.add_argument("--artifact", type=Path, help="stage 2: the stage-1 artifact whose encoder/decoder stay frozen")
    t.add_argument("--latents", type=Path, help="stage 2: latents cached by `ul encode` (default: encode at start)")
    t.add_argument("--outdir", required=True, type=Path, help="run folder (checkpoints, stats, previews, artifact)")
    t.add_argument("--data", help="training data: a folder of images or an .npz file (default: the preset's)")
    t.add_argument("--eval-data", help="held-out data for previews and `ul reconstruct`")
    t.add_argument("--target-bits", type=float, help="latent bits per image the loss-factor controller aims for")
    t.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    t.add_argument(
        "--until",
        type=positive,
        metavar="SAMPLES",
        help="stop with a checkpoint once this many samples are seen; rerun to continue",
    )
    t.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    _common(t)

    r = sub.add_parser("reconstruct", help="reconstruct held-out images; print PSNR, SSIM and bitrate")
    r.add_argument("--artifact", required=True, type=Path, help="stage-1 artifact (.safetensors)")
    r.add_argument("--data", help="held-out data (default: the artifact's, e.g. the Fashion-MNIST test split)")
    r.add_argument("--count", type=positive, default=500, help="number of images (default 500)")
    r.add_argument("--steps", type=positive, help="decoder sampling steps (default: the artifact's)")
    r.add_argument("--sampler", choices=SAMPLER_NAMES, help="decoder sampler")
    r.add_argument(
        "--batch", type=positive, help="examples per call (default: the artifact's eval.batch; images 250, clips 16)"
    )
    r.add_argument(
        "--mean-of",
        type=positive,
        default=1,
        metavar="K",
        help="average K decoder samples per latent: the posterior-mean estimate that PSNR favours "
        "(blurrier where the latent leaves detail open; default 1 = one sample)",
    )
    ema_length_arg(r, "the stage-1 networks")
    r.add_argument(
        "--out", type=Path, help="PNG grid of originals above reconstructions (default: next to the artifact)"
    )
    r.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _device_arg(r, split=False)
    _common(r)


def _job_commands(sub) -> None:
    """pipeline, sweep."""
    p = sub.add_parser("pipeline", help="the main job: train, evaluate and write a report (rerun to resume)")
    _config_args(p)
    p.add_argument("--outdir", type=Path, default=Path("runs/fmnist"), help="run folder (default runs/fmnist)")
    p.add_argument("--data", help="training data (default: the preset's)")
    p.add_argument("--eval-data", help="held-out data")
    p.add_argument("--samples", type=at_least(2), help="generated images for gFID (default 2000; video: 64 clips)")
    p.add_argument(
        "--recon", type=zero_or_two_plus, help="held-out images to reconstruct (default 500; video: 32 clips)"
    )
    p.add_argument(
        "--ref-count", type=at_least(2), help="held-out reference images for FID (default 2000; video: 64 clips)"
    )
    p.add_argument("--i3d", help="video: TorchScript I3D file for FVD (none offline; default: no FVD)" + TRUST)
    _inception_args(p, "FID Inception TorchScript file (default: the one scripts/setup.sh fetches)")
    p.add_argument("--no-progress", action="store_true")
    _common(p)

    w = sub.add_parser("sweep", help="one full pipeline per loss factor; Table 2 and a rate-distortion plot")
    _config_args(w)
    w.add_argument("--loss-factors", required=True, help="comma-separated, e.g. 1.3,1.5,1.7,1.9,2.1")
    w.add_argument("--outdir", type=Path, required=True)
    w.add_argument("--data", help="training data (default: the preset's)")
    w.add_argument("--eval-data", help="held-out data")
    w.add_argument("--samples", type=at_least(2), default=2000)
    w.add_argument("--recon", type=zero_or_two_plus, default=500)
    w.add_argument("--ref-count", type=at_least(2), default=2000)
    _inception_args(w, "FID Inception TorchScript file")
    w.add_argument("--no-progress", action="store_true")
    _common(w)


def _artifact_commands(sub) -> None:
    """encode, sample."""
    e = sub.add_parser("encode", help="cache the frozen encoder's latents (with labels) of a dataset")
    e.add_argument("--artifact", required=True, type=Path, help="stage-1 artifact")
    e.add_argument("--data", help="images to encode (default: the artifact's training data)")
    e.add_argument(
        "--dest",
        required=True,
        type=Path,
        help="a folder (one shard per process, read lazily by stage 2) or one .safetensors file (one process)",
    )
    _device_arg(e, split=True)
    _common(e)

    s = sub.add_parser("sample", help="generate images with a base-model artifact")
    s.add_argument("--artifact", required=True, type=Path, help="stage-2 (base) artifact")
    s.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 0,5,9 (sample k depends only on its seed)")
    s.add_argument("--outdir", required=True, type=Path)
    s.add_argument(
        "--classes", help="class per seed: default seed %% classes; '3' or '0,1,2' (cycled); 'random'; 'none'"
    )
    s.add_argument("--guidance", type=guidance, help="classifier-free guidance scale (1 = none)")
    s.add_argument(
        "--guidance-interval", help="lo,hi: guide only where lo <= log-SNR <= hi (write --guidance-interval=-5,5)"
    )
    s.add_argument("--base-steps", type=positive)
    s.add_argument("--decoder-steps", type=positive)
    s.add_argument("--sampler", choices=SAMPLER_NAMES)
    s.add_argument(
        "--batch", type=positive, help="samples per call (default: the artifact's sample.batch; images 250, clips 16)"
    )
    s.add_argument("--npz", action="store_true", help="write samples.npz instead of individual PNGs (video: MP4s)")
    s.add_argument(
        "--context",
        metavar="CLIP",
        help="video: continue these clips (a video file, folder of videos, .npz/.npy of clips, or 'test' "
        "for the held-out clips); sample k uses clip k (cycled)",
    )
    s.add_argument(
        "--context-frames",
        type=positive,
        default=5,
        help="video: how many leading frames of each context clip are given (default 5)",
    )
    s.add_argument("--fps", type=positive, default=8, help="video: frame rate of the MP4s (default 8)")
    _device_arg(s, split=True)
    _common(s)


def _eval_commands(sub) -> None:
    """eval, info."""
    v = sub.add_parser("eval", help="gFID/KID, rFID, PSNR/SSIM, bitrates and FLOPs of a base-model artifact")
    v.add_argument("--artifact", required=True, type=Path, help="stage-2 (base) artifact")
    v.add_argument("--samples", type=at_least(2), help="generated images for gFID/KID (default 2000; video: 64 clips)")
    v.add_argument(
        "--recon",
        type=zero_or_two_plus,
        help="held-out images reconstructed for rFID/PSNR (default 500; video: 32 clips; 0 = skip)",
    )
    v.add_argument("--ref-count", type=at_least(2), help="held-out reference images (default 2000; video: 64 clips)")
    v.add_argument("--i3d", help="video: TorchScript I3D file for FVD (or UL_I3D); none ships offline" + TRUST)
    v.add_argument("--base-steps", type=positive, help="base-model sampling steps (default: the artifact's)")
    v.add_argument("--decoder-steps", type=positive, help="decoder sampling steps (default: the artifact's)")
    v.add_argument("--sampler", choices=SAMPLER_NAMES, help="sampler for base model and decoder")
    v.add_argument(
        "--context-frames", type=positive, default=5, help="video: context frames for the continuation test (default 5)"
    )
    _inception_args(v, "FID Inception TorchScript file (default: the one scripts/setup.sh fetches)")
    v.add_argument(
        "--fid-resize",
        choices=["tf1", "torch"],
        default="tf1",
        help="how images are resized to Inception's 299x299: tf1 (default; TensorFlow 1's bilinear, as the "
        "reference FID code, so FIDs compare with published ones at 50,000 samples) or torch "
        "(PyTorch's half-pixel bilinear, as versions before this one)",
    )
    ema_length_arg(v, "the base model")
    v.add_argument(
        "--guidance", type=guidance, help="classifier-free guidance scale for the samples (default: the artifact's)"
    )
    v.add_argument("--outdir", type=Path, help="write eval.json and image grids here")
    v.add_argument(
        "--batch",
        type=positive,
        help="examples per network call (default: the artifact's eval.batch; images 250, clips 16)",
    )
    v.add_argument("--json", action="store_true")
    _device_arg(v, split=True)
    _common(v)

    i = sub.add_parser("info", help="parameter counts, FLOPs and training memory of a preset (no memory allocated)")
    _config_args(i)
    i.add_argument("--gpus", type=positive, default=8, help="GPU count of the memory estimate (default 8)")
    i.add_argument("--json", action="store_true")
    _common(i)
