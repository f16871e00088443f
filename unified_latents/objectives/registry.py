"""Named stages: build a model from its config, load one from an artifact, or read an
artifact's config. The one place that maps `cfg.stage` to a model class."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import dist
from ..accel import apply_backends, lay_out, resolve
from ..artifacts import load_artifact
from ..config import RunConfig
from ..errors import ArtifactError, ConfigError, UserError
from ..presets import get_preset
from ..saved_config import from_saved
from .pixel import PixelSpace, pixel_config
from .stage1 import UnifiedLatents
from .stage2 import BaseModel

STAGES = ("latents", "base", "pixel")


def preset_config(name: str, stage: str = "latents") -> RunConfig:
    """One stage of a named preset; "pixel" is the pixel-diffusion baseline built from its "base"."""
    if stage == "pixel":
        return pixel_config(get_preset(name, "base"))
    return get_preset(name, stage)


def build_model(cfg: RunConfig, stage1: UnifiedLatents | None = None):
    if cfg.stage == "latents":
        return UnifiedLatents(cfg)
    if cfg.stage == "base":
        if stage1 is None:
            raise ConfigError("stage 'base' needs a stage-1 artifact; pass --artifact runs/.../artifact.safetensors")
        return BaseModel(cfg, stage1)
    if cfg.stage == "pixel":  # the pixel-diffusion baseline: the base model on the pixels themselves
        return BaseModel(cfg, PixelSpace(cfg))
    raise ConfigError(f"unknown stage {cfg.stage!r}; choose one of: {', '.join(STAGES)}")


def build_meta_stages(cfg: RunConfig, stage1_cfg: RunConfig) -> BaseModel:
    """A base (or pixel) model and its autoencoder on the meta device, for FLOP counts."""
    with torch.device("meta"):
        s1 = PixelSpace(cfg) if cfg.stage == "pixel" else UnifiedLatents(stage1_cfg)
        return BaseModel(cfg, s1)


def checked_config(d: dict, path: Path) -> RunConfig:
    try:
        return from_saved(d)
    except UserError as e:
        raise ArtifactError(f"{path}: its config does not match this version of unified-latents ({e})") from None


def artifact_config(path: Path) -> RunConfig:
    return checked_config(load_artifact(path)[1], path)


def check_fits(cfg: RunConfig, s1cfg: RunConfig | None, path: Path, device) -> None:
    """Refuse, before allocating anything, an artifact whose config describes networks larger than
    the memory free here (counted on the meta device: parameters and buffers, built on the CPU and
    then moved to `device`)."""
    with torch.device("meta"):
        model = build_model(cfg, UnifiedLatents(s1cfg) if s1cfg else None)
    need = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for where in {torch.device("cpu"), torch.device(device)}:
        have = dist.available_memory(where)
        if have is not None and need > have:
            raise ArtifactError(
                f"{path}: its config describes networks of {need / 2**30:.1f} GiB "
                f"({sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters), more than the "
                f"{have / 2**30:.1f} GiB free on {where}; refusing to build them (an artifact from "
                "elsewhere? check its source, or use a machine with more memory)"
            )


def load_model(path: Path, device: torch.device | str = "cpu", stage: str | None = None):
    """Artifact -> (EMA model in eval mode, its resolved config)."""

    tensors, cfg_dict, meta = load_artifact(path)
    cfg = checked_config(cfg_dict, path)
    wanted: dict[str, tuple[str, ...]] = {"base": ("base", "pixel")}  # a pixel-diffusion model generates like a base
    if stage is not None and cfg.stage not in wanted.get(stage, (stage,)):
        raise ArtifactError(f"{path} is a '{cfg.stage}' artifact; this command needs a '{stage}' one")
    s1cfg = None
    if cfg.stage == "base":
        if "stage1_config" not in meta:
            raise ArtifactError(
                f"{path}: base artifact without its stage-1 config; re-export it with `ul train --stage base`"
            )
        s1cfg = checked_config(json.loads(meta["stage1_config"]), path)
    check_fits(cfg, s1cfg, path, device)
    model = build_model(cfg, UnifiedLatents(s1cfg) if s1cfg else None)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not fit the network its config describes ({str(e)[:200]})") from None
    acc = resolve(cfg, device)
    apply_backends(acc)  # TF32 and cuDNN autotuning as in training
    return lay_out(model.to(device), acc).eval(), cfg
