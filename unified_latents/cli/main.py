"""`ul` command line: parse, validate, call the library. No logic a library user would need."""

from __future__ import annotations

import json
import sys

from .. import dist
from ..errors import UserError
from ..files import folder_fault_message, is_folder_fault
from .args import parse_seeds, writable_dir
from .data_cmd import cmd_data
from .demo_cmd import cmd_demo
from .distill_cmd import cmd_distill
from .export_cmd import cmd_export
from .parser import build_parser


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
    except OSError as e:
        if args.debug or not is_folder_fault(e):
            raise
        print(f"error: {folder_fault_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.exit(130)
    finally:
        dist.shutdown()
