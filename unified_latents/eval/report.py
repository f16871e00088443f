"""Run report: a Markdown page with the metrics table, training curves and image grids, and the
same metrics as console lines (`ul eval`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.modality import Modality, modality_named
from ..files import atomic_write_text


def read_stats(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """sections: (heading, Markdown body)."""
    body = [f"# {title}", ""]
    for head, text in sections:
        body += [f"## {head}", "", text.rstrip(), ""]
    atomic_write_text(Path(path), "\n".join(body))


def table(rows: list[tuple[str, str]], header: tuple[str, str] = ("metric", "value")) -> str:
    out = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def format_metrics(r: dict) -> list[str]:
    """The evaluation as short lines (what `ul eval` prints); absent measurements are left out."""
    f, m = r["flops"], modality_named(r.get("video", False))
    ref = f"{r['reference_images']} {r['reference']} {m.examples}"
    lines = [
        f"{m.fid}  {r['gfid']:.2f}  ({r['gfid_samples']} {m.samples} vs {ref})",
        f"KID   {r['kid'] * 1e3:.2f} x 1e-3 (+- {r['kid_std'] * 1e3:.2f})",
    ]
    if "fvd" in r:
        lines.append(f"FVD   {r['fvd']:.2f}  ({r['fvd_samples']} clips vs {ref})")
    lines += m.fvd_missing_console[:1] if "fvd" not in r else []
    if "continuation_psnr" in r:
        lines.append(f"continuation PSNR {r['continuation_psnr']:.2f} dB on frames {r['generated_from_frame']}+ "
                     f"({r['continuation_clips']} clips, {r['context_frames']} context frames)")
    if "rfid" in r:
        lines += [
            f"rFID  {r['rfid']:.2f}  ({r['rfid_samples']} reconstructions)",
            f"PSNR  {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}  ({r['rfid_samples']} reconstructions)",
            f"bits  stage-1 prior {r['prior_bits_per_image']:.1f} bits/{m.per} ({r['prior_bpp']:.4f} {m.bpp_short}); "
            f"base model {r['base_bits_per_image']:.1f} bits/{m.per} ({r['base_bpp']:.4f} {m.bpp_short})",
        ]
    lines.append(f"FLOPs stage-1 training {f['stage1_train_per_sample'] / 1e9:.3f} G/sample; base training "
                 f"{f['base_train_flops'] / 1e9:.3f} G/sample; generation {f['generate_flops'] / 1e9:.3f} G/sample")
    return lines


def _latent_frames(k: int) -> str:
    return "latent frame 0" if k == 1 else f"latent frames 0-{k - 1}"


def metric_rows(ev: dict, m: Modality, side: int, frames: int) -> list[tuple[str, str]]:
    """The Markdown report's metrics of one evaluation (absent measurements left out)."""
    rows = [(m.fid_long, f"{ev['gfid']:.2f} ({ev['gfid_samples']} {m.samples} vs {ev['reference_images']} {ev['reference']})"),
            ("KID x 1e3", f"{ev['kid'] * 1e3:.2f} +- {ev['kid_std'] * 1e3:.2f}")]
    if "fvd" in ev:
        rows.append(("FVD", f"{ev['fvd']:.2f} ({ev['fvd_samples']} clips)"))
    rows += [("FVD", v) for v in m.fvd_missing_report[:1] if "fvd" not in ev]
    if "continuation_psnr" in ev:
        rows.append(("continuation PSNR (generated frames vs real)",
                     f"{ev['continuation_psnr']:.2f} dB (frames {ev['generated_from_frame']}-{frames - 1} of "
                     f"{ev['continuation_clips']} clips, {ev['context_frames']} context frames)"))
    if "rfid" in ev:
        rows += [
            ("rFID" + m.per_frame_label, f"{ev['rfid']:.2f} ({ev['rfid_samples']} reconstructions)"),
            ("reconstruction PSNR / SSIM", f"{ev['psnr']:.2f} dB / {ev['ssim']:.4f} (original {side}x{side} pixels"
             + m.per_frame_note + ")"),
            ("latent bitrate, stage-1 prior", f"{ev['prior_bits_per_image']:.1f} bits/{m.per} ({ev['prior_bpp']:.4f} {m.bpp})"),
            ("latent bitrate, base model (unweighted ELBO)",
             f"{ev['base_bits_per_image']:.1f} bits/{m.per} ({ev['base_bpp']:.4f} {m.bpp})"),
        ]
    return rows


def run_rows(ev: dict, res1, res2, times: dict) -> list[tuple[str, str]]:
    """The Markdown report's rows about the run: loss factor, FLOPs, samples seen, wall time."""
    f = ev["flops"]
    rows = [
        ("final loss factor c_lf", f"{res1.metrics.get('loss_factor', float('nan')):.3g}"),
        ("FLOPs / training sample: stage 1, base", f"{f['stage1_train_per_sample'] / 1e6:.1f} M, {f['base_train_flops'] / 1e6:.1f} M"),
        ("FLOPs / generated sample", f"{f['generate_flops'] / 1e6:.1f} M ({ev['sampling']['base_steps']} base + "
         f"{ev['sampling']['decoder_steps']} decoder {ev['sampling']['sampler']} steps)"),
        ("samples seen: stage 1, stage 2", f"{res1.samples:,}, {res2.samples:,}"),
    ]
    return rows + [(f"wall time this invocation: {k}", f"{v / 60:.1f} min") for k, v in times.items() if v > 5]


def report_sections(ev: dict, cfg1, res1, res2, times: dict) -> list[tuple[str, str]]:
    """The run report's sections: metrics, samples, continuations, reconstructions, curves, console summary."""
    m = modality_named(ev.get("video", False))
    side = cfg1.data.resolution - 2 * cfg1.data.pad
    rows = metric_rows(ev, m, side, cfg1.data.frames) + run_rows(ev, res1, res2, times)
    labelled_fmnist = bool(cfg1.data.num_classes) and cfg1.data.source == "fmnist"
    samples_text, recon_text = m.report_texts(labelled_fmnist)
    sections = [("Metrics", table(rows)), ("Samples", samples_text)]
    if "continuation_psnr" in ev:
        sections.append(("Continuations", f"Pairs of rows: a held-out clip, then the model's continuation of its first "
                         f"{ev['context_frames']} frames ({_latent_frames(ev['context_latent_frames'])} fixed; frames "
                         f"{ev['generated_from_frame']}+ generated).\n\n![continuations](continuations.png)"))
    if "rfid" in ev:
        sections.append(("Reconstructions", recon_text))
    sections += [("Training curves", "![stage 1](curves-latents.png)\n\n![stage 2](curves-base.png)"),
                 ("Command-line summary", "```\n" + "\n".join(format_metrics(ev)) + "\n```")]
    return sections
