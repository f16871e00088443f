"""Video clips: uint8 [N, C, T, H, W] at the boundary (the image loaders' layout plus a time axis).

Sources:
- `moving-fmnist`: the embedded default, nothing to download. Two Fashion-MNIST garments
  bounce inside a square canvas (the Moving-MNIST recipe); clip k of a split is a fixed
  function of (seed, split, k), so the data set is the same on every machine.
- a folder of video files (or one file), decoded with PyAV: clips of T frames taking every
  `frame_stride`-th frame, resized (shorter side) and center-cropped to the resolution;
- an `.npz` / `.npy` array of shape [N, T, H, W] or [N, T, H, W, C], uint8.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import DataConfig
from ..errors import DataError
from ..files import atomic_write
from .images import ImageData, load_fmnist
from .transforms import convert_channels, resize_crop

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
MOVING_FMNIST = "moving-fmnist"
GARMENT = 28


# ----------------------------------------------------------------------------- moving Fashion-MNIST


def moving_fmnist(
    n: int,
    frames: int,
    size: int = 64,
    split: str = "train",
    seed: int = 0,
    garments: int = 2,
    speed: tuple[float, float] = (2.0, 4.0),
) -> ImageData[torch.Tensor]:
    """`n` clips [n, 1, frames, size, size] of `garments` Fashion-MNIST items (from `split`)
    moving in straight lines at `speed` pixels per frame and bouncing off the canvas edges;
    overlapping garments combine by maximum. Deterministic in (n, frames, size, split, seed)."""
    if size < GARMENT:
        raise DataError(f"moving-fmnist needs a canvas of at least {GARMENT} pixels, got data.resolution={size}")
    src = load_fmnist(split).images[:, 0].numpy()  # [M, 28, 28]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, n, frames, size])
    idx = rng.integers(0, src.shape[0], size=(n, garments))
    span = size - GARMENT
    pos = rng.uniform(0, span, size=(n, garments, 2))
    angle = rng.uniform(0, 2 * np.pi, size=(n, garments))
    v = rng.uniform(*speed, size=(n, garments))[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    out = np.zeros((n, frames, size, size), dtype=np.uint8)
    for t in range(frames):
        ys, xs = np.rint(pos[..., 0]).astype(int), np.rint(pos[..., 1]).astype(int)
        for i in range(n):
            for g in range(garments):
                win = out[i, t, ys[i, g] : ys[i, g] + GARMENT, xs[i, g] : xs[i, g] + GARMENT]
                np.maximum(win, src[idx[i, g]], out=win)
        pos += v
        for axis in range(2):  # reflect at the walls
            low, high = pos[..., axis] < 0, pos[..., axis] > span
            pos[..., axis] = np.where(low, -pos[..., axis], np.where(high, 2 * span - pos[..., axis], pos[..., axis]))
            v[..., axis] = np.where(low | high, -v[..., axis], v[..., axis])
    return ImageData(torch.from_numpy(out)[:, None], None, [])


# ----------------------------------------------------------------------------- files


def _av():
    try:
        import av
    except ImportError:
        raise DataError("reading and writing video files needs PyAV: `pip install av`") from None
    return av


def read_video(path: Path, channels: int = 3) -> np.ndarray:
    """All frames of one video file, uint8 [F, H, W, C] (C = 1 gray or 3 RGB)."""
    av = _av()
    fmt = "gray" if channels == 1 else "rgb24"
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format=fmt) for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise DataError(f"cannot decode video {path}: {e}; check the file, or remove it") from None
    if not frames:
        raise DataError(f"video {path} has no frames")
    arr = np.stack(frames)
    return arr[..., None] if arr.ndim == 3 else arr


def clips_from_frames(frames: np.ndarray, t: int, stride: int, max_clips: int = 0) -> list[np.ndarray]:
    """Non-overlapping clips of `t` frames, each taking every `stride`-th frame: [t, H, W, C] each."""
    span = t * stride
    starts = list(range(0, frames.shape[0] - span + 1, span))
    if max_clips:
        starts = starts[:max_clips]
    return [frames[s : s + span : stride] for s in starts]


def _to_clip_tensor(clips: np.ndarray, channels: int, size: int) -> torch.Tensor:
    """[N, T, H, W, C] uint8 -> [N, C, T, size, size] uint8 (channels converted, resized, cropped)."""
    n, t, h, w, c = clips.shape
    x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 1, 4, 2, 3).reshape(n * t, c, h, w)
    x = convert_channels(x[:, :3], channels)
    if (h, w) != (size, size):
        x = resize_crop(x, size)
    return x.reshape(n, t, channels, size, size).permute(0, 2, 1, 3, 4).contiguous()


def video_files(path: Path) -> list[Path]:
    """`path` itself (a video file), or the video files under it, sorted."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    )
    if not files:
        raise DataError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under {path}")
    return files


def file_clips(path: Path, channels: int, size: int, frames: int, stride: int, max_clips: int = 0) -> torch.Tensor:
    """The clips cut from one video file, uint8 [n, C, T, size, size] (n may be 0: a short file)."""
    got = clips_from_frames(read_video(path, 1 if channels == 1 else 3), frames, stride, max_clips)
    if not got:
        return torch.empty((0, channels, frames, size, size), dtype=torch.uint8)
    return _to_clip_tensor(np.stack(got), channels, size)


def load_video_files(path: Path, cfg: DataConfig, size: int, max_clips_per_file: int = 0) -> ImageData[torch.Tensor]:
    files = video_files(path)
    clips, skipped = [], []
    for f in tqdm(files, desc=f"decoding {path}", unit="video", disable=len(files) < 20, leave=False):
        try:
            clips.append(file_clips(f, cfg.channels, size, cfg.frames, cfg.frame_stride, max_clips_per_file))
        except DataError:
            if not cfg.skip_bad:
                raise
            skipped.append(str(f))
    if not sum(c.shape[0] for c in clips):
        need = cfg.frames * cfg.frame_stride
        raise DataError(
            f"no video under {path} has {need} frames (data.frames={cfg.frames} x data.frame_stride="
            f"{cfg.frame_stride}); use shorter clips or a smaller stride"
        )
    return ImageData(torch.cat(clips), None, skipped)


def load_video_array(path: Path, cfg: DataConfig, size: int) -> ImageData[torch.Tensor]:
    try:
        if path.suffix == ".npy":
            arr, labels = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                key = next((k for k in ("videos", "clips", "x") if k in keys), keys[0] if keys else None)
                if key is None:
                    raise DataError(
                        f"{path} holds no arrays; save clips as np.savez(path, videos=uint8 [N, T, H, W(, C)])"
                    )
                arr = f[key]
                labels = f["labels"] if "labels" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"cannot read {path}: {e}; save clips with np.savez(path, videos=uint8 [N, T, H, W(, C)])"
        ) from None
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: clips must be uint8 in [0, 255], got {arr.dtype}; convert with .astype(np.uint8)")
    if arr.ndim == 4:
        arr = arr[..., None]
    if arr.ndim != 5 or arr.shape[-1] not in (1, 3, 4):
        raise DataError(f"{path}: expected clips of shape [N, T, H, W] or [N, T, H, W, C], got {list(arr.shape)}")
    need = cfg.frames * cfg.frame_stride
    if arr.shape[1] < need:
        raise DataError(
            f"{path}: clips have {arr.shape[1]} frames, the config needs {need} "
            f"(data.frames={cfg.frames} x data.frame_stride={cfg.frame_stride})"
        )
    x = _to_clip_tensor(arr[:, : need : cfg.frame_stride], cfg.channels, size)
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != arr.shape[0]):
        raise DataError(
            f"{path}: {arr.shape[0]} clips but labels of shape {list(labels.shape)}; save one integer "
            "label per clip (labels=int [N])"
        )
    lab = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    return ImageData(x, lab, [])


def load_clips(cfg: DataConfig, source: str, split: str) -> ImageData[torch.Tensor]:
    """Clips uint8 [N, C, T, res, res] from `source` (moving-fmnist, video file(s), .npz/.npy)."""
    inner = cfg.resolution - 2 * cfg.pad
    if source == MOVING_FMNIST:
        n = cfg.clips if split == "train" else max(1, cfg.clips // 10)
        data = moving_fmnist(n, cfg.frames, inner, split)
        data.images = _convert_channels_video(data.images, cfg.channels)
    else:
        if not source:
            raise DataError("no data given; pass --data PATH (a folder of videos, a video file, or an .npz/.npy file)")
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data path {path} does not exist; pass --data with video files or an .npz/.npy of clips")
        if path.suffix in (".npz", ".npy"):
            data = load_video_array(path, cfg, inner)
        elif path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES:
            data = load_video_files(path, cfg, inner)
        else:
            raise DataError(f"{path} is neither a video file, a folder of videos, nor an .npz/.npy of clips")
    if cfg.pad:
        data.images = torch.nn.functional.pad(data.images, (cfg.pad,) * 4)
    return data


def _convert_channels_video(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    n, c, t, h, w = x.shape
    y = convert_channels(x.transpose(1, 2).reshape(n * t, c, h, w), channels)
    return y.reshape(n, t, channels, h, w).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------- writing


def write_mp4(clip: torch.Tensor, path: Path, fps: int = 8, scale: int = 1) -> None:
    """One clip uint8 [C, T, H, W] -> an H.264 MP4 (written to a temporary name, then renamed)."""
    av = _av()
    frames = clip.permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, C]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))  # yuv420p needs even sides

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "12"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    atomic_write(Path(path), write)
