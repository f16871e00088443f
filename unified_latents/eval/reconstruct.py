"""Reconstruction quality and latent bitrate of a stage-1 model on held-out images (`ul reconstruct`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import eval_source, load_images
from ..data.transforms import crop_pad, to_float, to_uint8
from ..objectives.registry import load_model
from .metrics import psnr, ssim


def _per_example(metric, frames_fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """metric per example [N]; for clips, per frame and then the mean over each clip's frames."""
    return metric(frames_fn(a), frames_fn(b)).reshape(a.shape[0], -1).mean(1)


@torch.no_grad()
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
    """images: uint8 [N, C, H, W] (or clips [N, C, T, H, W]: PSNR/SSIM per frame, averaged).
    Returns (metrics, reconstructions uint8). Example k uses seed k.

    mean_of K > 1 reconstructs with the mean of K decoder samples per latent (the estimate of
    E[x | z0] that squared error favours) instead of one sample.

    PSNR/SSIM are on the original pixels (the `pad` border cropped off); bits per pixel divide
    by the model's own input size H*W, as the training log does."""
    model.eval()
    recs, ps, ss, bits = [], [], [], []
    n = images.shape[0]
    for i in tqdm(range(0, n, batch), desc="reconstructing", unit="batch", disable=not progress, leave=False):
        x = to_float(images[i : i + batch]).to(device)
        seeds = list(range(i, i + x.shape[0]))
        rec = to_uint8(model.reconstruct(x, seeds, steps, sampler, mean_of)).cpu()
        orig = crop_pad(images[i : i + batch], pad)
        rec_c = crop_pad(rec, pad)
        ps.append(_per_example(psnr, model.modality.frames, orig, rec_c))
        ss.append(_per_example(ssim, model.modality.frames, orig, rec_c))
        bits.append(model.bits(x, seeds, n_t).cpu())
        recs.append(rec)
    bits_t = torch.cat(bits)
    metrics = {
        "images": n,
        "mean_of": mean_of,
        "psnr": float(torch.cat(ps).mean()),
        "ssim": float(torch.cat(ss).mean()),
        "bits_per_image": float(bits_t.mean()),
        "bpp": float(bits_t.mean()) / model.pixels_per_image(),
        "bits_per_image_stderr": float(bits_t.std() / math.sqrt(n)) if n > 1 else float("nan"),
    }
    return metrics, torch.cat(recs)


def reconstruct(artifact: Path, data: str | None, out: Path | None, count: int = 500, steps: int | None = None,
                sampler: str | None = None, device: torch.device | str = "cpu", progress: bool = True,
                mean_of: int = 1, batch: int | None = None) -> dict[str, float]:
    """`ul reconstruct`: reconstruct `count` held-out examples; originals above reconstructions in a PNG."""
    model, cfg = load_model(artifact, device, stage="latents")
    if data:
        held = load_images(cfg.data, data, "test")
    else:
        src, split = eval_source(cfg.data)
        held = load_images(cfg.data, src, split)
    images = held.images[:count]
    m = model.modality
    batch = batch or cfg.eval.batch or m.batch
    metrics, recs = evaluate_reconstruction(model, images, cfg.data.pad, batch=batch, steps=steps, sampler=sampler,
                                            device=device, progress=progress, mean_of=mean_of)
    if out is not None:
        m.save_reconstructions(images, recs, out, min(16, images.shape[0]))
    return metrics
