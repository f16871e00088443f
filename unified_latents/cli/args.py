"""argparse types and checks of command-line values: each bad value is one `error:` line that
names the flag and what it takes, before any work starts."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..errors import UserError

MAX_SEEDS = 10_000_000  # seeds one command may ask for (a 50,000-sample FID needs 50,000)
SEED_LIMIT = 2**63  # seeds seed torch.Generator, which takes a signed 64-bit integer


def at_least(low: int):
    """argparse type: a whole number >= `low`."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {low} or more")
        return v

    parse.__name__ = f"whole number >= {low}"
    return parse


positive = at_least(1)
non_negative = at_least(0)


def zero_or_two_plus(text: str) -> int:
    """argparse type of --recon: 0 (skip) or a count an FID can be computed from (2 or more)."""
    v = non_negative(text)
    if v == 1:
        raise argparse.ArgumentTypeError("1 reconstruction gives no FID: give 0 (skip) or 2 or more")
    return v


def guidance(text: str) -> float:
    """argparse type: a classifier-free guidance scale, a finite number >= 0 (1 = no guidance)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of 0 or more (1 = no guidance)")
    return v


def float_in(lo: float, hi: float, what: str):
    """argparse type: a finite number in (lo, hi]."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (math.isfinite(v) and lo < v <= hi):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a number in ({lo:g}, {hi:g}])")
        return v

    return parse


def parse_seeds(spec: str) -> list[int]:
    """'0-63' or '0,5,9' or '0-9,100-109' -> list of seeds, each in [0, 2^63), at most MAX_SEEDS."""
    ranges: list[tuple[int, int]] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                ranges.append((int(lo), int(hi)))
            elif part:
                ranges.append((int(part), int(part)))
    except ValueError:
        raise UserError(f"cannot read seeds {spec!r}; write them like 0-63 or 0,5,9") from None
    if not ranges or any(hi < lo for lo, hi in ranges):
        raise UserError(f"no seeds in {spec!r}; write them like 0-63 (low-high, low <= high)")
    if any(lo < 0 or hi >= SEED_LIMIT for lo, hi in ranges):
        raise UserError(f"seeds {spec!r}: every seed must be in 0..{SEED_LIMIT - 1} (torch seeds are 64-bit)")
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_SEEDS:
        raise UserError(f"seeds {spec!r} ask for {count:,} samples; at most {MAX_SEEDS:,} per command: split the range")
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


def writable_dir(path: Path, flag: str = "--outdir") -> Path:
    """Check that `path` can be an output folder (nothing is created here, so a command refused
    later leaves nothing behind): an existing folder we can write, or a missing one whose nearest
    existing parent is such a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is an existing file, not a folder; choose a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {parent} is a file; choose a folder you can write")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; choose a folder you can write")
    return path


def ema_length_arg(p, which: str) -> None:
    """--ema-length: a post-hoc EMA of `which`, rebuilt from the snapshots its run wrote."""
    p.add_argument(
        "--ema-length",
        type=float_in(0.0, 0.28, "a relative EMA length"),
        metavar="SIGMA_REL",
        help=f"use the post-hoc EMA of {which} at this relative length (e.g. 0.08), rebuilt from the snapshots "
        "its training run wrote with train.posthoc_ema (README: post-hoc EMA)",
    )
