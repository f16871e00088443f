"""`ul distill`: progressive distillation of the decoder or the base model (distill.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_distill_command(sub) -> None:
    from .args import float_in, positive

    d = sub.add_parser("distill", help="progressive distillation: a decoder or base model that samples in fewer steps")
    d.add_argument("--artifact", required=True, type=Path, help="stage-1 artifact (--part decoder) or base artifact")
    d.add_argument("--part", required=True, choices=["decoder", "base"], help="the network to distil")
    d.add_argument(
        "--steps", required=True, type=positive, help="DDIM steps of the result (the artifact's halved 1+ times)"
    )
    d.add_argument("--from-steps", type=positive, help="the teacher's steps (default: the artifact's sampling config)")
    d.add_argument("--out", required=True, type=Path, help="the student artifact to write (.safetensors)")
    d.add_argument(
        "--samples-per-round", type=positive, default=16_000, help="training examples per halving (default 16000)"
    )
    d.add_argument("--batch", type=positive, default=64)
    d.add_argument("--lr", type=float_in(0.0, 1.0, "a learning rate"), default=1e-4)
    d.add_argument("--data", help="training data (default: the artifact's)")
    d.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="where the networks run: auto (default: the GPU when there is one), cuda or cpu",
    )
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_distill(args: argparse.Namespace) -> None:
    from .. import dist
    from ..distill import DistillRequest, distill
    from .args import writable_dir

    writable_dir(args.out.parent, "--out")
    req = DistillRequest(args.part, args.steps, args.samples_per_round, args.batch, args.lr, args.from_steps, args.data)
    s = distill(args.artifact, args.out, req, dist.init(args.device), progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(s))
        return
    for r in s["rounds"]:
        print(
            f"{r['teacher_steps']:>4} -> {r['student_steps']:<4} steps: loss {r['first_loss']:.4g} -> "
            f"{r['last_loss']:.4g}"
        )
    print(f"wrote {args.out} ({s['part']} in {s['steps']} DDIM steps, {s['seconds']:.0f} s)")
