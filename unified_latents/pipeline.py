"""Library entry points behind the CLI: build, train, load and evaluate models."""

from __future__ import annotations

from pathlib import Path

import torch

from . import dist
from .config import RunConfig, from_dict
from .data import eval_source, load_images, to_float
from .errors import ArtifactError, ConfigError, UserError
from .eval import evaluate_reconstruction, save_grid, save_previews
from .objectives import OBJECTIVES
from .training import TrainResult, load_artifact, train

PREVIEW_COUNT = 8


def build_model(cfg: RunConfig):
    if cfg.stage not in OBJECTIVES:
        raise ConfigError(f"unknown stage {cfg.stage!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.stage](cfg)


def load_model(path: Path, device: torch.device | str = "cpu", stage: str | None = None):
    """Artifact -> (EMA model in eval mode, its resolved config)."""
    tensors, cfg_dict, _ = load_artifact(path)
    try:
        cfg = from_dict(cfg_dict)
    except UserError as e:
        raise ArtifactError(f"{path}: its config does not match this version of unified-latents ({e})") from None
    if stage is not None and cfg.stage != stage:
        raise ArtifactError(f"{path} is a '{cfg.stage}' artifact; this command needs a '{stage}' one")
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not fit the network its config describes ({str(e)[:200]})") from None
    return model.to(device).eval(), cfg


def train_stage(
    cfg: RunConfig, outdir: Path, device: torch.device, progress: bool | None = None, until: int | None = None
) -> TrainResult:
    data = load_images(cfg.data)
    if data.skipped:
        dist.print0(f"skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}")
    try:
        src, split = eval_source(cfg.data)
        held = load_images(cfg.data, src, split)
    except UserError:
        held = data  # no held-out set configured: preview training images
    preview_x = to_float(held.images[:PREVIEW_COUNT])
    return train(cfg, outdir, lambda: build_model(cfg), data, preview_x, save_previews, f"ul-{cfg.stage}", device, progress, until)


def reconstruct(
    artifact: Path,
    data: str | None,
    out: Path | None,
    count: int = 500,
    steps: int | None = None,
    sampler: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Reconstruct `count` held-out images; write originals above reconstructions as a PNG grid."""
    model, cfg = load_model(artifact, device, stage="latents")
    if data:
        held = load_images(cfg.data, data, "test")
    else:
        src, split = eval_source(cfg.data)
        held = load_images(cfg.data, src, split)
    images = held.images[:count]
    metrics, recs = evaluate_reconstruction(model, images, cfg.data.pad, steps=steps, sampler=sampler, device=device, progress=progress)
    if out is not None:
        k = min(16, images.shape[0])
        save_grid(torch.cat([images[:k], recs[:k]]), out, nrow=k, scale=2)
    return metrics


def run_pipeline(cfg: RunConfig, outdir: Path, device: torch.device, count: int = 500, progress: bool | None = None) -> Path:
    """The main job: train stage 1, evaluate reconstructions, write a report. Every step
    resumes or is skipped when its output already exists, so rerunning continues the job."""
    from .eval.report import plot_curves, read_stats, table, write_report
    from .training.checkpoint import atomic_write_text
    import json
    import time

    outdir = Path(outdir)
    t0 = time.time()
    run1 = outdir / "latents"
    res = train_stage(cfg, run1, device, progress)
    minutes = (time.time() - t0) / 60
    metrics_path = outdir / "reconstruction.json"
    cached = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if cached.get("samples") != res.samples or cached.get("images") != count:
        dist.print0(f"evaluating reconstructions of {count} held-out images ...")
        m = reconstruct(res.artifact, None, outdir / "reconstructions.png", count, device=device, progress=progress is not False)
        cached = {**m, "samples": res.samples}
        atomic_write_text(metrics_path, json.dumps(cached, indent=2))
    plot_curves(read_stats(run1 / "stats.jsonl"), outdir / "curves-latents.png", "stage 1 (latents)")
    m = cached
    rows = [
        ("held-out images", f"{m['images']}"),
        ("reconstruction PSNR (0..255, original pixels)", f"{m['psnr']:.2f} dB"),
        ("reconstruction SSIM", f"{m['ssim']:.4f}"),
        ("latent bitrate", f"{m['bits_per_image']:.1f} bits/image ({m['bpp']:.4f} bits/pixel)"),
        ("final loss factor c_lf", f"{res.metrics.get('loss_factor', float('nan')):.3g}"),
        ("stage-1 samples seen", f"{res.samples:,}"),
    ]
    if minutes > 0.2:
        rows.append(("stage-1 wall time (this invocation)", f"{minutes:.1f} min"))
    write_report(
        outdir / "report.md",
        "Unified Latents run report",
        [
            ("Metrics", table(rows)),
            ("Training curves", "![stage-1 curves](curves-latents.png)"),
            ("Reconstructions", "Top: held-out originals. Bottom: decoder samples given z0 (fresh noise).\n\n"
             "![reconstructions](reconstructions.png)"),
            ("Config", "```json\n" + json.dumps(json.loads((run1 / "config.json").read_text()), indent=1) + "\n```"),
        ],
    )
    return outdir / "report.md"
