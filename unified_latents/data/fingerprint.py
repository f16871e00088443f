"""Fingerprints of training and held-out data: what ties a latent cache, a training state or a
reference-feature cache to the examples it was made from.

Content, not place: the data settings, and for a source on disk the relative name and size of
every file plus a hash of the first and last MiB of up to three of them (first, middle, last; a
single file up to 256 MiB, an .npz say, is hashed whole). A copy of the data at another path has
the same fingerprint; an added, removed or resized file, or a rewritten sampled one, gives
another. A folder's files are never all read, so it stays cheap for a million files. Embedded
sources (fmnist, moving-fmnist, photos) are their name (and the photo benchmark's list of
photos). An hf: dataset is the folder and file names and sizes of the Arrow files `datasets`
caches it in (the folder name is `datasets`' own fingerprint of the data).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .hub import is_hub, open_split

SAMPLED = 1 << 20  # bytes hashed from the start and from the end of each sampled file
WHOLE = 256 << 20  # a single-file source up to this size is hashed whole
VERSION = "v2:"  # fingerprints of earlier versions (size and mtime based) lack it and are treated as absent
SETTINGS = ("resolution", "channels", "pad", "frames", "frame_stride", "clips", "image_column", "label_column")
EMBEDDED = ("fmnist", "moving-fmnist", "photos")  # sources that are names, whatever the working folder holds
IGNORED = (".DS_Store", "Thumbs.db", "desktop.ini")


def data_fingerprint(cfg: DataConfig, source: str, split: str = "train") -> str:
    """VERSION + sha256 (hex) of what defines the examples of `source` under the settings of `cfg`."""
    h = hashlib.sha256()
    p = Path(source).expanduser() if source else None
    on_disk = source not in EMBEDDED and not is_hub(source) and p is not None and p.exists()
    h.update(json.dumps([None if on_disk else source, split, {k: getattr(cfg, k) for k in SETTINGS}]).encode())
    if source == "photos":  # the benchmark's photo list is part of what defines its examples
        from . import photos

        h.update(json.dumps([photos.TRAIN_PHOTOS, photos.TEST_PHOTOS]).encode())
    try:
        if on_disk:
            assert p is not None  # on_disk says so
            _hash_files(h, p)
        elif is_hub(source):
            for c in open_split(cfg, source, split).cache_files:  # datasets keys its cache folders on the data
                f = Path(c["filename"])
                h.update(f"{f.parent.name}/{f.name}:{f.stat().st_size}\n".encode())
    except OSError as e:
        raise DataError(f"cannot read {source} to fingerprint it ({e}); check the files' permissions") from None
    return VERSION + h.hexdigest()


def _hash_files(h, p: Path) -> None:
    files = (
        [p]
        if p.is_file()
        else sorted(f for f in p.rglob("*") if f.is_file() and f.name not in IGNORED and not f.name.startswith("."))
    )
    for f in files:
        h.update(f"{f.relative_to(p) if f != p else ''}:{f.stat().st_size}\n".encode())
    sampled = sorted({0, len(files) // 2, len(files) - 1}) if files else []  # in order: the same bytes every run
    for i in sampled:
        size = files[i].stat().st_size
        with open(files[i], "rb") as fh:
            if len(files) == 1 and size <= WHOLE:
                h.update(hashlib.sha256(fh.read()).digest())
                continue
            h.update(hashlib.sha256(fh.read(SAMPLED)).digest())
            fh.seek(max(0, size - SAMPLED))
            h.update(hashlib.sha256(fh.read(SAMPLED)).digest())


def comparable(stored: str | None) -> str | None:
    """A stored fingerprint, or None when it is absent or of an earlier version (not comparable)."""
    return stored if isinstance(stored, str) and stored.startswith(VERSION) else None


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, computed once per (path, size, modification time): checking
    a pinned network and keying a cache on it read the file once."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
