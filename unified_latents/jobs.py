"""The long jobs: the main pipeline (stage 1, stage 2, evaluation, report) and the loss-factor
sweep. Each step resumes, or is skipped when its output is already there: rerunning continues."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import dist
from .config import apply_overrides
from .data import modality_of
from .eval.evaluate import EvalRequest, eval_counts, evaluate_artifact
from .eval.fid import find_inception
from .eval.plots import plot_curves, plot_rate_distortion
from .eval.report import read_stats, report_sections, write_report
from .files import atomic_write_text
from .objectives.stage1 import check_grids
from .presets import get_preset
from .runlock import holding
from .stages import base_config, train_stage


@holding("outdir", "ul pipeline")
def run_pipeline(
    preset: str,
    overrides: list[str],
    outdir: Path,
    device: torch.device,
    samples: int | None = None,
    recon: int | None = None,
    ref_count: int | None = None,
    inception: str | None = None,
    progress: bool | None = None,
    i3d: str | None = None,
    trust: bool = False,
) -> Path:
    """The main job: stage 1, stage 2, sampling and evaluation, then a Markdown report. Works on
    images and on video (a preset with data.frames > 0; counts are then in clips)."""
    outdir = Path(outdir)
    _check_feature_networks(inception, i3d, trust)  # fail now, not after half an hour of training
    times = {}
    t0 = time.time()
    cfg1 = apply_overrides(get_preset(preset, "latents"), overrides)
    m = modality_of(cfg1.data)
    samples, recon, ref_count = eval_counts(m, samples, recon, ref_count)
    check_grids(cfg1, apply_overrides(get_preset(preset, "base"), overrides).model.base)  # before any training
    res1 = train_stage(cfg1, outdir / "latents", device, progress)
    times["stage 1"] = time.time() - t0
    t0 = time.time()
    cfg2 = apply_overrides(base_config(get_preset(preset, "base"), res1.artifact), overrides)
    res2 = train_stage(cfg2, outdir / "base", device, progress)
    times["stage 2"] = time.time() - t0
    t0 = time.time()
    eval_path = outdir / "eval.json"
    want: dict[str, object] = {"samples": samples, "recon": recon, "ref_count": ref_count, "stage1": res1.samples}
    want.update(base=res2.samples, i3d=i3d or "", fid_resize="tf1", eval_format=2)  # an earlier eval.json is redone
    ev = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    if ev.get("request") != want:
        dist.print0(f"evaluating: {samples} samples, {recon} reconstructions, {ref_count} reference {m.examples} ...")
        req = EvalRequest(samples, recon, ref_count, inception, i3d, device=device, out=outdir, trust_torchscript=trust)
        req.progress = progress is not False
        ev = evaluate_artifact(res2.artifact, req)
        ev["request"] = want
        atomic_write_text(eval_path, json.dumps(ev, indent=2))
    times["evaluation"] = time.time() - t0
    plot_curves(read_stats(outdir / "latents" / "stats.jsonl"), outdir / "curves-latents.png", "stage 1 (latents)")
    plot_curves(read_stats(outdir / "base" / "stats.jsonl"), outdir / "curves-base.png", "stage 2 (base model)")
    write_report(outdir / "report.md", "Unified Latents run report", report_sections(ev, cfg1, res1, res2, times))
    return outdir / "report.md"


def _check_feature_networks(inception: str | None, i3d: str | None, trust: bool) -> None:
    """The Inception (and I3D) files the evaluation will need: found and allowed, or one error."""
    find_inception(inception, trust)
    if i3d:
        from .eval.fvd import find_i3d

        find_i3d(i3d, trust)


def run_sweep(
    preset: str,
    overrides: list[str],
    loss_factors: list[float],
    outdir: Path,
    device,
    samples: int = 2000,
    recon: int = 500,
    ref_count: int = 2000,
    inception: str | None = None,
    progress: bool | None = None,
    trust: bool = False,
) -> Path:
    """The paper's Table 2 on this data: one full pipeline per fixed loss factor (controller
    off), each resumable and skipped when finished, then a table and a rate-distortion plot."""
    outdir = Path(outdir)
    rows = []
    for lf in loss_factors:
        run = outdir / f"lf-{lf:g}"
        dist.print0(f"== loss factor {lf:g}: {run}")
        over = [*overrides, "diffusion.target_bits=0", f"diffusion.loss_factor={lf}"]
        run_pipeline(preset, over, run, device, samples, recon, ref_count, inception, progress, trust=trust)
        rows.append((lf, json.loads((run / "eval.json").read_text())))
    head = "| loss factor | bits/pixel | bits/image | PSNR (dB) | rFID | gFID |\n|---|---|---|---|---|---|"
    lines = [
        f"| {lf:g} | {e['prior_bpp']:.4f} | {e['prior_bits_per_image']:.1f} | {e['psnr']:.2f} | {e['rfid']:.2f} | "
        f"{e['gfid']:.2f} |"
        for lf, e in rows
    ]
    plot_rate_distortion(rows, outdir / "rate-distortion.png")
    e0 = rows[0][1]
    note = (
        f"gFID: {e0['gfid_samples']} samples vs {e0['reference_images']} {e0['reference']} images; "
        f"rFID and PSNR: {e0['rfid_samples']} reconstructions."
    )
    write_report(
        outdir / "sweep.md",
        "Loss-factor sweep (the paper's Table 2 on this data)",
        [("Table", head + "\n" + "\n".join(lines) + "\n\n" + note), ("Rate-distortion", "![rd](rate-distortion.png)")],
    )
    return outdir / "sweep.md"
