"""Progressive distillation against its teachers: rFID of a distilled decoder, gFID of a distilled
base model, and the time per image of each, side by side in one run.

    python benchmarks/distill.py --artifact runs/fmnist/base/artifact.safetensors --outdir runs/distill \
        [--decoder-steps 4] [--base-steps 12] [--samples 2000] [--recon 2000] [--samples-per-round 16000]

Distils (once; found students are reused) the artifact's decoder to --decoder-steps and its base
model to --base-steps with `ul distill`'s code, then evaluates with the same seeds and held-out
examples:
- decoder rows: rFID of --recon held-out reconstructions against their own originals, PSNR, and
  decoder seconds per image, for the teacher at its own steps, the teacher at the student's
  steps (no distillation) and the student;
- base rows: gFID/KID of --samples samples (the teacher's decoder at its own steps, so that only
  the base model differs), generation seconds per image, for the teacher at its own steps, the
  teacher at the student's steps and the student; a last row pairs both students.
Seconds per image are the wall time of one batch of --time-batch examples (2 cores: quote the
float32 matmul figure of benchmarks/train_speed.py beside them); --time-only re-times the rows
without their FIDs, for a machine that was busy during the first run. --rows picks rows, e.g.
`--base-steps 3 --rows base-fewer,base-student`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.data import to_float  # noqa: E402
from unified_latents.distill import DistillRequest, distill  # noqa: E402
from unified_latents.eval.evaluate import EvalRequest, eval_context, eval_reconstructions, eval_samples  # noqa: E402
from unified_latents.generate import class_labels, generate_images  # noqa: E402
from unified_latents.objectives.registry import load_model  # noqa: E402


def student(artifact: Path, out: Path, part: str, steps: int, per_round: int) -> Path:
    if not out.exists():
        s = distill(artifact, out, DistillRequest(part, steps, samples_per_round=per_round), progress=True)
        print(f"  distilled the {part} to {steps} steps in {s['seconds'] / 60:.1f} min", flush=True)
    return out


def row_context(shared, model, sampling: dict):
    """The evaluation context of one row: the shared held-out data, Inception and reference
    features (loaded once), with this row's model and sampling settings."""
    return dataclasses.replace(shared, model=model, sc=dataclasses.replace(model.cfg.sample, **sampling))


def decoder_row(name: str, model, steps: int, args) -> dict:
    ctx = row_context(args.shared, model, {"sampler": "ddim", "decoder_steps": steps})
    rec = None if args.time_only else eval_reconstructions(ctx, args.recon)
    x = to_float(ctx.held.images[: args.time_batch])
    t0 = time.perf_counter()
    with torch.no_grad():  # encoding and decoding only (the evaluation above also measures bits)
        model.stage1.reconstruct(x, list(range(x.shape[0])), steps, "ddim", 1)
    sec = (time.perf_counter() - t0) / args.time_batch
    nan = float("nan")
    return {"name": name, "steps": steps, "fid": rec.rfid if rec else nan, "psnr": rec.psnr if rec else nan, "sec": sec}


def base_row(name: str, model, base_steps: int, decoder_steps: int, args) -> dict:
    ctx = row_context(args.shared, model, {"sampler": "ddim", "base_steps": base_steps, "decoder_steps": decoder_steps})
    s = None if args.time_only else eval_samples(ctx, args.samples, args.ref_count, None)
    seeds = list(range(args.time_batch))
    labels = class_labels(seeds, None, model.num_classes)
    t0 = time.perf_counter()
    generate_images(
        model,
        seeds,
        labels,
        batch=args.time_batch,
        steps=base_steps,
        decoder_steps=decoder_steps,
        sampler="ddim",
        guidance=ctx.sc.guidance,
        interval=ctx.sc.guidance_interval,
    )
    sec = (time.perf_counter() - t0) / args.time_batch
    nan = float("nan")
    return {
        "name": name,
        "steps": f"{base_steps} + {decoder_steps}",
        "fid": s.gfid if s else nan,
        "kid": s.kid * 1e3 if s else nan,
        "sec": sec,
    }


ROWS = ("decoder-teacher", "decoder-fewer", "decoder-student", "base-teacher", "base-fewer", "base-student", "both")


def rows(args, teacher, td: int, tb: int) -> tuple[list[dict], list[dict]]:
    """The requested rows: decoder rows (rFID) and generation rows (gFID)."""
    want, nd, nb = set(args.rows.split(",")), args.decoder_steps, args.base_steps
    dstudent = bstudent = None
    if want & {"decoder-student", "both"}:
        path = student(args.artifact, args.outdir / f"decoder-{nd}.safetensors", "decoder", nd, args.samples_per_round)
        dstudent, _ = load_model(path, "cpu", stage="base")
    if want & {"base-student", "both"}:
        path = student(args.artifact, args.outdir / f"base-{nb}.safetensors", "base", nb, args.samples_per_round)
        bstudent, _ = load_model(path, "cpu", stage="base")
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    plan = {
        "decoder-teacher": lambda: decoder_row("teacher", teacher, td, args),
        "decoder-fewer": lambda: decoder_row("teacher, fewer steps", teacher, nd, args),
        "decoder-student": lambda: decoder_row("distilled", dstudent, nd, args),
        "base-teacher": lambda: base_row("teacher", teacher, tb, td, args),
        "base-fewer": lambda: base_row("teacher, fewer steps", teacher, nb, td, args),
        "base-student": lambda: base_row("distilled base", bstudent, nb, td, args),
    }
    out = {k: plan[k]() for k in ROWS[:-1] if k in want}
    if "both" in want:
        bstudent.stage1.decoder.load_state_dict(dstudent.stage1.decoder.state_dict())
        out["both"] = base_row("distilled base + distilled decoder", bstudent, nb, nd, args)
    return [v for k, v in out.items() if k.startswith("decoder")], [
        v for k, v in out.items() if not k.startswith("decoder")
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, required=True, help="base-model (stage-2) artifact: the teacher")
    ap.add_argument("--outdir", type=Path, required=True, help="where the students are written (and found)")
    ap.add_argument("--decoder-steps", type=int, default=4)
    ap.add_argument("--base-steps", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--recon", type=int, default=2000)
    ap.add_argument("--ref-count", type=int, default=2000)
    ap.add_argument("--samples-per-round", type=int, default=16_000)
    ap.add_argument("--time-batch", type=int, default=250)
    ap.add_argument(
        "--time-only", action="store_true", help="only the seconds per image (no FID): to re-time on a quiet machine"
    )
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among {', '.join(ROWS)}")
    args = ap.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    teacher, cfg = load_model(args.artifact, "cpu", stage="base")
    args.shared, _, _ = eval_context(teacher, EvalRequest(ref_count=args.ref_count, progress=False))
    dec, base = rows(args, teacher, cfg.sample.decoder_steps, cfg.sample.base_steps)
    print(
        f"\n| decoder | DDIM steps | rFID ({args.recon}, vs own originals) | PSNR (dB) | decoder s / image |\n"
        "|---|---|---|---|---|"
    )
    for r in dec:
        print(f"| {r['name']} | {r['steps']} | {r['fid']:.2f} | {r['psnr']:.2f} | {r['sec']:.4f} |")
    print(
        f"\n| generation | base + decoder DDIM steps | gFID ({args.samples}) | KID x 1e3 | s / image |\n"
        "|---|---|---|---|---|"
    )
    for r in base:
        print(f"| {r['name']} | {r['steps']} | {r['fid']:.2f} | {r['kid']:.1f} | {r['sec']:.4f} |")


if __name__ == "__main__":
    main()
