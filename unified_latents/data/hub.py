"""Hugging Face `datasets` sources: `--data hf:NAME[:SPLIT]` (a Hub name, or a local folder or
files `datasets.load_dataset` understands). The table stays memory-mapped where `datasets` keeps
it; images are decoded, converted and fitted (short side resized, center crop) only for the rows
asked for, so memory does not grow with the dataset.

Splits: SPLIT (default "train") is what a run trains on. Held-out data of an `hf:NAME` run is the
dataset's "test" split, or its "validation" split when it has no test split, unless --eval-data
names another.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError, UserError
from .images import READ_ERRORS, ImageData, fit_image
from .modality import modality_of

PREFIX = "hf:"
HELD_OUT_SPLITS = ("test", "validation")


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(
            "Hugging Face datasets (hf:NAME and prepared folders) need `datasets`: "
            "pip install 'unified-latents[data]' (or pip install datasets)"
        ) from None
    datasets.disable_progress_bars()  # ours is the one progress bar
    return datasets


def is_hub(source: str) -> bool:
    return bool(source) and source.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str]:
    """`hf:NAME[:SPLIT]` (or NAME[:SPLIT]) -> (NAME, SPLIT or ""). A last part holding a "/" is a
    path, not a split."""
    spec = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    name, sep, split = spec.rpartition(":")
    return (name, split) if sep and name and "/" not in split else (spec, "")


def held_out_source(source: str) -> str:
    """The held-out source of an hf: training source: the same dataset, its split left for load_hub to pick."""
    return PREFIX + parse(source)[0]


def open_split(cfg: DataConfig, spec: str, split: str = "train"):
    """The `datasets.Dataset` of one split, checked for the image column. An explicit SPLIT in
    `spec` wins; otherwise "train", or for held-out data the first of test / validation there is."""
    datasets = require_datasets()
    name, explicit = parse(spec)
    tries = (explicit,) if explicit else (("train",) if split == "train" else HELD_OUT_SPLITS)
    errors = []
    for s in tries:
        try:
            ds = datasets.load_dataset(name, split=s)
            break
        except Exception as e:  # noqa: BLE001 (offline, unknown name, unknown split: all end here)
            errors.append(f"split {s!r}: {e}")
    else:
        hint = "" if explicit or split == "train" else "; name held-out data with --eval-data hf:NAME:SPLIT"
        raise DataError(f"cannot load the dataset {name!r} with datasets.load_dataset ({'; '.join(errors)}){hint}")
    if cfg.image_column not in ds.column_names:
        raise DataError(
            f"{name}: no column {cfg.image_column!r} (columns: {', '.join(ds.column_names)}); "
            "name the image column with --set data.image_column=NAME"
        )
    if not isinstance(ds.features[cfg.image_column], datasets.Image):
        raise DataError(
            f"{name}: column {cfg.image_column!r} holds {ds.features[cfg.image_column]}, not images; "
            "name the image column with --set data.image_column=NAME"
        )
    label = ds.features.get(cfg.label_column)
    if label is not None and not (
        isinstance(label, datasets.ClassLabel) or (isinstance(label, datasets.Value) and "int" in label.dtype)
    ):
        raise DataError(
            f"{name}: column {cfg.label_column!r} holds {label}, not integer labels; name the label "
            "column with --set data.label_column=NAME (or one that does not exist, for no labels)"
        )
    return ds


class HubImages:
    """uint8 [N, C, H, W] by index (tensor, list or slice) of a `datasets` table's image column,
    decoded and fitted on demand (and padded by `pad`)."""

    def __init__(self, ds, column: str, channels: int, size: int, pad: int = 0):
        self.ds = ds.select_columns([column])  # decode the images only
        self.column, self.channels, self.size, self.pad = column, channels, size, pad
        self.shape = (ds.num_rows, channels, size + 2 * pad, size + 2 * pad)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        # tolist() of a single (0-d) index is an int, not the list torch's stubs say
        rows: int | list = (
            list(range(*idx.indices(self.shape[0]))) if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        )
        rows = [rows] if isinstance(rows, int) else rows
        if not rows:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        try:
            ims = self.ds[rows][self.column]
            if any(im is None for im in ims):
                raise ValueError("an empty image cell")
            x = torch.from_numpy(np.stack([fit_image(im, self.channels, self.size) for im in ims]))
        except READ_ERRORS as e:
            bad = next((r for r in rows if not _fits(self.ds, r, self.column, self.channels, self.size)), rows[0])
            raise DataError(
                f"row {bad} of the dataset cannot be used as an image ({e}); fix or drop it "
                "(datasets' Dataset.filter), or `ul data prepare` a copy without it"
            ) from None
        return torch.nn.functional.pad(x, (self.pad,) * 4) if self.pad else x


def _fits(ds, row: int, column: str, channels: int, size: int) -> bool:
    try:
        im = ds[row][column]
        if im is None:
            return False
        fit_image(im, channels, size)
        return True
    except READ_ERRORS:
        return False


def hub_labels(cfg: DataConfig, ds) -> torch.Tensor | None:
    """The label column as int64, or None: absent, or every label negative (an unlabelled split,
    as many Hub test splits are)."""
    if cfg.label_column not in ds.column_names:
        return None
    labels = torch.tensor(list(ds[cfg.label_column]), dtype=torch.int64)
    return None if labels.numel() == 0 or bool((labels < 0).all()) else labels


def load_hub(cfg: DataConfig, spec: str, split: str = "train") -> ImageData:
    """An hf: source as ImageData whose images are decoded when indexed."""
    if not modality_of(cfg).from_hub:
        raise DataError(
            f"{spec}: video from Hugging Face datasets is not supported; decode the clips to an "
            ".npz or a folder of video files, and `ul data prepare` that"
        )
    ds = open_split(cfg, spec, split)
    inner = cfg.resolution - 2 * cfg.pad
    return ImageData(HubImages(ds, cfg.image_column, cfg.channels, inner, cfg.pad), hub_labels(cfg, ds), [])
