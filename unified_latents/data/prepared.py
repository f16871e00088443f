"""Prepared datasets (`ul data prepare`): images (or video clips) decoded, converted and resized
once, stored PNG-encoded (a clip: one PNG per frame) with their labels in Hugging Face `datasets`
Arrow files, and read back by index from memory-mapped files, so memory does not grow with the
dataset.

A prepared folder holds `part-<k>/` (one `datasets` save per chunk of sources, written to a
temporary name and renamed, so an interrupted `prepare` resumes at the first missing part) and
`ul-prepared.json`, written last: image size, channels, frames, count, labels, skipped files.
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
from ..errors import DataError
from ..files import atomic_write_text, temp_folder
from ..runlock import holding
from .hub import HubImages, hub_labels, is_hub, open_split, require_datasets
from .images import ImageData
from .modality import IMAGE, Modality, modality_named, modality_of

MARKER = "ul-prepared.json"
# How many source items make a part (the unit of resuming, and what is held in memory while a part
# is written) is Modality.part: 5,000 images, or 200 video files (clips of an array).
PLAN = "ul-prepare-plan.json"  # what the parts are made of; a rerun with other settings is refused

# One source item as stored: ([stored example, ...], path or "row <i>", "") or (None, path, the reason it is unreadable)
Stored = tuple[list | None, str, str]


def is_prepared(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


# ----------------------------------------------------------------------------- writing


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _encode(arr: np.ndarray):
    """One example as stored: an image [C, H, W] as PNG bytes; a clip [C, T, H, W] as a PNG per frame."""
    return [_png(arr[:, t]) for t in range(arr.shape[1])] if arr.ndim == 4 else _png(arr)


def _decode_file(job: tuple[Modality, str, DataConfig, int]) -> Stored:
    """([stored example, ...], path, "") of one file (an image, or a video's clips), or
    (None, path, the reason it cannot be read)."""
    modality, path, cfg, size = job
    try:
        return [_encode(a) for a in modality.read_file(Path(path), cfg, size)], path, ""
    except Exception as e:  # noqa: BLE001 (reported with the file's name; the caller decides)
        return None, path, str(e)


def _sources(cfg: DataConfig, source: str, inner: int) -> tuple[list | np.ndarray, list | None]:
    """(jobs, labels or None) in the source's order: one job per image or video file of a folder
    (modality, file, config, size); a `datasets` table decoded a part at a time (hf:NAME); or the
    uint8 arrays of a small source (an .npz, fmnist, photos, moving-fmnist) loaded whole."""
    m = modality_of(cfg)
    if is_hub(source):
        if not m.from_hub:
            raise DataError(
                "video from Hugging Face datasets is not supported; give a folder of video files or an .npz of clips"
            )
        return _hub_source(cfg, source, inner)
    path = Path(source).expanduser()
    listed = m.source_files(path)
    if listed is not None:
        files, labels = listed
        return [(m, str(p), cfg, inner) for p in files], labels
    data = m.load_local(dataclasses.replace(cfg, pad=0, resolution=inner), source, "train")
    return data.images.numpy(), (data.labels.tolist() if data.labels is not None else None)


def _hub_source(cfg: DataConfig, spec: str, inner: int):
    """hf:NAME[:SPLIT] (data/hub.py): images decoded and fitted a slice (one part) at a time."""
    ds = open_split(cfg, spec)
    labels = hub_labels(cfg, ds)
    return HubImages(ds, cfg.image_column, cfg.channels, inner), (labels.tolist() if labels is not None else None)


@holding("dest", "ul data prepare")
def prepare(cfg: DataConfig, source: str, dest: Path, num_proc: int = 1, progress: bool = True) -> dict:
    """Write `source` (an image folder, an .npz, fmnist, photos, hf:NAME; with data.frames, a
    video folder or file, an .npz of clips, moving-fmnist) as a prepared dataset at `dest`,
    `num_proc` processes decoding files; rerun after an interruption to resume."""
    datasets = require_datasets()
    dest, inner = Path(dest), cfg.resolution - 2 * cfg.pad
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)  # written last
    jobs, labels = _sources(cfg, source, inner)
    m = modality_of(cfg)
    step = m.part
    _check_plan(
        dest,
        {
            "source": str(source),
            "size": inner,
            "channels": cfg.channels,
            "part": step,
            "count": len(jobs),
            "frames": cfg.frames,
            "frame_stride": m.used_stride(cfg.frame_stride),
        },
    )
    files = isinstance(jobs, list)  # files to decode; otherwise arrays (sliced one part at a time)
    pool = get_context("spawn").Pool(num_proc) if num_proc > 1 and files else None
    parts, skipped = [], []
    unit = m.file_unit if files else m.array_unit
    try:
        with tqdm(total=len(jobs), desc=f"preparing {source}", unit=unit, disable=not progress) as bar:
            for k, start in enumerate(range(0, len(jobs), step)):
                part = dest / f"part-{k:05d}"
                if not (part / "skipped.json").exists():  # a finished part is not decoded again
                    if files:
                        chunk = jobs[start : start + step]
                        rows = list(pool.imap(_decode_file, chunk, chunksize=4) if pool else map(_decode_file, chunk))
                    else:
                        rows = _array_rows(jobs, start, step, cfg.skip_bad)
                    _write_part(
                        datasets,
                        part,
                        rows,
                        labels[start : start + step] if labels else None,
                        cfg.skip_bad,
                        m,
                    )
                skipped += json.loads((part / "skipped.json").read_text())
                parts.append(part.name)
                bar.update(min(step, len(jobs) - start))
    finally:
        if pool:
            pool.terminate()
    shape = {"size": inner, "channels": cfg.channels, "frames": cfg.frames, "frame_stride": cfg.frame_stride}
    return _finish(datasets, dest, parts, skipped, str(source), shape, labels is not None)


def _array_rows(arrays, start: int, step: int, skip_bad: bool) -> list[Stored]:
    """Stored rows of arrays[start : start + step] (uint8 arrays, or an hf: table decoded on slicing);
    with skip_bad, a row that cannot be decoded is left out and named ("row <i>")."""
    try:
        return [([_encode(a)], "", "") for a in np.asarray(arrays[start : start + step])]
    except DataError:
        if not skip_bad:
            raise
    rows: list[Stored] = []
    for i in range(start, min(start + step, len(arrays))):
        try:
            rows.append(([_encode(np.asarray(arrays[i : i + 1])[0])], f"row {i}", ""))
        except DataError as e:
            rows.append((None, f"row {i}", str(e)))
    return rows


def prepare_chunks(
    dest: Path, chunks, size: int, channels: int, labelled: bool, source: str, progress: bool = True
) -> dict:
    """A prepared image dataset from arrays made on the fly (benchmarks, generated data): `chunks`
    yields (uint8 [n, channels, size, size], labels or None), one part each."""
    datasets = require_datasets()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)
    parts = []
    for k, (arrays, labels) in enumerate(tqdm(chunks, desc=f"preparing {source}", unit="part", disable=not progress)):
        part = dest / f"part-{k:05d}"
        _write_part(datasets, part, [([_png(a)], "", "") for a in arrays], labels, skip_bad=False, modality=IMAGE)
        parts.append(part.name)
    shape = {"size": size, "channels": channels, "frames": 0, "frame_stride": 1}
    return _finish(datasets, dest, parts, [], source, shape, labelled)


def _finish(
    datasets, dest: Path, parts: list[str], skipped: list[str], source: str, shape: dict, labelled: bool
) -> dict:
    """ul-prepared.json, written last: the folder is then a prepared dataset."""
    count = sum(datasets.load_from_disk(str(dest / p)).num_rows for p in parts)
    if not count:
        raise DataError(
            f"nothing to prepare from {source}: every file was skipped, or no video is long enough "
            "for data.frames x data.frame_stride"
        )
    meta = {
        "format": "unified-latents/prepared-1",
        "source": source,
        **shape,
        "labelled": labelled,
        "count": count,
        "parts": parts,
        "skipped": skipped,
    }
    atomic_write_text(dest / MARKER, json.dumps(meta, indent=1))
    return meta


def _check_plan(dest: Path, plan: dict) -> None:
    """Parts already in `dest` are reused only if they were made from the same source and settings."""
    path = dest / PLAN
    if path.exists() and json.loads(path.read_text()) != plan:
        raise DataError(
            f"{dest} holds parts of another prepare ({path.read_text().strip()}); remove the folder "
            "or prepare into another --dest"
        )
    atomic_write_text(path, json.dumps(plan))


def _write_part(
    datasets, part: Path, rows: list[Stored], labels: list | None, skip_bad: bool, modality: Modality
) -> None:
    """One part (rows: ([stored example, ...], path, error) per source item, labels per item),
    written under a temporary name and renamed; skipped.json (the files left out) last."""
    bad = [(path, err) for stored, path, err in rows if stored is None]
    if bad and not skip_bad:
        raise DataError(
            f"cannot read {bad[0][0]}: {bad[0][1]}; fix or remove it, or pass --skip-bad "
            "to list and skip unreadable files"
        )
    column = modality.column
    table: dict = {column: [], "label": []}
    for i, (stored, _, _) in enumerate(rows):
        for example in stored or []:
            table[column].append(example)
            table["label"].append(labels[i] if labels else -1)
    features = datasets.Features({column: modality.arrow_feature(datasets), "label": datasets.Value("int64")})
    shutil.rmtree(part, ignore_errors=True)
    with temp_folder(part.with_name(part.name + ".tmp")) as tmp:
        datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp))
        atomic_write_text(tmp / "skipped.json", json.dumps([path for path, _ in bad]))
        tmp.rename(part)


# ----------------------------------------------------------------------------- reading


class PreparedImages:
    """uint8 [N, C, H, W] (clips: [N, C, T, H, W]) by index (tensor, list or slice), decoded from
    the Arrow files on demand: `column` of `table`, padded by `pad` to `example` (one example's shape)."""

    def __init__(self, table, column: str, example: tuple[int, ...], pad: int):
        self.table, self.column, self.pad = table, column, pad
        self.shape = (table.num_rows, *example)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        # tolist() of a single (0-d) index is an int, not the list torch's stubs say
        rows: int | list = (
            list(range(*idx.indices(self.shape[0]))) if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        )
        if isinstance(rows, int):
            rows = [rows]
        if not rows:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        x = torch.from_numpy(np.stack([_decode(example) for example in self.table[rows][self.column]]))
        return torch.nn.functional.pad(x, (self.pad,) * 4) if self.pad else x


def _decode(stored: bytes | list[bytes]) -> np.ndarray:
    """One stored example (`_encode`) back: PNG bytes -> an image [C, H, W]; a PNG per frame -> a
    clip [C, T, H, W]."""
    return np.stack([_unpng(b) for b in stored], axis=1) if isinstance(stored, list) else _unpng(stored)


def _unpng(b: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [C, H, W]."""
    a = np.asarray(Image.open(io.BytesIO(b)))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


class RowRange:
    """Rows [lo, hi) of image rows (a tensor or PreparedImages) without decoding them: sliced
    like a tensor, it decodes only the slice asked for."""

    def __init__(self, images, lo: int, hi: int):
        self.images, self.lo = images, lo
        self.shape = (hi - lo, *tuple(images.shape)[1:])

    def __getitem__(self, sl: slice) -> torch.Tensor:
        a, b, _ = sl.indices(self.shape[0])
        return self.images[self.lo + a : self.lo + b]


def _load_part(datasets, path: Path, part: str):
    """One part of a prepared folder, memory-mapped; a part cut short (a copy or a disk that ran
    out) is one error naming it and the command that writes it again."""
    try:
        return datasets.load_from_disk(str(path / part))
    except Exception as e:  # noqa: BLE001 (Arrow's OSError/ArrowInvalid, datasets' FileNotFoundError: one message)
        raise DataError(
            f"{path / part} is damaged or incomplete ({str(e).splitlines()[0][:160]}); delete that part folder and "
            f"run `ul data prepare` with the same source and --dest {path} again (the complete parts are kept)"
        ) from None


def load_prepared(cfg: DataConfig, path: Path) -> ImageData:
    """A prepared folder as ImageData whose images are read lazily."""
    datasets = require_datasets()
    meta = json.loads((Path(path) / MARKER).read_text())
    inner = cfg.resolution - 2 * cfg.pad
    m, frames, stride = modality_of(cfg), meta.get("frames", 0), meta.get("frame_stride", 1)
    stored = modality_named(bool(frames))  # what the folder holds
    held = (meta["size"], meta["channels"], frames, stored.used_stride(stride))
    if held != (inner, cfg.channels, cfg.frames, m.used_stride(cfg.frame_stride)):
        have, need = stored.clip_words(frames, stride), m.clip_words(cfg.frames, cfg.frame_stride)
        raise DataError(
            f"{path} was prepared as {have}{meta['size']}x{meta['size']} with {meta['channels']} channel(s); "
            f"this run needs {need}{inner}x{inner} with {cfg.channels}: prepare it again with these settings"
        )
    parts = [_load_part(datasets, Path(path), p) for p in meta["parts"]]
    table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    labels = torch.tensor(table["label"], dtype=torch.int64) if meta["labelled"] else None
    return ImageData(PreparedImages(table, m.column, m.example_shape(cfg), cfg.pad), labels, meta["skipped"])
