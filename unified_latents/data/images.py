"""Image datasets: uint8 [N, C, H, W] at the boundary, labels int64 [N] (or None).

Sources: the embedded Fashion-MNIST (Debian package `dataset-fashion-mnist`), crops of colour
photos (`photos`, data/photos.py), a folder of
PNG/JPEG images (any mode converted, resized and center-cropped), or an .npz array file.
Everything is decoded once into memory, so every bad file is found, and named, up front.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..config import DataConfig
from ..errors import DataError
from .photos import PHOTOS, photo_crops
from .transforms import convert_channels, resize_crop, to_float

FMNIST_DIRS = [os.environ.get("UL_FMNIST_DIR", ""), "/usr/share/datasets/fashion-mnist"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class Rows(Protocol):
    """uint8 examples [N, ...] read by index or slice: a tensor, or a reader that decodes only the
    rows asked for (data/hub.py HubImages, data/prepared.py PreparedImages and RowRange)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, idx: Any, /) -> torch.Tensor: ...


R = TypeVar("R", bound=Rows)


@dataclass
class ImageData(Generic[R]):
    images: R  # uint8 [N, C, H, W] (clips [N, C, T, H, W]): a tensor, or rows decoded when indexed
    labels: torch.Tensor | None  # int64 [N]
    skipped: list[str]  # files skipped as unreadable (with --skip-bad)

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Examples `idx` as float [-1, 1] and their labels (what the training loop consumes)."""
        return to_float(self.images[idx]), (self.labels[idx] if self.labels is not None else None)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file; reinstall `dataset-fashion-mnist`")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fmnist_dir() -> Path:
    for d in FMNIST_DIRS:
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists():
            return Path(d)
    raise DataError(
        "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; install it with "
        "`sudo apt-get install dataset-fashion-mnist` (or set UL_FMNIST_DIR to a folder of its IDX files)"
    )


def load_fmnist(split: str) -> ImageData[torch.Tensor]:
    prefix = {"train": "train", "test": "t10k"}[split]
    d = fmnist_dir()
    images = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")  # [N, 28, 28]
    labels = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")  # [N]
    return ImageData(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), [])


# ----------------------------------------------------------------------------- folders and arrays


MIN_SIDE = 8  # pixels: a smaller image carries no picture to resize (a 1x1 file is a placeholder or a mistake)
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image_file(path: Path, channels: int, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # decode fully now so truncated files fail here
        return fit_image(im, channels, size)


def to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """Gray ("L") or "RGB" of any mode: 16-bit and 32-bit integer images scaled to 8 bits (not
    clipped, which would turn them white); transparency composited over white; palette, CMYK,
    YCbCr and the rest converted by Pillow."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        full = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * 255.0 / full), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        raise ValueError("floating-point (mode F) images are not supported; save 8- or 16-bit PNGs")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def fit_image(im: Image.Image, channels: int, size: int) -> np.ndarray:
    """A PIL image converted to gray or RGB (`to_8bit`), resized (bicubic) so its short side is
    `size`, and center-cropped: uint8 [C, size, size]."""
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"the image is {im.size[0]}x{im.size[1]} pixels; images need at least {MIN_SIDE} on each side")
    im = to_8bit(im, channels)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def image_files(root: Path, hint: str = "") -> tuple[list[Path], list[int] | None]:
    """The image files under `root`, sorted, and their labels: the index of their first-level
    sub-folder's name when every image sits in one, else None. `hint` ends the error of none found."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images (PNG/JPEG/...) found under {root}{hint}")
    class_names = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    labelled = class_names and all(len(p.relative_to(root).parts) > 1 for p in files)
    return files, ([class_names.index(p.relative_to(root).parts[0]) for p in files] if labelled else None)


def load_folder(root: Path, channels: int, size: int, skip_bad: bool) -> ImageData[torch.Tensor]:
    files, file_labels = image_files(root, "; point --data at a folder of images or an .npz file")
    images, labels, skipped = [], [], []
    for i, p in enumerate(tqdm(files, desc=f"reading {root}", unit="img", disable=len(files) < 2000, leave=False)):
        try:
            images.append(load_image_file(p, channels, size))
        except READ_ERRORS as e:
            if not skip_bad:
                raise DataError(
                    f"cannot read image {p}: {e}; fix or remove it, or pass --skip-bad to skip unreadable files"
                ) from None
            skipped.append(str(p))
            continue
        if file_labels is not None:
            labels.append(file_labels[i])
    if not images:
        raise DataError(f"every image under {root} was unreadable ({len(skipped)} skipped)")
    lab = torch.tensor(labels, dtype=torch.int64) if file_labels is not None else None
    return ImageData(torch.from_numpy(np.stack(images)), lab, skipped)


def load_npz(path: Path, channels: int, size: int) -> ImageData[torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            key = "images" if "images" in keys else ("x" if "x" in keys else keys[0] if keys else None)
            if key is None:
                raise DataError(f"{path} holds no arrays; save images as np.savez(path, images=uint8 [N, H, W(, C)])")
            arr = f[key]
            labels = f["labels"] if "labels" in keys else (f["y"] if "y" in keys else None)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"cannot read {path} as .npz: {e}; save it with np.savez(path, images=..., labels=...)"
        ) from None
    arr = checked_pixels(path, arr)
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != arr.shape[0]):
        raise DataError(
            f"{path}: {arr.shape[0]} images but labels of shape {list(labels.shape)}; save one "
            "integer label per image (labels=int [N])"
        )
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    x = convert_channels(x[:, :3], channels)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = resize_crop(x, size)
    lab = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    return ImageData(x, lab, [])


def checked_pixels(path: Path | str, arr: np.ndarray) -> np.ndarray:
    """uint8 images as [N, C, H, W] (C 1, 3 or 4), from [N, H, W], [N, H, W, C] or [N, C, H, W]; a
    layout that is not one of them (2 channels, say) or pixels that are not uint8 are refused.
    `path`: where they come from, as errors name it."""
    if arr.dtype != np.uint8:
        hint = (
            " (floats in [0, 1]? save (x * 255).round().astype(np.uint8))"
            if np.issubdtype(arr.dtype, np.floating)
            else "; convert with .astype(np.uint8)"
        )
        raise DataError(f"{path}: images must be uint8 in [0, 255], got {arr.dtype}{hint}")
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        return arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if arr.ndim == 4 and arr.shape[1] in (1, 3, 4):
        return arr
    raise DataError(
        f"{path}: expected images of shape [N, H, W] or [N, H, W, C] with C = 1 (gray), 3 (RGB) or 4 "
        f"(RGBA), got {list(arr.shape)}"
    )


def check_labels(data: ImageData[R], num_classes: int, source: str) -> ImageData[R]:
    """Labels of a class-conditional run must be 0..num_classes-1 (num_classes itself is the
    unconditional label of guidance; a larger one would fail mid-run)."""
    if data.labels is None or not num_classes or data.labels.numel() == 0:
        return data
    lo, hi = int(data.labels.min()), int(data.labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{source}: labels run from {lo} to {hi} ({hi + 1} classes or class folders), but "
            f"data.num_classes={num_classes}; set --set data.num_classes={max(hi + 1, 1)}, or "
            "--set data.num_classes=0 to train without labels"
        )
    return data


# ----------------------------------------------------------------------------- entry point


def load_image_set(cfg: DataConfig, source: str, split: str = "train") -> ImageData[torch.Tensor]:
    """Load `source` as uint8 [N, C, res, res], padding by cfg.pad (clips: data/video.py)."""
    inner = cfg.resolution - 2 * cfg.pad
    if source == "fmnist":
        data = load_fmnist(split)
        data.images = convert_channels(data.images, cfg.channels)
        if inner != 28:
            data.images = resize_crop(data.images, inner)
    elif source == PHOTOS:  # the RGB photo benchmark (data/photos.py)
        data = ImageData(convert_channels(photo_crops(split, inner), cfg.channels), None, [])
    else:
        if not source:
            raise DataError("no data given; pass --data PATH (a folder of images or an .npz file)")
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data path {path} does not exist; pass --data with a folder of images or an .npz file")
        if path.is_dir():
            data = load_folder(path, cfg.channels, inner, cfg.skip_bad)
        elif path.suffix == ".npz":
            data = load_npz(path, cfg.channels, inner)
        else:
            raise DataError(f"{path} is neither a folder of images nor an .npz file")
        if len(data) == 0:
            raise DataError(f"{path} holds no images")
    if cfg.pad:
        data.images = torch.nn.functional.pad(data.images, (cfg.pad,) * 4)
    return data
