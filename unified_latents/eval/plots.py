"""Plots of a run: training curves, and the sweep's rate-distortion figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write  # noqa: E402

CURVES = [
    ("bits_per_image", "latent bits / image"),
    ("decoder_nats", "decoder loss (nats, before c_lf)"),
    ("loss_factor", "loss factor c_lf"),
    ("loss", "total loss (nats)"),
]


def plot_curves(stats: list[dict], path: Path, title: str = "") -> None:
    keys = [(k, label) for k, label in CURVES if stats and k in stats[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    x = [r["samples"] for r in stats]
    for ax, (k, label) in zip(axes[0], keys, strict=True):
        ax.plot(x, [r[k] for r in stats], lw=1)
        if k == "bits_per_image" and any("controlled_bits" in r for r in stats):  # what the controller follows
            ax.plot(x, [r.get("controlled_bits", float("nan")) for r in stats], lw=1.2, label="controller's EMA")
            ax.legend(fontsize=8)
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


def plot_rate_distortion(rows: list[tuple[float, dict]], path: Path) -> None:
    """PSNR and gFID against the stage-1 prior's bits per pixel, one point per loss factor."""
    bpp = [e["prior_bpp"] for _, e in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, key, label in ((axes[0], "psnr", "reconstruction PSNR (dB)"), (axes[1], "gfid", "gFID (lower is better)")):
        ax.plot(bpp, [e[key] for _, e in rows], "o-")
        for lf, e in rows:
            ax.annotate(f"c_lf={lf:g}", (e["prior_bpp"], e[key]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("latent bits per pixel (stage-1 prior)")
        ax.set_ylabel(label)
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    axes[1].set_title(f"{rows[0][1]['gfid_samples']} samples", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
