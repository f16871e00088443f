"""Generation: seeds (and labels) in, uint8 batches out, then written as files. Sample k depends
only on seeds[k], labels[k] and, for video continuations, its context clip; never on the batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import dist
from .config import RunConfig
from .data import crop_pad, load_images, named_by_artifact, to_float, to_uint8
from .errors import UserError
from .files import atomic_write_text
from .objectives import BaseModel
from .objectives.registry import load_model
from .runlock import holding


def class_labels(seeds: list[int], classes: str | None, num_classes: int) -> torch.Tensor | None:
    """Labels per seed: None/'' -> seed % classes; 'random' -> drawn from the seed; '3,5' -> cycled;
    'none' -> unconditional."""
    if not num_classes and classes not in (None, "", "none"):
        raise UserError(f"--classes {classes}: this model is unconditional (trained without labels); drop --classes")
    if not num_classes or classes == "none":
        return None
    if not classes:
        return torch.tensor([s % num_classes for s in seeds])
    if classes == "random":
        return torch.tensor(
            [int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s))) for s in seeds]
        )
    try:
        chosen = [int(c) for c in classes.split(",")]
    except ValueError:
        raise UserError(f"cannot read classes {classes!r}; give indices like 3 or 0,1,2, or 'random'") from None
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} is out of range; this model has classes 0..{num_classes - 1}")
    return torch.tensor([chosen[i % len(chosen)] for i in range(len(seeds))])


@torch.no_grad()
def generate(
    model: BaseModel,
    seeds: list[int],
    labels: torch.Tensor | None,
    batch: int = 250,
    progress: bool = False,
    context: tuple[torch.Tensor, int] | None = None,
    **kw,
) -> Iterator[torch.Tensor]:
    """uint8 batches [n, C, H, W] (video: [n, C, T, H, W]) of seeds[i : i + batch], in order.
    `kw` goes to model.generate (steps, decoder_steps, sampler, guidance, interval)."""
    device = next(model.net.parameters()).device
    for i in tqdm(range(0, len(seeds), batch), desc="sampling", unit="batch", disable=not progress, leave=False):
        lab = labels[i : i + batch].to(device) if labels is not None else None
        ctx = None if context is None else (context[0][i : i + batch], context[1])
        yield to_uint8(model.generate(seeds[i : i + batch], lab, context=ctx, **kw)).cpu()


def generate_images(
    model: BaseModel,
    seeds: list[int],
    labels: torch.Tensor | None,
    batch: int = 250,
    progress: bool = False,
    context: tuple[torch.Tensor, int] | None = None,
    **kw,
) -> torch.Tensor:
    """Every batch of `generate`, concatenated: uint8 [N, ...]."""
    return torch.cat(list(generate(model, seeds, labels, batch, progress, context, **kw)))


def load_context(model: BaseModel, cfg: RunConfig, source: str, count: int, frames: int, device="cpu"):
    """Context clips for `ul sample --context`: `source` is a video file, a folder of videos, an
    .npz/.npy of clips, or 'test' (the model's held-out clips). Returns (clips uint8 [count, ...]
    cycled over what the source holds, (z_clean, known latent frames))."""
    s1cfg = model.stage1.cfg
    if source == "test":
        src, split = named_by_artifact(s1cfg.data)
        clips = load_images(s1cfg.data, src, split).images
    else:
        clips = load_images(s1cfg.data, source, "test").images
    clips = clips[torch.arange(count) % clips.shape[0]]
    z = []
    k = 0
    for i in range(0, count, 16):
        zi, k = model.encode_context(to_float(clips[i : i + 16]).to(device), frames)
        z.append(zi.cpu())
    return clips, (torch.cat(z), k)


def _share(
    model: BaseModel, seeds: list[int], labels, ctx, share: tuple[int, int], batch: int, progress: bool, sampling: dict
) -> torch.Tensor:
    """uint8 samples of seeds[lo:hi] (this process's share; empty shares keep the trailing shape)."""
    lo, hi = share
    if hi == lo:
        return torch.empty((0, *model.x_shape), dtype=torch.uint8)
    lab = labels[lo:hi] if labels is not None else None
    part = None if ctx is None else (ctx[0][lo:hi], ctx[1])
    return generate_images(model, seeds[lo:hi], lab, batch, progress, context=part, **sampling)


@dataclass
class SampleRequest:
    """What `ul sample` asks for beyond the artifact, the seeds and the folder."""

    classes: str | None = None  # see class_labels
    batch: int | None = None  # examples per call (None: the artifact's sample.batch, else the data's default)
    npz: bool = False  # one samples.npz instead of a file per seed
    context: str | None = None  # video: clips to continue (see load_context)
    context_frames: int = 5
    fps: int = 8
    sampling: dict = field(default_factory=dict)  # steps, decoder_steps, sampler, guidance, interval


@holding("outdir", "ul sample")
def write_samples(
    artifact: Path, seeds: list[int], outdir: Path, req: SampleRequest, device="cpu", progress: bool = True
) -> dict[str, Path]:
    """`ul sample`: a PNG grid plus individual PNGs (or one .npz) of the given seeds. Video: one
    MP4 per seed and a PNG strip (a row of frames per clip); with `context`, each clip continues
    the first `context_frames` frames of a context clip (strip rows: context clip, continuation).
    samples.json (seeds, labels, settings) is written last: its presence marks a complete set.
    Under torchrun each process generates and writes the files of its share of the seeds; rank 0
    gathers them for the grid, the .npz and samples.json (the same bytes as one process writes)."""
    model, cfg = load_model(artifact, device, stage="base")
    if req.context:
        model.modality.require_video("--context")
    labels = class_labels(seeds, req.classes, model.num_classes)
    outdir = Path(outdir)
    manifest = outdir / "samples.json"

    def start() -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        manifest.unlink(missing_ok=True)  # written last: a folder without it holds an interrupted set

    dist.on_main(start, f"creating {outdir}")
    pad, m = cfg.data.pad, model.modality
    ctx_clips, ctx = None, None
    if req.context:
        ctx_clips, ctx = load_context(model, cfg, req.context, len(seeds), req.context_frames, device)
        ctx_clips = crop_pad(ctx_clips, pad)
    lo, hi = dist.my_share(len(seeds))
    mine = _share(model, seeds, labels, ctx, (lo, hi), req.batch or cfg.sample.batch or m.batch, progress, req.sampling)
    if not req.npz:  # collective: every process calls it, an empty share writes nothing
        dist.on_every(
            lambda: hi > lo and m.save_files(crop_pad(mine, pad), seeds[lo:hi], outdir, req.fps),
            f"writing into {outdir}",
        )
    gen = dist.gather_cat(mine, everyone=False)  # on rank 0; every process's files are written by now
    if not dist.is_main():
        return {}
    assert gen is not None  # rank 0 holds everyone's
    gen = crop_pad(gen, pad)
    by_class = labels is not None and not req.classes and len(seeds) >= model.num_classes
    paths = m.save_overview(gen, outdir, model.num_classes if by_class else None, ctx_clips)
    if req.npz:
        paths["npz"] = outdir / "samples.npz"
        m.save_npz(gen, seeds, labels, paths["npz"])
    elif m.video:
        paths["mp4"] = outdir / f"{seeds[0]:06d}.mp4"
    record = {
        "complete": True,
        "artifact": str(artifact),
        "count": len(seeds),
        "seeds": seeds,
        "labels": labels.tolist() if labels is not None else None,
        "sampling": req.sampling,
        "context": req.context,
    }
    atomic_write_text(manifest, json.dumps(record))
    paths["manifest"] = manifest
    return paths
