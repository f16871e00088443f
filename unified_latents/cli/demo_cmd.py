"""`ul demo`: a browser page for an artifact (demo.py, Gradio)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_command(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="a browser page: generate with the model, reconstruct an upload "
        "(needs: pip install 'unified-latents[demo]')",
    )
    d.add_argument(
        "--artifact",
        required=True,
        type=Path,
        help="a base artifact (or an export folder); a stage-1 one gives the reconstruction tab only",
    )
    d.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    d.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    d.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import serve

    print(f"serving {args.artifact} on http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    serve(str(args.artifact), args.port, args.device)
