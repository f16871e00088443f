"""Reconstruction quality and latent bitrate of a stage-1 model on held-out images (`ul reconstruct`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from .. import dist
from ..data import load_images, named_by_artifact
from ..data.images import Rows
from ..data.prepared import RowRange
from ..data.transforms import crop_pad, to_float, to_uint8
from ..objectives.registry import load_model
from ..training.posthoc_ema import apply_ema_length
from .metrics import psnr, ssim


def _per_example(metric, frames_fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """metric per example [N]; for clips, per frame and then the mean over each clip's frames."""
    return metric(frames_fn(a), frames_fn(b)).reshape(a.shape[0], -1).mean(1)


@torch.no_grad()
def reconstruct_rows(
    model,
    images: Rows,
    pad: int = 0,
    batch: int = 250,
    steps: int | None = None,
    sampler: str | None = None,
    n_t: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = True,
    mean_of: int = 1,
    first: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruct `images` (uint8 rows, anything sliced like a tensor: lazily decoded rows are read
    a batch at a time); example k uses seed `first + k`, so a share of a larger set reconstructs as
    it would within the whole. Returns (reconstructions uint8, then per example: PSNR, SSIM on the
    original pixels (the `pad` border cropped off; clips: per frame, averaged) and latent bits)."""
    model.eval()
    recs, ps, ss, bits = [], [], [], []
    for i in tqdm(
        range(0, images.shape[0], batch), desc="reconstructing", unit="batch", disable=not progress, leave=False
    ):
        rows = images[i : i + batch]
        x = to_float(rows).to(device)
        seeds = list(range(first + i, first + i + x.shape[0]))
        rec = to_uint8(model.reconstruct(x, seeds, steps, sampler, mean_of)).cpu()
        orig, rec_c = crop_pad(rows, pad), crop_pad(rec, pad)
        ps.append(_per_example(psnr, model.modality.frames, orig, rec_c))
        ss.append(_per_example(ssim, model.modality.frames, orig, rec_c))
        bits.append(model.bits(x, seeds, n_t).cpu())
        recs.append(rec)
    if not recs:
        return (
            torch.empty((0, *tuple(images.shape)[1:]), dtype=torch.uint8),
            torch.empty(0),
            torch.empty(0),
            torch.empty(0),
        )
    return torch.cat(recs), torch.cat(ps), torch.cat(ss), torch.cat(bits)


def summarise(
    ps: torch.Tensor, ss: torch.Tensor, bits: torch.Tensor, pixels: int, mean_of: int = 1
) -> dict[str, float]:
    """Mean PSNR/SSIM and bits (per example and per pixel of the model's input H*W, as the
    training log has them) of per-example values."""
    n = bits.shape[0]
    return {
        "images": n,
        "mean_of": mean_of,
        "psnr": float(ps.mean()),
        "ssim": float(ss.mean()),
        "bits_per_image": float(bits.mean()),
        "bpp": float(bits.mean()) / pixels,
        "bits_per_image_stderr": float(bits.std() / math.sqrt(n)) if n > 1 else float("nan"),
    }


def evaluate_reconstruction(
    model,
    images: torch.Tensor,
    pad: int = 0,
    batch: int = 250,
    steps: int | None = None,
    sampler: str | None = None,
    n_t: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = True,
    mean_of: int = 1,
) -> tuple[dict[str, float], torch.Tensor]:
    """images: uint8 [N, C, H, W] (or clips [N, C, T, H, W]). Returns (metrics, reconstructions
    uint8); example k uses seed k. mean_of K > 1 reconstructs with the mean of K decoder samples
    per latent (the estimate of E[x | z0] that squared error favours) instead of one sample."""
    recs, ps, ss, bits = reconstruct_rows(model, images, pad, batch, steps, sampler, n_t, device, progress, mean_of)
    return summarise(ps, ss, bits, model.pixels_per_image(), mean_of), recs


def reconstruct(
    artifact: Path,
    data: str | None,
    out: Path | None,
    count: int = 500,
    steps: int | None = None,
    sampler: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    mean_of: int = 1,
    batch: int | None = None,
    ema_length: float | None = None,
) -> dict[str, float | dict]:
    """`ul reconstruct`: reconstruct `count` held-out examples (under torchrun, each process its
    share: example k uses seed k whatever the process count); rank 0 writes originals above
    reconstructions in a PNG. `ema_length`: the stage-1 networks' post-hoc EMA of that sigma_rel."""
    model, cfg = load_model(artifact, device, stage="latents")
    posthoc = apply_ema_length(model, artifact, ema_length) if ema_length is not None else None
    src, split = (data, "test") if data else named_by_artifact(cfg.data)
    held = load_images(cfg.data, src, split)
    count = min(count, len(held))
    lo, hi = dist.my_share(count)
    recs, ps, ss, bits = reconstruct_rows(
        model,
        RowRange(held.images, lo, hi),
        cfg.data.pad,
        batch=batch or cfg.eval.batch or model.modality.batch,
        steps=steps,
        sampler=sampler,
        device=device,
        progress=progress and dist.is_main(),
        mean_of=mean_of,
        first=lo,
    )
    ps, ss, bits = dist.gather_cat(ps), dist.gather_cat(ss), dist.gather_cat(bits)  # every process's, in rank order
    metrics: dict[str, float | dict] = dict(summarise(ps, ss, bits, model.pixels_per_image(), mean_of))
    shown = min(16, count)
    head = dist.gather_cat(recs[: max(0, min(hi, shown) - lo)], everyone=False)
    if out is not None and dist.is_main():
        assert head is not None  # rank 0 holds everyone's
        model.modality.save_reconstructions(held.images[:shown], head, out, shown)
    return {**metrics, "posthoc_ema": posthoc} if posthoc else metrics
