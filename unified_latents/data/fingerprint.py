"""Fingerprints of training and held-out data: what ties a latent cache, a training state or a
reference-feature cache to the examples it was made from.

Content, not place: the data settings, and for a source on disk the relative name and size of
every file plus a hash of the bytes of up to three of them (first, middle, last; at most 1 MiB
each). A copy of the data at another path has the same fingerprint; an added, removed, resized
or rewritten-in-place file (among the sampled ones) gives another. No file is read whole, so it
stays cheap for a million files. Embedded sources (fmnist, moving-fmnist, photos) are their name.
An hf: dataset is the names and sizes of the Arrow files `datasets` holds it in (their names carry
`datasets`' own fingerprint of the data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import DataConfig
from .hub import is_hub, open_split

SAMPLED = 1 << 20  # bytes hashed from each sampled file
SETTINGS = ("resolution", "channels", "pad", "frames", "frame_stride", "clips", "image_column", "label_column")


def data_fingerprint(cfg: DataConfig, source: str, split: str = "train") -> str:
    """sha256 (hex) of what defines the examples of `source` under the settings of `cfg`."""
    h = hashlib.sha256()
    p = Path(source).expanduser() if source else None
    on_disk = p is not None and p.exists()
    h.update(json.dumps([None if on_disk else source, split, {k: getattr(cfg, k) for k in SETTINGS}]).encode())
    if on_disk:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            h.update(f"{f.relative_to(p) if f != p else ''}:{f.stat().st_size}\n".encode())
        for f in {files[0], files[len(files) // 2], files[-1]} if files else ():
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read(SAMPLED)).digest())
    elif is_hub(source):
        for c in open_split(cfg, source, split).cache_files:
            h.update(f"{Path(c['filename']).name}:{Path(c['filename']).stat().st_size}\n".encode())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
