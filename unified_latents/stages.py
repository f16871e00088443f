"""Training each stage from its config: the data it needs in, an artifact out. Stage 1 (and the
pixel baseline) trains on examples; stage 2 on the frozen encoder's latents, cached on disk."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from . import dist
from .config import RunConfig, clone, from_dict, to_dict
from .data import (
    LatentData,
    encode_images,
    eval_source,
    load_images,
    modality_of,
    named_by_artifact,
    save_latents,
    to_float,
)
from .data.fingerprint import data_fingerprint
from .data.latent_shards import INDEX, load_cache, write_index, write_shard
from .data.prepared import RowRange
from .errors import ConfigError, UserError
from .objectives import BaseModel, UnifiedLatents, encoder_fingerprint
from .objectives.registry import artifact_config, build_model, load_model
from .objectives.stage1 import check_grids
from .runlock import holding
from .training import TrainResult, train


@holding("outdir", "ul train")  # stage 2 writes its latent cache there before training
def train_stage(
    cfg: RunConfig, outdir: Path, device: torch.device, progress: bool | None = None, until: int | None = None
) -> TrainResult:
    if cfg.stage == "base":
        return _train_base(cfg, Path(outdir), device, progress, until)
    if cfg.stage == "latents":
        check_grids(cfg)  # grids the networks cannot take: refused before anything is written
    data = load_images(cfg.data)
    if data.skipped:
        dist.print0(f"skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}")
    try:
        src, split = eval_source(cfg.data)
        held = load_images(cfg.data, src, split)
    except UserError:
        held = data  # no held-out set configured: preview training images
    m = modality_of(cfg.data)
    preview_x = to_float(held.images[: m.previews])
    return train(
        cfg, outdir, lambda: build_model(cfg), data, preview_x, _saver(m), f"ul-{cfg.stage}", device, progress, until
    )


def _saver(m):
    def save_previews(previews: dict[str, torch.Tensor], prefix: Path) -> None:
        """One PNG per preview, `<prefix>-<name>.png`."""
        for name, imgs in previews.items():
            m.save_preview(imgs, Path(f"{prefix}-{name}.png"))

    return save_previews


def _with_scale(model: BaseModel, scale: float) -> BaseModel:
    model.latent_scale.fill_(scale)
    return model


def latents_for(stage1: UnifiedLatents, cfg: RunConfig, cache: Path, device, progress: bool | None = None):
    """The training data's z_clean: from cfg.base.latents (a file, or a folder of shards), or
    encoded once into the folder `cache`, each process encoding and writing its share (data/
    latent_shards.py; read lazily, or whole when small). Rank 0 decides (fingerprints, whether a
    cache fits) for every process, so they never take different paths."""
    fp = encoder_fingerprint(stage1)
    dfp = dist.broadcast_object(
        dist.on_main(lambda: data_fingerprint(cfg.data, cfg.data.source), "fingerprinting the training data")
    )
    if cfg.base.latents:
        return _preloaded(load_cache(Path(cfg.base.latents), fp, dfp))
    legacy = cache.with_suffix(".safetensors")  # the one-file cache of earlier versions
    found = next((p for p in (cache, legacy) if _fits(p, fp, dfp)), None) if dist.is_main() else None
    found = dist.broadcast_object(str(found) if found else None)
    if found is None:
        data = load_images(cfg.data)
        dist.print0(f"encoding {len(data):,} {stage1.modality.examples} with the frozen encoder into {cache} ...")
        meta = {"encoder_fingerprint": fp, "data_fingerprint": dfp, "source": cfg.data.source}
        encode_into(stage1, data, cache, meta, device, progress is not False)
    return _preloaded(load_cache(Path(found or cache), fp, dfp))


def _preloaded(lat):
    """A small shard cache read whole now, before DataLoader workers fork (they then share it)."""
    return lat.preload() if hasattr(lat, "preload") else lat


def _fits(cache: Path, fp: str, dfp: str) -> bool:
    """Whether `cache` exists, made by this encoder from this data."""
    try:
        load_cache(cache, fp, dfp)
        return True
    except UserError:
        return False


def dist_encode(stage1: UnifiedLatents, data, device, progress: bool) -> LatentData:
    """z_clean of this process's contiguous share of `data` (all of it in one process)."""
    lo, hi = dist.my_share(len(data))
    rows = RowRange(data.images, lo, hi)  # prepared data: each batch decoded when it is encoded
    z = (
        encode_images(stage1, rows, stage1.modality.encode_batch, device=device, progress=progress, first=lo)
        if hi > lo
        else torch.empty((0, *stage1.z_shape))
    )
    return LatentData(z, data.labels[lo:hi] if data.labels is not None else None)


def encode_into(stage1: UnifiedLatents, data, dest: Path, meta: dict, device, progress: bool) -> None:
    """A latent cache folder: every process encodes its share of `data` into its own shard; rank 0
    writes the index last (a folder without it is an interrupted write)."""

    def start() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / INDEX).unlink(missing_ok=True)

    def finish() -> None:
        for old in dest.glob("shard-*.safetensors"):  # shards of an earlier run with another process count
            if not old.name.endswith(f"-of-{dist.world():05d}.safetensors"):
                old.unlink()
        write_index(dest, dist.world(), len(data), meta)

    dist.on_main(start, f"creating {dest}")
    lo, _ = dist.my_share(len(data))
    dist.on_every(
        lambda: write_shard(dest, dist.rank(), dist.world(), dist_encode(stage1, data, device, progress), lo, meta),
        f"encoding into {dest}",
    )
    dist.on_main(finish, f"writing {dest / INDEX}")


@holding("dest", "ul encode", beside=lambda p: p.suffix == ".safetensors")
def encode(artifact: Path, data: str | None, dest: Path, device="cpu", progress: bool = True) -> Path:
    """`ul encode`: cache z_clean (and labels) of a dataset with the frozen EMA encoder. DEST.safetensors:
    one file (one process). A folder: one shard per process (torchrun splits the data), index last."""
    stage1, cfg = load_model(artifact, device, stage="latents")
    source = data or named_by_artifact(cfg.data, held_out=False)[0]
    images = load_images(cfg.data, source)
    meta = {
        "encoder_fingerprint": encoder_fingerprint(stage1),
        "data_fingerprint": data_fingerprint(cfg.data, source),
        "source": source,
    }
    dest = Path(dest)
    if dest.suffix == ".safetensors":
        if dist.world() > 1:
            raise UserError(
                f"--dest {dest} is one file, written by one process; under torchrun give a folder "
                "(each process writes its shard)"
            )
        lat = dist_encode(stage1, images, device, progress)
        save_latents(dest, lat, meta["encoder_fingerprint"], source, meta["data_fingerprint"])
        return dest
    encode_into(stage1, images, dest, meta, device, progress)
    return dest


def _train_base(cfg: RunConfig, outdir: Path, device, progress, until) -> TrainResult:
    if not cfg.base.stage1_artifact:
        raise ConfigError("stage 'base' needs the stage-1 artifact: pass --artifact runs/.../artifact.safetensors")
    stage1, s1cfg = load_model(Path(cfg.base.stage1_artifact), device, stage="latents")
    check_grids(s1cfg, cfg.model.base)  # before the latent cache is written
    if not cfg.base.latents and cfg.data.source == s1cfg.data.source:
        dist.print0(
            f"reading {cfg.data.source}, the training data named in the stage-1 artifact's config", file=sys.stderr
        )
    if dist.is_main():
        outdir.mkdir(parents=True, exist_ok=True)
    lat = latents_for(stage1, cfg, outdir / "latents", device, progress)
    if cfg.data.num_classes and lat.labels is None:
        dist.print0("the data has no labels: training an unconditional base model")
    cfg = _resolve_shift(cfg, lat)
    scale = 1.0 / lat.std() if cfg.base.scale_latents else 1.0
    if cfg.base.scale_latents:
        dist.print0(f"latent scale factor 1/std = {scale:.4g} (base.scale_latents; UL itself never rescales)")
    return train(
        cfg,
        outdir,
        lambda: _with_scale(build_model(cfg, stage1.cpu()), scale),
        lat,
        _held_latents(stage1, cfg, lat, device),
        _saver(stage1.modality),
        "ul-base",
        device,
        progress,
        until,
    )


def _resolve_shift(cfg: RunConfig, lat) -> RunConfig:
    """base.shift_auto: the schedule shift set from the training latents' std (config.py BaseConfig)."""
    if not cfg.base.shift_auto:
        return cfg
    std = lat.std()
    cfg = clone(cfg)
    cfg.base.shift, cfg.base.shift_auto = cfg.base.shift - 2.0 * math.log(std), False
    dist.print0(f"base.shift_auto: training latents' std {std:.4g} -> base.shift {cfg.base.shift:.4g}")
    return cfg


def _held_latents(stage1: UnifiedLatents, cfg: RunConfig, lat: LatentData, device) -> torch.Tensor:
    """Latents for stage-2 previews: with context frames, held-out clips (continuations of unseen
    clips); else the first training latents (a preview without context only generates)."""
    m = stage1.modality
    if cfg.base.context:
        try:
            src, split = eval_source(cfg.data)
            held = load_images(cfg.data, src, split).images[: m.previews]
            return encode_images(stage1, held, m.encode_batch, device=device).cpu()
        except UserError:
            pass
    return lat.get(torch.arange(min(PREVIEW_LATENTS, len(lat))))[0]


PREVIEW_LATENTS = 8


def base_config(preset: RunConfig, stage1_artifact: Path) -> RunConfig:
    """A stage-2 config: the preset's base model and training, the stage-1 run's data."""
    s1 = artifact_config(stage1_artifact)
    cfg = from_dict({**to_dict(preset), "stage": "base", "data": to_dict(s1.data)})
    cfg.base.stage1_artifact = str(stage1_artifact)
    return cfg
