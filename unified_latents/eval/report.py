"""Run report: a Markdown page with the metrics table, training curves and image grids."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..training.checkpoint import atomic_write, atomic_write_text  # noqa: E402

CURVES = [("bits_per_image", "latent bits / image"), ("decoder_nats", "decoder loss (nats, before c_lf)"),
          ("loss_factor", "loss factor c_lf"), ("loss", "total loss (nats)")]


def read_stats(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_curves(stats: list[dict], path: Path, title: str = "") -> None:
    keys = [(k, label) for k, label in CURVES if stats and k in stats[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    x = [r["samples"] for r in stats]
    for ax, (k, label) in zip(axes[0], keys):
        ax.plot(x, [r[k] for r in stats], lw=1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("samples seen")
        if k in ("loss", "decoder_nats"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


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
    f = r["flops"]
    video = r.get("video", False)
    per = "clip" if video else "image"
    bpp = "bits/pixel/frame" if video else "bpp"
    fid = "frame FID" if video else "gFID"
    unit = "clips" if video else "samples"
    ref = f"{r['reference_images']} {r['reference']} {'clips' if video else 'images'}"
    lines = [
        f"{fid}  {r['gfid']:.2f}  ({r['gfid_samples']} {unit} vs {ref})",
        f"KID   {r['kid'] * 1e3:.2f} x 1e-3 (+- {r['kid_std'] * 1e3:.2f})",
    ]
    if "fvd" in r:
        lines.append(f"FVD   {r['fvd']:.2f}  ({r['fvd_samples']} clips vs {ref})")
    elif video:
        lines.append("FVD   not computed (no I3D network given: --i3d PATH)")
    if "continuation_psnr" in r:
        lines.append(f"continuation PSNR {r['continuation_psnr']:.2f} dB on frames {r['generated_from_frame']}+ "
                     f"({r['continuation_clips']} clips, {r['context_frames']} context frames)")
    if "rfid" in r:
        lines += [
            f"rFID  {r['rfid']:.2f}  ({r['rfid_samples']} reconstructions)",
            f"PSNR  {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}  ({r['rfid_samples']} reconstructions)",
            f"bits  stage-1 prior {r['prior_bits_per_image']:.1f} bits/{per} ({r['prior_bpp']:.4f} {bpp}); "
            f"base model {r['base_bits_per_image']:.1f} bits/{per} ({r['base_bpp']:.4f} {bpp})",
        ]
    lines.append(f"FLOPs stage-1 training {f['stage1_train_per_sample'] / 1e9:.3f} G/sample; base training "
                 f"{f['base_train_flops'] / 1e9:.3f} G/sample; generation {f['generate_flops'] / 1e9:.3f} G/sample")
    return lines
