"""Which data a run reads: `load_images` picks the reader of a source (hf:NAME, a prepared folder,
or what the modality loads whole), and `eval_source` the held-out data of a config."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import dist
from ..config import DataConfig
from ..errors import DataError
from .hub import held_out_source, is_hub, load_hub
from .images import ImageData, check_labels
from .modality import modality_of
from .photos import PHOTOS
from .prepared import is_prepared, load_prepared


def load_images(cfg: DataConfig, source: str | None = None, split: str = "train") -> ImageData:
    """Load `source` (default cfg.source) as uint8 [N, C, res, res] (video: clips [N, C, T, res, res]),
    padded by cfg.pad."""
    source = cfg.source if source is None else source
    data: ImageData  # of a tensor, or of rows decoded when indexed (HubImages, PreparedImages)
    if is_hub(source):
        data = load_hub(cfg, source, split)  # decoded by index from `datasets`' memory-mapped tables
    elif source and is_prepared(Path(source).expanduser()):
        data = load_prepared(cfg, Path(source).expanduser())  # read by index, never loaded whole
    else:
        data = modality_of(cfg).load_local(cfg, source, split)
    return check_labels(data, cfg.num_classes, source)


def eval_source(cfg: DataConfig) -> tuple[str, str]:
    """(source, split) of the held-out data: data.eval_source if set, else the training source's
    test split (fmnist, moving-fmnist, photos; hf:NAME: its test or validation split)."""
    if cfg.eval_source:
        return cfg.eval_source, "test"
    if cfg.source in ("fmnist", "moving-fmnist", PHOTOS):
        return cfg.source, "test"
    if is_hub(cfg.source):
        return held_out_source(cfg.source), "test"
    raise DataError("no held-out data configured; pass --eval-data PATH (or set data.eval_source)")


def named_by_artifact(cfg: DataConfig, held_out: bool = True) -> tuple[str, str]:
    """(source, split) of the data an artifact's config names (held-out data, or the training
    data), said on stderr before it is read: a path inside a file from elsewhere is never read
    silently."""
    src, split = eval_source(cfg) if held_out else (cfg.source, "train")
    dist.print0(f"reading {src} ({split} split), the data named in the artifact's config", file=sys.stderr)
    return src, split
