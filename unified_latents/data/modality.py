"""Everything that differs between images and video, in one frozen object picked once from the
data config (`modality_of`). Callers ask it instead of branching on `data.frames`: units and
labels of reports, default evaluation counts, batch sizes, how examples load, how previews and
samples are saved (PNG grids vs rows of frames and MP4s)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..config import DataConfig
from ..errors import DataError, UserError
from ..files import atomic_write
from .grids import save_grid, save_png, save_strip
from .hub import held_out_source, is_hub, load_hub
from .images import ImageData, check_labels, load_image_set
from .photos import PHOTOS
from .prepared import is_prepared, load_prepared
from .transforms import frames_of
from .video import load_clips, write_mp4


@dataclass(frozen=True)
class Modality:
    name: str  # "image" or "video"
    dims: int  # 2: examples [C, H, W]; 3: clips [C, T, H, W] (every network 3-D)
    examples: str  # what held-out examples are called: "images" / "clips"
    per: str  # one example: "image" / "clip"
    samples: str  # generated examples in reports: "samples" / "clips"
    bpp: str  # bits per pixel in reports (video: per pixel per frame, UL_SPEC 3)
    bpp_short: str  # the same on the console
    fid: str  # FID of generated examples on the console
    fid_long: str  # ... and in the Markdown report
    eval_counts: tuple[int, int, int]  # default (samples, recon, ref_count)
    batch: int  # default generation and reconstruction batch (config sample.batch / eval.batch override it)
    encode_batch: int  # encoder batch when caching latents
    eval_encode_batch: int  # encoder batch for the base model's bitrate in evaluation
    previews: int  # held-out examples shown in training previews
    preview_samples: int  # samples a stage-2 preview generates
    per_frame_label: str = ""  # after "rFID" in reports
    per_frame_note: str = ""  # after "original HxW pixels" in reports

    @property
    def video(self) -> bool:
        return self.dims == 3

    @property
    def has_fvd(self) -> bool:
        """FVD (I3D features of whole clips) is defined for video only."""
        return self.video

    # ------------------------------------------------------------------ data

    def example_shape(self, cfg: DataConfig) -> tuple[int, ...]:
        """One example: [C, H, W], or [C, T, H, W] for video."""
        r = cfg.resolution
        return (cfg.channels, cfg.frames, r, r) if self.video else (cfg.channels, r, r)

    def load(self, cfg: DataConfig, source: str, split: str) -> ImageData:
        if is_hub(source):
            data = load_hub(cfg, source, split)  # decoded by index from `datasets`' memory-mapped tables
        elif source and is_prepared(Path(source).expanduser()):
            data = load_prepared(cfg, Path(source).expanduser())  # read by index, never loaded whole
        else:
            data = load_clips(cfg, source, split) if self.video else load_image_set(cfg, source, split)
        return check_labels(data, cfg.num_classes, source)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """What Inception sees: images as they are, clips as their frames [N * T, C, H, W]."""
        return frames_of(x) if self.video else x

    def require_video(self, what: str) -> None:
        if not self.video:
            raise UserError(f"{what} needs a video base model; this artifact generates images")

    def report_texts(self, labelled_fmnist: bool) -> tuple[str, str]:
        """The report's captions of samples.png and reconstructions.png."""
        recon = (
            "Top: held-out originals. Bottom: decoder samples given z0 (fresh noise).\n\n"
            "![reconstructions](reconstructions.png)"
        )
        if self.video:
            return (
                "Unconditional clips, one row of frames per clip (time runs left to right).\n\n![samples](samples.png)",
                "Top rows: held-out clips. Bottom rows: their reconstructions (decoder samples given z0).\n\n"
                "![reconstructions](reconstructions.png)",
            )
        if labelled_fmnist:
            return (
                "Class-conditional samples, one column per class (Fashion-MNIST: T-shirt, trouser, pullover, "
                "dress, coat, sandal, shirt, sneaker, bag, ankle boot).\n\n![samples](samples.png)",
                recon,
            )
        return "Generated samples.\n\n![samples](samples.png)", recon

    # ------------------------------------------------------------------ pictures

    def save_preview(self, imgs: torch.Tensor, path: Path) -> None:
        """Originals above reconstructions as row pairs (video: a row of frames per clip)."""
        if self.video:
            save_strip(imgs, path)
        else:
            save_grid(imgs, path, nrow=imgs.shape[0] // 2, scale=2)

    def save_samples(self, gen: torch.Tensor, path: Path, count: int, labelled: bool) -> None:
        """The evaluation's sample sheet: 8 clips, or up to 10 rows of 10 (a column per class)."""
        if self.video:
            save_strip(gen[:8], path)
        else:
            save_grid(gen[: 10 * min(10, max(1, count // 10))], path, nrow=10 if labelled else None, scale=2)

    def save_reconstructions(self, orig: torch.Tensor, recs: torch.Tensor, path: Path, k: int) -> None:
        """`k` originals above their reconstructions (video: at most 4 clips, originals first)."""
        if self.video:
            k = min(4, recs.shape[0])
            save_strip(torch.cat([orig[:k], recs[:k]]), path)
        else:
            save_grid(torch.cat([orig[:k], recs[:k]]), path, nrow=k, scale=2)

    # ------------------------------------------------------------------ `ul sample`

    def save_overview(self, gen: torch.Tensor, outdir: Path, nrow: int | None, context: torch.Tensor | None) -> dict:
        """A grid of the images, or a strip of clips (with context clips: pairs of rows)."""
        if not self.video:
            save_grid(gen, outdir / "grid.png", nrow=nrow, scale=2)
            return {"grid": outdir / "grid.png"}
        shown = gen[:16] if context is None else torch.stack([context[:8], gen[:8]], dim=1).flatten(0, 1)
        save_strip(shown, outdir / "strip.png", scale=1)
        return {"strip": outdir / "strip.png"}

    def save_files(self, gen: torch.Tensor, seeds: list[int], outdir: Path, fps: int) -> dict:
        """One PNG per image, or one MP4 per clip, named by seed."""
        if self.video:
            for s, c in zip(seeds, gen, strict=True):
                write_mp4(c, outdir / f"{s:06d}.mp4", fps=fps)
            return {"mp4": outdir / f"{seeds[0]:06d}.mp4"}
        for s, im in zip(seeds, gen, strict=True):
            save_png(im.permute(1, 2, 0).numpy(), outdir / f"{s:06d}.png")
        return {}

    def save_npz(self, gen: torch.Tensor, seeds: list[int], labels: torch.Tensor | None, path: Path) -> None:
        """uint8 channels-last arrays: images [N, H, W, C] (+ labels) or videos [N, T, H, W, C]."""
        if self.video:
            arrays = {"videos": gen.permute(0, 2, 3, 4, 1).numpy(), "seeds": np.array(seeds)}
        else:
            arrays = {"images": gen.permute(0, 2, 3, 1).numpy(), "seeds": np.array(seeds)}
            if labels is not None:
                arrays["labels"] = labels.numpy()
        atomic_write(path, lambda tmp: _savez(tmp, arrays))


def _savez(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:  # np.savez would append ".npz" to a temp name without one
        np.savez(f, **arrays)


IMAGE = Modality(
    "image",
    2,
    "images",
    "image",
    "samples",
    "bits/pixel",
    "bpp",
    "gFID",
    "gFID (Inception pool3)",
    (2000, 500, 2000),
    batch=250,
    encode_batch=500,
    eval_encode_batch=500,
    previews=8,
    preview_samples=16,
)
VIDEO = Modality(
    "video",
    3,
    "clips",
    "clip",
    "clips",
    "bits/pixel/frame",
    "bits/pixel/frame",
    "frame FID",
    "frame FID (Inception pool3, every frame)",
    (64, 32, 64),
    batch=16,
    encode_batch=32,
    eval_encode_batch=16,
    previews=4,
    preview_samples=4,
    per_frame_label=" (per frame)",
    per_frame_note=", per frame",
)


def modality_of(cfg: DataConfig) -> Modality:
    """data.frames > 0 makes every example a clip (UL_SPEC 6)."""
    return VIDEO if cfg.frames else IMAGE


def modality_named(video: bool) -> Modality:
    """The modality an evaluation result records (its "video" flag)."""
    return VIDEO if video else IMAGE


def load_images(cfg: DataConfig, source: str | None = None, split: str = "train") -> ImageData:
    """Load `source` (default cfg.source) as uint8 [N, C, res, res] (video: clips [N, C, T, res, res]),
    padded by cfg.pad."""
    return modality_of(cfg).load(cfg, cfg.source if source is None else source, split)


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
