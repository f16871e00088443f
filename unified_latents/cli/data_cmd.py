"""`ul data prepare`: turn an image source into a prepared dataset (data/prepared.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_data_commands(sub) -> None:
    d = sub.add_parser("data", help="prepare datasets (ul data prepare SRC --dest DIR)")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    p = dsub.add_parser(
        "prepare",
        help="decode, convert and resize images once into Arrow files read by index "
        "(needs: pip install 'unified-latents[data]')",
    )
    p.add_argument(
        "source",
        help="a folder of images (sub-folders = classes), an .npz, 'fmnist', 'photos' or "
        "hf:NAME[:SPLIT]; with --frames: a folder of videos, a video file, an .npz of clips "
        "or 'moving-fmnist'",
    )
    p.add_argument("--dest", required=True, type=Path, help="the prepared folder; train with --data DEST")
    p.add_argument("--preset", default="fmnist", help="whose data settings (resolution, channels, pad) to use")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. --set data.resolution=64 --set data.channels=3",
    )
    p.add_argument("--resolution", type=int, help="image side after resizing, pad included (data.resolution)")
    p.add_argument("--frames", type=int, help="video: frames per clip (data.frames); clips are cut from each video")
    p.add_argument("--frame-stride", type=int, help="video: keep every k-th frame (data.frame_stride)")
    p.add_argument("--num-proc", type=int, default=1, help="processes decoding image files (default 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files and list them instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_data(args: argparse.Namespace) -> None:
    from ..config import apply_overrides
    from ..data.prepared import prepare
    from ..errors import UserError
    from ..objectives.registry import preset_config

    if args.num_proc < 1:
        raise UserError(f"--num-proc must be 1 or more, got {args.num_proc}")
    shortcuts = [
        f"data.{k}={v}"
        for k, v in (("resolution", args.resolution), ("frames", args.frames), ("frame_stride", args.frame_stride))
        if v is not None
    ]
    cfg = apply_overrides(
        preset_config(args.preset, "latents"),
        [*args.overrides, *shortcuts, f"data.skip_bad={str(args.skip_bad).lower()}"],
    )
    meta = prepare(
        cfg.data, args.source, args.dest, args.num_proc, progress=not args.no_progress and sys.stderr.isatty()
    )
    what = f"clips of {meta['frames']} frames" if meta["frames"] else "images"
    print(
        f"prepared {meta['count']:,} {what} ({meta['size']}x{meta['size']}, {meta['channels']} channel(s), "
        f"{'labelled' if meta['labelled'] else 'no labels'}) in {args.dest}"
    )
    for path in meta["skipped"]:
        print(f"skipped (unreadable): {path}")
