"""Everything that differs between images and video, in one frozen object picked once from the
data config (`modality_of`). Callers ask it instead of branching on `data.frames`: units and
labels of reports and model cards, default evaluation counts, batch sizes, how a local source
loads, how prepared data is laid out, how previews, samples and the demo's outputs are saved (PNG
grids vs rows of frames and MP4s). Which source a run reads (hf:, prepared folders, held-out
splits) is data/sources.py."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from ..files import atomic_write
from .grids import save_grid, save_png, save_strip
from .images import ImageData, image_files, load_image_file, load_image_set
from .transforms import frames_of, pil_chw
from .video import VIDEO_SUFFIXES, file_clips, load_clips, video_files, write_mp4


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
    # prepared data (data/prepared.py)
    part: int  # source items per prepared part: images, or video files (clips of an array)
    column: str  # the Arrow column of an example: "image" (a PNG) / "frames" (a list of PNGs, one per frame)
    file_unit: str  # progress unit while files are decoded: "img" / "video"
    array_unit: str  # progress unit while arrays are stored: "img" / "clip"
    from_hub: bool  # hf:NAME sources (image columns only)
    per_frame_label: str = ""  # after "rFID" in reports
    per_frame_note: str = ""  # after "original HxW pixels" in reports
    per_frame_words: str = ""  # after "bits per input pixel" in model cards

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

    def load_local(self, cfg: DataConfig, source: str, split: str) -> ImageData[torch.Tensor]:
        """A source that is neither hf: nor prepared, decoded whole into memory (data/images.py,
        data/video.py)."""
        return load_clips(cfg, source, split) if self.video else load_image_set(cfg, source, split)

    def clip_words(self, frames: int, stride: int) -> str:
        """What a shape says of clips ("16 frames (stride 2) of "); nothing for images."""
        return f"{frames} frames (stride {stride}) of " if self.video else ""

    def frames_note(self, cfg: DataConfig) -> str:
        """What a model card adds to the data's size and channels."""
        return f", {cfg.frames} frames per clip" if self.video else ""

    # ------------------------------------------------------------------ prepared data

    def used_stride(self, stride: int) -> int:
        """data.frame_stride where it shapes examples (clips); 0 for images, which it does not."""
        return stride if self.video else 0

    def source_files(self, path: Path) -> tuple[list[Path], list[int] | None] | None:
        """The files `ul data prepare` decodes one at a time (and their labels: class folders), or
        None for a source loaded whole (an .npz, fmnist, photos, moving-fmnist)."""
        if self.video:
            return (video_files(path), None) if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES else None
        return image_files(path) if path.is_dir() else None

    def read_file(self, path: Path, cfg: DataConfig, size: int) -> list[np.ndarray]:
        """The examples of one source file, uint8: its image [C, size, size], or the clips
        [C, T, size, size] a video holds (none when it is too short)."""
        if self.video:
            return list(file_clips(path, cfg.channels, size, cfg.frames, cfg.frame_stride).numpy())
        return [load_image_file(path, cfg.channels, size)]

    def arrow_feature(self, datasets):
        """The `datasets` feature of `column`: binary PNG bytes, or a list of them per clip."""
        binary = datasets.Value("binary")
        return datasets.List(binary) if self.video else binary

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

    def demo_outputs(self, seeds: list[int], out: list) -> list:
        """What `ul demo` shows of `UnifiedLatentsModel.sample`'s output: the PIL images enlarged
        4x, or (video: a list of PIL frames per clip) the paths of MP4s 4x, in a new temporary folder."""
        if not self.video:
            return [im.resize((im.width * 4, im.height * 4)) for im in out]
        folder = Path(tempfile.mkdtemp(prefix="ul-demo-"))
        paths = []
        for s, clip in zip(seeds, out, strict=True):
            x = torch.stack([torch.from_numpy(pil_chw(f)) for f in clip], dim=1)  # [C, T, H, W]
            write_mp4(x, folder / f"{s:06d}.mp4", scale=4)
            paths.append(str(folder / f"{s:06d}.mp4"))
        return paths

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
    part=5_000,  # also what is held in memory while a part is written
    column="image",
    file_unit="img",
    array_unit="img",
    from_hub=True,
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
    part=200,
    column="frames",
    file_unit="video",
    array_unit="clip",
    from_hub=False,
    per_frame_label=" (per frame)",
    per_frame_note=", per frame",
    per_frame_words=" per frame",
)


def modality_of(cfg: DataConfig) -> Modality:
    """data.frames > 0 makes every example a clip (UL_SPEC 6)."""
    return VIDEO if cfg.frames else IMAGE


def modality_named(video: bool) -> Modality:
    """The modality an evaluation result records (its "video" flag)."""
    return VIDEO if video else IMAGE
