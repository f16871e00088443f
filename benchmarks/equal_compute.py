"""Generation quality per training FLOP: UL latents vs KL-VAE latents vs pixel diffusion
(the paper's Table 1 / Fig. 4 in miniature).

    python benchmarks/equal_compute.py [--preset fmnist] [--budget-tflop 56] [--points 3]
        [--samples 500] [--ul-artifact A] [--klvae-artifact B] [--outdir runs/equal-compute]

The same base network (the preset's stage-2 U-Net) is trained three ways with the same FLOP
budget: on UL latents, on the latents of a Stable-Diffusion-style KL-VAE (`--baseline kl-vae`:
learned variance, small KL weight, L2 decoder, latents scaled to unit std), and on pixels
(`--stage pixel`, with patches the size of the encoder's downsampling so it sees the same
token grid). FLOPs are counted by the project's counter (torch.utils.flop_counter; training =
3x forward). The autoencoders' own training cost is reported separately, as the paper does;
trained stage-1 artifacts can be passed in, else both are trained here with the preset.

Each method is evaluated at `--points` evenly spaced fractions of the budget (the same run,
paused and resumed; intermediate points are mid-schedule) with gFID and KID of `--samples`
class-conditional samples against the held-out set. Prints a Markdown table and writes it
with the FLOPs-vs-gFID plot to the output folder. Resumable: finished pieces are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.config import apply_overrides  # noqa: E402
from unified_latents.eval.evaluate import EvalRequest, evaluate_artifact  # noqa: E402
from unified_latents.eval.flops import generation_report, stage1_report  # noqa: E402
from unified_latents.objectives import BaseModel, UnifiedLatents  # noqa: E402
from unified_latents.objectives.pixel import PixelSpace  # noqa: E402
from unified_latents.objectives.registry import artifact_config, preset_config  # noqa: E402
from unified_latents.presets import baseline_overrides, get_preset  # noqa: E402
from unified_latents.stages import base_config, train_stage  # noqa: E402
from unified_latents.training.checkpoint import atomic_write, atomic_write_text  # noqa: E402


def stage2_config(preset: str, method: str, artifact: Path | None):
    if method == "pixel":
        return preset_config(preset, "pixel")
    cfg = base_config(get_preset(preset, "base"), artifact)
    return apply_overrides(cfg, baseline_overrides("kl-vae")) if method == "kl-vae" else cfg


def train_flops_per_sample(cfg, method: str) -> tuple[float, float]:
    """(stage-2 training FLOPs per sample, stage-1 training FLOPs per sample) on the meta device."""
    with torch.device("meta"):
        if method == "pixel":
            base = BaseModel(cfg, PixelSpace(cfg))
            return generation_report(base, 1.0, 1, 0)["base_train_flops"], 0.0
        s1 = UnifiedLatents(artifact_config(Path(cfg.base.stage1_artifact)))
        base = BaseModel(cfg, s1)
        return generation_report(base, 1.0, 1, 0)["base_train_flops"], stage1_report(s1)["total"]["train_flops"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fmnist")
    ap.add_argument("--budget-tflop", type=float, default=56.0, help="stage-2 training FLOPs per method (TFLOP)")
    ap.add_argument("--points", type=int, default=3, help="evaluations per method, evenly spaced in FLOPs")
    ap.add_argument("--samples", type=int, default=500, help="generated images per gFID")
    ap.add_argument("--ref-count", type=int, default=2000)
    ap.add_argument("--ul-artifact", type=Path, help="a trained UL stage-1 artifact (default: train one)")
    ap.add_argument("--klvae-artifact", type=Path, help="a trained KL-VAE stage-1 artifact (default: train one)")
    ap.add_argument("--outdir", type=Path, default=Path("runs/equal-compute"))
    ap.add_argument("--methods", default="ul,kl-vae,pixel")
    args = ap.parse_args()
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    stage1 = {"ul": args.ul_artifact, "kl-vae": args.klvae_artifact}
    for m in ("ul", "kl-vae"):
        if m in methods and stage1[m] is None:
            over = baseline_overrides("kl-vae") if m == "kl-vae" else []
            cfg = apply_overrides(get_preset(args.preset, "latents"), over)
            print(f"== training the {m} autoencoder (stage 1, {cfg.train.total_samples:,} samples)", flush=True)
            stage1[m] = train_stage(cfg, out / f"{m}-stage1", device, progress=False).artifact

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for m in methods:
        cfg = stage2_config(args.preset, m, stage1.get(m))
        per_sample, ae_per_sample = train_flops_per_sample(cfg, m)
        batch = cfg.train.batch
        total = max(batch, int(args.budget_tflop * 1e12 / per_sample) // batch * batch)
        cfg.train.total_samples = total
        cfg.train.warmup_samples = min(cfg.train.warmup_samples, total // 10)
        ae_samples = 0
        if m != "pixel":
            ae_samples = artifact_config(Path(stage1[m])).train.total_samples
        for i in range(1, args.points + 1):
            until = max(batch, total * i // args.points // batch * batch)
            key = f"{m}@{until}"
            if key in results:
                continue
            t0 = time.time()
            res = train_stage(cfg, out / m, device, progress=False, until=until)
            train_s = time.time() - t0
            t0 = time.time()
            ev = evaluate_artifact(
                res.artifact,
                EvalRequest(args.samples, 0, args.ref_count, device=device, progress=False, out=out / f"{m}-eval-{i}"),
            )
            results[key] = {
                "method": m,
                "samples_seen": res.samples,
                "train_flops": res.samples * per_sample,
                "autoencoder_train_flops": ae_samples * ae_per_sample,
                "gfid": ev["gfid"],
                "kid": ev["kid"],
                "kid_std": ev["kid_std"],
                "gfid_samples": ev["gfid_samples"],
                "reference": f"{ev['reference_images']} {ev['reference']}",
                "train_seconds": train_s,
                "eval_seconds": time.time() - t0,
            }
            atomic_write_text(results_path, json.dumps(results, indent=2))
            r = results[key]
            print(
                f"{m:>7} {r['train_flops'] / 1e12:8.1f} TFLOP  gFID {r['gfid']:7.2f}  KID {r['kid'] * 1e3:6.2f}e-3",
                flush=True,
            )

    rows = sorted(
        results.values(), key=lambda r: (methods.index(r["method"]) if r["method"] in methods else 99, r["train_flops"])
    )
    names = {"ul": "UL latents", "kl-vae": "KL-VAE latents (scaled)", "pixel": "pixel diffusion"}
    lines = [
        "| method | stage-2 training TFLOP | samples seen | gFID | KID x 1e3 | autoencoder training TFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ae = f"{r['autoencoder_train_flops'] / 1e12:.1f}" if r["autoencoder_train_flops"] else "-"
        lines.append(
            f"| {names.get(r['method'], r['method'])} | {r['train_flops'] / 1e12:.1f} | {r['samples_seen']:,} | "
            f"{r['gfid']:.2f} | {r['kid'] * 1e3:.2f} +- {r['kid_std'] * 1e3:.2f} | {ae} |"
        )
    if rows:
        lines.append(
            f"\ngFID and KID: {rows[0]['gfid_samples']} class-conditional samples vs {rows[0]['reference']} "
            "images, Inception pool3; no guidance."
        )
    table = "\n".join(lines)
    print(table)
    atomic_write_text(
        out / "equal_compute.md", "# Equal-compute comparison\n\n" + table + "\n\n![plot](flops_vs_gfid.png)\n"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in methods:
        pts = [r for r in rows if r["method"] == m]
        if pts:
            ax.plot([r["train_flops"] / 1e12 for r in pts], [r["gfid"] for r in pts], "o-", label=names.get(m, m))
    ax.set_xlabel("stage-2 training TFLOP")
    ax.set_ylabel(f"gFID ({rows[0]['gfid_samples'] if rows else '?'} samples)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "flops_vs_gfid.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))


if __name__ == "__main__":
    main()
