"""`ul` command line: parse, validate, call the library. No logic a library user would need."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import dist
from ..errors import UserError
from ..presets import PRESETS
from .args import at_least, ema_length_arg, guidance, parse_seeds, positive, writable_dir, zero_or_two_plus
from .data_cmd import add_data_commands, cmd_data
from .demo_cmd import add_demo_command, cmd_demo
from .distill_cmd import add_distill_command, cmd_distill
from .export_cmd import add_export_command, cmd_export


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
    _artifact_commands(sub)
    add_data_commands(sub)
    add_export_command(sub)
    add_demo_command(sub)
    add_distill_command(sub)
    return ap


def _training_commands(sub) -> None:
    """train, reconstruct, pipeline, sweep."""
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
    """encode, sample, eval, info."""
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


def _resolve_overrides(args) -> list[str]:
    """The command-line flags that stand for config fields, as `key=value` overrides."""
    overrides = list(args.overrides)
    if getattr(args, "baseline", None):
        from ..presets import baseline_overrides

        overrides = baseline_overrides(args.baseline) + overrides
    if getattr(args, "data", None):
        overrides.append(f"data.source={json.dumps(args.data)}")
    if getattr(args, "eval_data", None):
        overrides.append(f"data.eval_source={json.dumps(args.eval_data)}")
    if getattr(args, "target_bits", None) is not None:
        overrides.append(f"diffusion.target_bits={args.target_bits}")
    if getattr(args, "skip_bad", False):
        overrides.append("data.skip_bad=true")
    return overrides


def _resolve_config(args):
    from ..config import apply_overrides
    from ..objectives.registry import preset_config

    stage = getattr(args, "stage", None) or "latents"
    cfg = preset_config(args.preset, stage)
    overrides = _resolve_overrides(args)
    if stage == "base":
        from ..stages import base_config

        if not getattr(args, "artifact", None):
            raise UserError("`--stage base` needs the stage-1 artifact: add --artifact runs/.../artifact.safetensors")
        cfg = base_config(cfg, args.artifact)
        if getattr(args, "latents", None):
            overrides.append(f"base.latents={json.dumps(str(args.latents))}")
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> None:
    from ..stages import train_stage

    cfg = _resolve_config(args)
    writable_dir(args.outdir)
    device = dist.init()
    try:
        res = train_stage(cfg, args.outdir, device, progress=False if args.no_progress else None, until=args.until)
        state = "done" if res.samples >= cfg.train.total_samples else "paused"
        dist.print0(f"{state}: {res.samples:,} samples; artifact {res.artifact}")
    finally:
        dist.shutdown()


def cmd_reconstruct(args) -> None:
    from ..eval.reconstruct import reconstruct

    device = dist.init(args.device)
    out = args.out or args.artifact.with_name("reconstructions.png")
    writable_dir(out.parent, "--out")
    m = reconstruct(
        args.artifact,
        args.data,
        out,
        args.count,
        args.steps,
        args.sampler,
        device=device,
        progress=sys.stderr.isatty(),
        mean_of=args.mean_of,
        batch=args.batch,
        ema_length=args.ema_length,
    )
    if not dist.is_main():
        return
    if args.json:
        print(json.dumps(m))
        return
    print(f"examples         {m['images']} (video: clips; PSNR/SSIM per frame, bits per clip)")
    how = "one decoder sample" if m["mean_of"] == 1 else f"mean of {m['mean_of']} decoder samples"
    print(f"PSNR             {m['psnr']:.2f} dB (0..255 pixels; {how})")
    print(f"SSIM             {m['ssim']:.4f}")
    print(
        f"latent bitrate   {m['bits_per_image']:.1f} bits/image (+- {m['bits_per_image_stderr']:.1f}), "
        f"{m['bpp']:.4f} bits/pixel"
    )
    print(f"grid             {out}")


def cmd_sweep(args) -> None:
    from ..jobs import run_sweep

    try:
        factors = [float(v) for v in args.loss_factors.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--loss-factors {args.loss_factors!r} must be numbers like 1.3,1.5,1.7") from None
    if not factors or min(factors) <= 0:
        raise UserError("--loss-factors needs at least one positive number, e.g. 1.3,1.5,1.7")
    writable_dir(args.outdir)
    device = dist.init()
    path = run_sweep(
        args.preset,
        _resolve_overrides(args),
        factors,
        args.outdir,
        device,
        args.samples,
        args.recon,
        args.ref_count,
        args.inception,
        progress=False if args.no_progress else None,
        trust=args.trust_torchscript,
    )
    print(f"sweep: {path}")


def cmd_encode(args) -> None:
    from ..stages import encode

    writable_dir(args.dest.parent if args.dest.suffix == ".safetensors" else args.dest, "--dest")
    dest = encode(
        args.artifact,
        args.data,
        args.dest,
        device=dist.init(args.device),
        progress=dist.is_main() and sys.stderr.isatty(),
    )
    dist.print0(f"latents: {dest}")


def cmd_sample(args) -> None:
    from ..generate import SampleRequest, write_samples

    interval = None
    if args.guidance_interval:
        try:
            interval = [float(v) for v in args.guidance_interval.split(",")]
            assert len(interval) == 2 and interval[0] <= interval[1]
        except (ValueError, AssertionError):
            raise UserError(
                f"--guidance-interval {args.guidance_interval!r} must be lo,hi with lo <= hi (log-SNR)"
            ) from None
    sampling = dict(
        steps=args.base_steps,
        decoder_steps=args.decoder_steps,
        sampler=args.sampler,
        guidance=args.guidance,
        interval=interval,
    )
    req = SampleRequest(args.classes, args.batch, args.npz, args.context, args.context_frames, args.fps, sampling)
    seeds = parse_seeds(args.seeds)
    writable_dir(args.outdir)
    device = dist.init(args.device)
    paths = write_samples(
        args.artifact, seeds, args.outdir, req, device, progress=dist.is_main() and sys.stderr.isatty()
    )
    for k, p in paths.items():
        dist.print0(f"{k}: {p}")


def cmd_evaluate(args) -> None:
    from ..eval.evaluate import EvalRequest, evaluate_artifact

    sampling = {
        k: v
        for k, v in (
            ("guidance", args.guidance),
            ("base_steps", args.base_steps),
            ("decoder_steps", args.decoder_steps),
            ("sampler", args.sampler),
        )
        if v is not None
    }
    if args.outdir is not None:
        writable_dir(args.outdir)
    device = dist.init(args.device)
    res = evaluate_artifact(
        args.artifact,
        EvalRequest(
            args.samples,
            args.recon,
            args.ref_count,
            args.inception,
            args.i3d,
            args.context_frames,
            sampling,
            device,
            progress=dist.is_main() and sys.stderr.isatty(),
            out=args.outdir,
            batch=args.batch,
            trust_torchscript=args.trust_torchscript,
            fid_resize=args.fid_resize,
            ema_length=args.ema_length,
        ),
    )
    if not dist.is_main():
        return
    if args.json:
        print(json.dumps(res))
        return
    from ..eval.report import format_metrics

    for line in format_metrics(res):
        print(line)


def cmd_info(args) -> None:
    import torch

    from ..eval import stage1_report
    from ..eval.memory import training_memory
    from ..objectives.registry import build_model

    cfg = _resolve_config(args)

    def meta_model():
        with torch.device("meta"):
            return build_model(cfg)

    model = meta_model()
    rep = stage1_report(model)
    mem = training_memory(meta_model, model.x_shape, cfg, args.gpus)
    if args.json:
        print(json.dumps({**rep, "memory": mem}))
        return
    print(f"preset {args.preset}: input {list(model.x_shape)}, latent {list(model.z_shape)}")
    print(f"{'network':<10} {'params':>14} {'GFLOP/sample (fwd)':>20}")
    for k, r in rep.items():
        print(f"{k:<10} {r['params']:>14,} {r['forward_flops'] / 1e9:>20.3f}")
    print(f"training cost: {rep['total']['train_flops'] / 1e9:.3f} GFLOP per sample (3x forward)")
    _print_memory(mem)


def _print_memory(m: dict) -> None:
    print(
        f"training memory per GPU, {m['gpus']} GPUs, micro-batch {m['micro_batch']} (an estimate: model state "
        "counted, activations recorded in fp32 on the meta device, allocator overhead not counted):"
    )
    print(f"{'':<28} {'activations':>12} {'DDP':>9} {'FSDP':>9}   largest micro-batch in {m['budget_gib']:.0f} GiB")
    for tag, name in (("", "all activations kept"), ("_ckpt", "activation checkpointing")):
        print(
            f"{name:<28} {m[f'activations{tag}_gib']:>8.1f} GiB {m[f'ddp{tag}_gib']:>5.1f} GiB "
            f"{m[f'fsdp{tag}_gib']:>5.1f} GiB"
            f"   DDP {m[f'ddp{tag}_max_micro']}, FSDP {m[f'fsdp{tag}_max_micro']}"
        )


def cmd_pipeline(args) -> None:
    from ..jobs import run_pipeline

    overrides = _resolve_overrides(args)
    writable_dir(args.outdir)
    device = dist.init()
    if dist.world() > 1:
        raise UserError(
            "`ul pipeline` runs in one process; use `torchrun ... -m unified_latents train` for data-parallel training"
        )
    report = run_pipeline(
        args.preset,
        overrides,
        args.outdir,
        device,
        args.samples,
        args.recon,
        args.ref_count,
        args.inception,
        progress=False if args.no_progress else None,
        i3d=args.i3d,
        trust=args.trust_torchscript,
    )
    print(f"report: {report}")


COMMANDS = {
    "demo": cmd_demo,
    "distill": cmd_distill,
    "export": cmd_export,
    "data": cmd_data,
    "sweep": cmd_sweep,
    "pipeline": cmd_pipeline,
    "train": cmd_train,
    "encode": cmd_encode,
    "sample": cmd_sample,
    "eval": cmd_evaluate,
    "reconstruct": cmd_reconstruct,
    "info": cmd_info,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.cmd](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.exit(130)
    finally:
        dist.shutdown()
