"""Run report: a Markdown page with the metrics table, training curves and image grids, and the
same metrics as console lines (`ul eval`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.modality import Modality, modality_named
from ..files import atomic_write_text, read_jsonl


def read_stats(path: Path) -> list[dict]:
    return read_jsonl(path)


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


@dataclass(frozen=True)
class Metric:
    """One measurement of an evaluation record `r` (eval.json), shown when `when(r, m)`: as a
    Markdown row `label | value(r, m, side)` (label None: console only) and as the console line
    `line(r, m)` (None: report only). `side`: the original image side in pixels."""

    when: Callable[[dict, Modality], bool]
    label: Callable[[Modality], str] | None
    value: Callable[[dict, Modality, int], str] | None
    line: Callable[[dict, Modality], str] | None


def _has(key: str) -> Callable[[dict, Modality], bool]:
    return lambda r, m: key in r


def _ref(r: dict, m: Modality) -> str:
    return f"{r['reference_images']} {r['reference']} {m.examples}"


def _bits(r: dict, m: Modality, which: str, unit: str, side: int | None = None) -> str:
    """Bits per example and per pixel of the model's input (padding included, as the training log
    counts them); with `side`, also per original pixel (the padding left out)."""
    bits = r[which + "_bits_per_image"]
    text = f"{bits:.1f} bits/{m.per} ({r[which + '_bpp']:.4f} {unit} of the model's input"
    if side:
        text += f"; {bits / (side * side * max(1, r.get('frames', 0))):.4f} per original {side}x{side} pixel"
    return text + ")"


def _kid(r: dict) -> str:
    """KID with its error bar: the spread over random subsets (of kid_subset samples from each side)."""
    subset = f", std over 100 subsets of {r['kid_subset']}" if "kid_subset" in r else ""
    return f"{r['kid'] * 1e3:.2f} +- {r['kid_std'] * 1e3:.2f}{subset}"


# The one table behind `ul eval`'s lines and the report's metrics rows, in order.
METRICS = [
    Metric(
        lambda r, m: True,
        lambda m: m.fid_long,
        lambda r, m, side: (
            f"{r['gfid']:.2f} ({r['gfid_samples']} {m.samples} vs {r['reference_images']} {r['reference']})"
        ),
        lambda r, m: f"{m.fid}  {r['gfid']:.2f}  ({r['gfid_samples']} {m.samples} vs {_ref(r, m)})",
    ),
    Metric(
        lambda r, m: True, lambda m: "KID x 1e3", lambda r, m, side: _kid(r), lambda r, m: f"KID   {_kid(r)} (x 1e-3)"
    ),
    Metric(
        _has("fvd"),
        lambda m: "FVD",
        lambda r, m, side: f"{r['fvd']:.2f} ({r['fvd_samples']} clips)",
        lambda r, m: f"FVD   {r['fvd']:.2f}  ({r['fvd_samples']} clips vs {_ref(r, m)})",
    ),
    Metric(
        lambda r, m: "fvd" not in r and m.has_fvd,
        lambda m: "FVD",
        lambda r, m, side: "not computed: no I3D weights given (`--i3d PATH`)",
        lambda r, m: "FVD   not computed (no I3D network given: --i3d PATH)",
    ),
    Metric(
        _has("continuation_psnr"),
        lambda m: "continuation PSNR (generated frames vs real)",
        lambda r, m, side: (
            f"{r['continuation_psnr']:.2f} dB (frames {r['generated_from_frame']}-{r['frames'] - 1} of "
            f"{r['continuation_clips']} clips, {r['context_frames']} context frames)"
        ),
        lambda r, m: (
            f"continuation PSNR {r['continuation_psnr']:.2f} dB on frames {r['generated_from_frame']}+ "
            f"({r['continuation_clips']} clips, {r['context_frames']} context frames)"
        ),
    ),
    Metric(
        _has("rfid"),
        lambda m: "rFID" + m.per_frame_label,
        lambda r, m, side: f"{r['rfid']:.2f} ({r['rfid_samples']} reconstructions vs their originals)",
        lambda r, m: f"rFID  {r['rfid']:.2f}  ({r['rfid_samples']} reconstructions vs their originals)",
    ),
    Metric(
        _has("rfid"),
        lambda m: "reconstruction PSNR / SSIM",
        lambda r, m, side: f"{r['psnr']:.2f} dB / {r['ssim']:.4f} (original {side}x{side} pixels{m.per_frame_note})",
        lambda r, m: f"PSNR  {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}  ({r['rfid_samples']} reconstructions)",
    ),
    Metric(
        _has("rfid"),
        lambda m: "latent bitrate, stage-1 prior (unconditional)",
        lambda r, m, side: _bits(r, m, "prior", m.bpp, side),
        None,
    ),
    Metric(
        _has("rfid"),
        lambda m: "latent bitrate, base model (unweighted ELBO; class-conditional when it has classes)",
        lambda r, m, side: _bits(r, m, "base", m.bpp, side),
        lambda r, m: (
            f"bits  stage-1 prior {_bits(r, m, 'prior', m.bpp_short)}; base model {_bits(r, m, 'base', m.bpp_short)}"
        ),
    ),
    Metric(
        _has("base_null_bits_per_image"),
        lambda m: "latent bitrate, base model with the null label (unconditional)",
        lambda r, m, side: _bits(r, m, "base_null", m.bpp, side),
        lambda r, m: f"bits  base model, null label {_bits(r, m, 'base_null', m.bpp_short)}",
    ),
    Metric(
        lambda r, m: True,
        None,
        None,  # the report gives FLOPs with the run's rows
        lambda r, m: (
            f"FLOPs stage-1 training {r['flops']['stage1_train_per_sample'] / 1e9:.3f} G/sample; base training "
            f"{r['flops']['base_train_flops'] / 1e9:.3f} G/sample; generation "
            f"{r['flops']['generate_flops'] / 1e9:.3f} G/sample"
        ),
    ),
]


def format_metrics(r: dict) -> list[str]:
    """The evaluation as short lines (what `ul eval` prints); absent measurements are left out."""
    m = modality_named(r.get("video", False))
    return [x.line(r, m) for x in METRICS if x.line is not None and x.when(r, m)]


def _latent_frames(k: int) -> str:
    return "latent frame 0" if k == 1 else f"latent frames 0-{k - 1}"


def metric_rows(ev: dict, m: Modality, side: int) -> list[tuple[str, str]]:
    """The Markdown report's metrics of one evaluation (absent measurements left out)."""
    return [
        (x.label(m), x.value(ev, m, side))
        for x in METRICS
        if x.label is not None and x.value is not None and x.when(ev, m)
    ]


def run_rows(ev: dict, res1, res2, times: dict) -> list[tuple[str, str]]:
    """The Markdown report's rows about the run: loss factor, FLOPs, samples seen, wall time."""
    f = ev["flops"]
    rows = [
        ("final loss factor c_lf", f"{res1.metrics.get('loss_factor', float('nan')):.3g}"),
        (
            "FLOPs / training sample: stage 1, base",
            f"{f['stage1_train_per_sample'] / 1e6:.1f} M, {f['base_train_flops'] / 1e6:.1f} M",
        ),
        (
            "FLOPs / generated sample",
            f"{f['generate_flops'] / 1e6:.1f} M ({ev['sampling']['base_steps']} base + "
            f"{ev['sampling']['decoder_steps']} decoder {ev['sampling']['sampler']} steps)",
        ),
        ("samples seen: stage 1, stage 2", f"{res1.samples:,}, {res2.samples:,}"),
    ]
    return rows + [(f"wall time this invocation: {k}", f"{v / 60:.1f} min") for k, v in times.items() if v > 5]


def report_sections(ev: dict, cfg1, res1, res2, times: dict) -> list[tuple[str, str]]:
    """The run report's sections: metrics, samples, continuations, reconstructions, curves, console summary."""
    m = modality_named(ev.get("video", False))
    side = cfg1.data.resolution - 2 * cfg1.data.pad
    rows = metric_rows(ev, m, side) + run_rows(ev, res1, res2, times)
    labelled_fmnist = bool(cfg1.data.num_classes) and cfg1.data.source == "fmnist"
    samples_text, recon_text = m.report_texts(labelled_fmnist)
    sections = [("Metrics", table(rows)), ("Samples", samples_text)]
    if "continuation_psnr" in ev:
        sections.append(
            (
                "Continuations",
                f"Pairs of rows: a held-out clip, then the model's continuation of its first "
                f"{ev['context_frames']} frames ({_latent_frames(ev['context_latent_frames'])} fixed; frames "
                f"{ev['generated_from_frame']}+ generated).\n\n![continuations](continuations.png)",
            )
        )
    if "rfid" in ev:
        sections.append(("Reconstructions", recon_text))
    sections += [
        ("Training curves", "![stage 1](curves-latents.png)\n\n![stage 2](curves-base.png)"),
        ("Command-line summary", "```\n" + "\n".join(format_metrics(ev)) + "\n```"),
    ]
    return sections
