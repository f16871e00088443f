"""`ul export`: an artifact as a Hugging Face-style folder (export.py), optionally pushed to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_export_command(sub) -> None:
    x = sub.add_parser("export", help="write an artifact as a Hugging Face-style folder (and push it to the Hub)")
    x.add_argument("--artifact", required=True, type=Path, help="an artifact.safetensors (stage 1, base or pixel)")
    x.add_argument(
        "--to",
        required=True,
        type=Path,
        help="the folder to write (config.json + model.safetensors per "
        "component, a model card); every --artifact takes it",
    )
    x.add_argument(
        "--eval", type=Path, help="eval.json whose metrics go into the model card (default: the run's, if found)"
    )
    x.add_argument("--push", metavar="USER/NAME", help="also upload the folder to this Hugging Face Hub repo")
    x.add_argument("--private", action="store_true", help="with --push: create the repo private")
    x.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_export(args: argparse.Namespace) -> None:
    from ..export import export, push
    from .args import writable_dir

    writable_dir(args.to.parent, "--to")
    folder = export(args.artifact, args.to, args.eval)
    print(f"exported {args.artifact} to {folder}")
    if args.push:
        print(f"pushed: {push(folder, args.push, args.private)}")
