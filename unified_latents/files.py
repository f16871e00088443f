"""Files written atomically (a temp file in the same folder, fsync, rename: never half written) and
safetensors read with a clear error."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file


def atomic_write(path: Path, write_fn) -> None:
    """Write via `write_fn(tmp_path)` to a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log. A line that does not parse (torn by a kill or a full
    disk mid-write) is skipped with a warning on stderr rather than failing a resume or a report."""
    out, bad = [], 0
    for ln in Path(path).read_text().splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    if bad:
        print(f"warning: {path}: skipped {bad} unreadable line(s) (a write cut short?)", file=sys.stderr)
    return out


def read_safetensors(path: Path, error: type[Exception], fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file; `error` naming the file and `fix` otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise error(f"{path} is not a readable safetensors file ({e}); it may be truncated: {fix}") from None
