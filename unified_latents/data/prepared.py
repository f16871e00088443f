"""Prepared image datasets (`ul data prepare`): images decoded, converted and resized once, stored
PNG-encoded with their labels in Hugging Face `datasets` Arrow files, and read back by index
from memory-mapped files, so memory does not grow with the dataset.

A prepared folder holds `part-<k>/` (one `datasets` save per chunk of sources, written to a
temporary name and renamed, so an interrupted `prepare` resumes at the first missing part) and
`ul-prepared.json`, written last: image size, channels, count, labels, skipped files.
Examples keep the source's order (sorted file names), so training on a prepared folder sees the
same examples in the same order as training on the folder itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import DataConfig
from ..errors import DataError, UserError
from ..files import atomic_write_text
from .images import IMAGE_SUFFIXES, ImageData, fit_image, load_image_file, load_image_set

MARKER = "ul-prepared.json"
PART = 5_000  # examples per part: the unit of resuming, and what is held in memory while a part is written
PLAN = "ul-prepare-plan.json"  # what the parts are made of; a rerun with other settings is refused


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("prepared datasets need Hugging Face `datasets`: pip install 'unified-latents[data]' "
                        "(or pip install datasets)") from None
    datasets.disable_progress_bars()  # ours is the one progress bar
    return datasets


def is_prepared(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


# ----------------------------------------------------------------------------- writing


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _decode_file(job: tuple[str, int, int]) -> tuple[bytes | None, str, str]:
    """(PNG bytes, path, "") of one image file, or (None, path, the reason it cannot be read)."""
    path, channels, size = job
    try:
        return _png(load_image_file(Path(path), channels, size)), path, ""
    except Exception as e:  # noqa: BLE001 (reported with the file's name; the caller decides)
        return None, path, str(e)


def _sources(cfg: DataConfig, source: str, inner: int) -> tuple[list | np.ndarray, list | None]:
    """(jobs, labels or None) in the source's order: (file, channels, size) per image file of a
    folder; a `datasets` table decoded a part at a time (hf:NAME); or the uint8 arrays of a small
    source (an .npz, fmnist, photos) loaded whole."""
    if source.startswith("hf:"):
        return _hub_source(cfg, source[3:], inner)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"no images (PNG/JPEG/...) found under {path}")
        classes = sorted({p.relative_to(path).parts[0] for p in files if len(p.relative_to(path).parts) > 1})
        labelled = classes and all(len(p.relative_to(path).parts) > 1 for p in files)
        labels = [classes.index(p.relative_to(path).parts[0]) for p in files] if labelled else None
        return [(str(p), cfg.channels, inner) for p in files], labels
    data = load_image_set(dataclasses.replace(cfg, pad=0, resolution=inner), source)
    return data.images.numpy(), (data.labels.tolist() if data.labels is not None else None)


def _hub_source(cfg: DataConfig, spec: str, inner: int):
    """hf:NAME[:SPLIT]: a dataset loaded with datasets.load_dataset (a Hub name, or a local folder
    or files it understands); images from the column data.image_column, labels from
    data.label_column when it exists. Decoded in this process, as `datasets` returns PIL images."""
    datasets = require_datasets()
    name, _, split = spec.rpartition(":") if ":" in spec and "/" not in spec.rpartition(":")[2] else (spec, "", "")
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 (offline, unknown name, unknown split: all end here)
        raise DataError(f"cannot load the dataset {name!r} (split {split!r}) with datasets.load_dataset: {e}") from None
    if cfg.image_column not in ds.column_names:
        raise DataError(f"{name}: no column {cfg.image_column!r} (columns: {', '.join(ds.column_names)}); "
                        "name the image column with --set data.image_column=NAME")
    labels = list(ds[cfg.label_column]) if cfg.label_column in ds.column_names else None
    return _HubImages(ds, cfg.image_column, cfg.channels, inner), labels


class _HubImages:
    """A `datasets` table's images, decoded and fitted a slice (one part) at a time."""

    def __init__(self, ds, column: str, channels: int, size: int):
        self.ds, self.column, self.channels, self.size = ds, column, channels, size

    def __len__(self) -> int:
        return self.ds.num_rows

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.stack([fit_image(im, self.channels, self.size) for im in self.ds[sl][self.column]])


def prepare(cfg: DataConfig, source: str, dest: Path, num_proc: int = 1, progress: bool = True) -> dict:
    """Write `source` (an image folder, an .npz, fmnist, photos) as a prepared dataset at `dest`,
    `num_proc` processes decoding files; rerun after an interruption to resume."""
    datasets = require_datasets()
    dest, inner = Path(dest), cfg.resolution - 2 * cfg.pad
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)  # written last
    jobs, labels = _sources(cfg, source, inner)
    _check_plan(dest, {"source": str(source), "size": inner, "channels": cfg.channels, "part": PART, "count": len(jobs)})
    files = isinstance(jobs, list)  # image files to decode; otherwise arrays (sliced one part at a time)
    pool = get_context("spawn").Pool(num_proc) if num_proc > 1 and files else None
    parts, skipped = [], []
    try:
        with tqdm(total=len(jobs), desc=f"preparing {source}", unit="img", disable=not progress) as bar:
            for k, start in enumerate(range(0, len(jobs), PART)):
                part = dest / f"part-{k:05d}"
                if not (part / "skipped.json").exists():  # a finished part is not decoded again
                    chunk = jobs[start : start + PART]
                    rows = (pool.imap(_decode_file, chunk, chunksize=32) if pool else map(_decode_file, chunk)) if files \
                        else ((_png(a), "", "") for a in chunk)
                    _write_part(datasets, part, list(rows), labels[start : start + PART] if labels else None, cfg.skip_bad)
                skipped += json.loads((part / "skipped.json").read_text())
                parts.append(part.name)
                bar.update(min(PART, len(jobs) - start))
    finally:
        if pool:
            pool.terminate()
    return _finish(datasets, dest, parts, skipped, str(source), inner, cfg.channels, labels is not None)


def prepare_chunks(dest: Path, chunks, size: int, channels: int, labelled: bool, source: str,
                   progress: bool = True) -> dict:
    """A prepared dataset from arrays made on the fly (benchmarks, generated data): `chunks` yields
    (uint8 [n, channels, size, size], labels or None), one part each."""
    datasets = require_datasets()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)
    parts = []
    for k, (arrays, labels) in enumerate(tqdm(chunks, desc=f"preparing {source}", unit="part", disable=not progress)):
        part = dest / f"part-{k:05d}"
        _write_part(datasets, part, [(_png(a), "", "") for a in arrays], labels, skip_bad=False)
        parts.append(part.name)
    return _finish(datasets, dest, parts, [], source, size, channels, labelled)


def _finish(datasets, dest: Path, parts: list[str], skipped: list[str], source: str, size: int, channels: int,
            labelled: bool) -> dict:
    """ul-prepared.json, written last: the folder is then a prepared dataset."""
    count = sum(datasets.load_from_disk(str(dest / p)).num_rows for p in parts)
    meta = {"format": "unified-latents/prepared-1", "source": source, "size": size, "channels": channels,
            "labelled": labelled, "count": count, "parts": parts, "skipped": skipped}
    atomic_write_text(dest / MARKER, json.dumps(meta, indent=1))
    return meta


def _check_plan(dest: Path, plan: dict) -> None:
    """Parts already in `dest` are reused only if they were made from the same source and settings."""
    path = dest / PLAN
    if path.exists() and json.loads(path.read_text()) != plan:
        raise DataError(f"{dest} holds parts of another prepare ({path.read_text().strip()}); remove the folder "
                        "or prepare into another --dest")
    atomic_write_text(path, json.dumps(plan))


def _write_part(datasets, part: Path, rows: list, labels: list | None, skip_bad: bool) -> None:
    """One part, written under a temporary name and renamed; skipped.json (the files left out) last."""
    bad = [(path, err) for png, path, err in rows if png is None]
    if bad and not skip_bad:
        raise DataError(f"cannot read image {bad[0][0]}: {bad[0][1]}; fix or remove it, or pass --skip-bad "
                        "to list and skip unreadable files")
    keep = [i for i, row in enumerate(rows) if row[0] is not None]
    features = datasets.Features({"image": datasets.Value("binary"), "label": datasets.Value("int64")})
    table = {"image": [rows[i][0] for i in keep], "label": [labels[i] if labels else -1 for i in keep]}
    tmp = part.with_name(part.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(part, ignore_errors=True)
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp))
    tmp.rename(part)
    atomic_write_text(part / "skipped.json", json.dumps([path for path, _ in bad]))


# ----------------------------------------------------------------------------- reading


class PreparedImages:
    """uint8 [N, C, H, W] by index (tensor, list or slice), decoded from the Arrow files on demand."""

    def __init__(self, table, size: int, channels: int, pad: int):
        self.table, self.pad = table, pad
        self.shape = (table.num_rows, channels, size + 2 * pad, size + 2 * pad)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        rows = list(range(*idx.indices(self.shape[0]))) if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        if isinstance(rows, int):
            rows = [rows]
        pngs = self.table[rows]["image"] if rows else []
        arrs = [np.asarray(Image.open(io.BytesIO(b))) for b in pngs]
        x = torch.from_numpy(np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrs])) if arrs \
            else torch.empty((0, *self.shape[1:2], self.shape[2] - 2 * self.pad, self.shape[3] - 2 * self.pad), dtype=torch.uint8)
        return torch.nn.functional.pad(x, (self.pad,) * 4) if self.pad else x


class RowRange:
    """Rows [lo, hi) of image rows (a tensor or PreparedImages) without decoding them: sliced
    like a tensor, it decodes only the slice asked for."""

    def __init__(self, images, lo: int, hi: int):
        self.images, self.lo = images, lo
        self.shape = (hi - lo, *tuple(images.shape)[1:])

    def __getitem__(self, sl: slice) -> torch.Tensor:
        a, b, _ = sl.indices(self.shape[0])
        return self.images[self.lo + a : self.lo + b]


def load_prepared(cfg: DataConfig, path: Path) -> ImageData:
    """A prepared folder as ImageData whose images are read lazily."""
    datasets = require_datasets()
    meta = json.loads((Path(path) / MARKER).read_text())
    inner = cfg.resolution - 2 * cfg.pad
    if (meta["size"], meta["channels"]) != (inner, cfg.channels):
        raise DataError(f"{path} was prepared at {meta['size']}x{meta['size']} with {meta['channels']} channel(s); this "
                        f"run needs {inner}x{inner} with {cfg.channels}: prepare it again with these settings")
    parts = [datasets.load_from_disk(str(Path(path) / p)) for p in meta["parts"]]
    table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    labels = torch.tensor(table["label"], dtype=torch.int64) if meta["labelled"] else None
    return ImageData(PreparedImages(table, inner, cfg.channels, cfg.pad), labels, meta["skipped"])
