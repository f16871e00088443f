"""The RGB photo benchmark: stage 1 on random crops of colour photos, against a PCA codec.

    python benchmarks/rgb.py [--preset rgb32] [--variants ul] [--set KEY=VALUE ...]
        [--check-every 16000] [--recon 500] [--mean-of 8] [--outdir runs/rgb]
    python benchmarks/rgb.py --fid-floor    # FID of real training crops vs the test crops
    python benchmarks/rgb.py --train-vs-test runs/rgb/ul/artifact.safetensors   # PCA gap, seen vs unseen scenes

Data: `data.source=photos` (unified_latents/data/photos.py): 20,000 training crops of 50
photographed scenes (58 photos) and 2,000 test crops of 14 other scenes (whole photos held out),
at the preset's resolution (`rgb32`: 32x32). Install the photos with `bash scripts/setup.sh photos`.

For every variant (a named list of config overrides, VARIANTS below) it trains stage 1,
pausing every `--check-every` samples to log the EMA encoder's colour sensitivity on 64 test
crops (red and blue swapped; eval/colour.py) to colour.jsonl, then reconstructs `--recon`
test crops and prints one table row: latent bits per image under the prior, PSNR of one
decoder sample and of the mean of `--mean-of` decoder samples (the posterior-mean estimate,
which squared error favours, as the PCA codec's linear reconstruction is), the PCA codec's PSNR
at the same bits (fitted on the training crops; eval/codec.py) and the gains over it, the
colour sensitivity at the end and its minimum after the first 10% of training, and the
minutes of training. Resumable: rerun the same command; finished variants are not retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.config import apply_overrides, flatten, to_dict  # noqa: E402
from unified_latents.data import load_images, to_float  # noqa: E402
from unified_latents.data.grids import save_grid  # noqa: E402
from unified_latents.eval import evaluate_reconstruction  # noqa: E402
from unified_latents.eval.codec import PCACodec  # noqa: E402
from unified_latents.eval.colour import colour_report  # noqa: E402
from unified_latents.files import read_jsonl  # noqa: E402
from unified_latents.objectives.registry import load_model  # noqa: E402
from unified_latents.presets import get_preset  # noqa: E402
from unified_latents.stages import train_stage  # noqa: E402
from unified_latents.training.checkpoint import atomic_write_text  # noqa: E402

FIXED = ["diffusion.target_bits=0", "diffusion.loss_factor=17"]  # the controller off
LAYER_NORM = ["model.encoder.norm=layer", "model.prior.norm=layer", "model.decoder.norm=layer"]
VARIANTS: dict[str, list[str]] = {
    "ul": [],  # the preset as it is
    "fixed-lf": FIXED,
    "fixed-lf-enc-layer": [*FIXED, "model.encoder.norm=layer"],
    "fixed-lf-layer": [*FIXED, *LAYER_NORM],
    # the starting point: the fmnist preset on photos (group norm, fast controller from c_lf 3)
    "fmnist-nets": [f"model.{n}.norm=group" for n in ("encoder", "prior", "decoder", "base")]
    + ["diffusion.loss_factor=3", "diffusion.controller_rate=0.02"],
}
COLUMNS = [
    ("variant", "{variant}"),
    ("bits/image", "{bits_per_image:.1f}"),
    ("PSNR, one sample (dB)", "{psnr:.2f}"),
    ("PSNR, mean of K samples (dB)", "{psnr_mean:.2f}"),
    ("PCA codec at equal bits (dB)", "{pca_psnr:.2f}"),
    ("gain, one sample (dB)", "{gap_db:+.2f}"),
    ("gain, mean (dB)", "{gap_mean_db:+.2f}"),
    ("colour sensitivity, end", "{colour_end:.2f}"),
    ("its minimum after 10%", "{colour_min_after_10pct:.2f}"),
    ("training min", "{train_minutes:.1f}"),
]


def _train_logged(cfg, run: Path, every: int, probe: torch.Tensor, device) -> list[dict]:
    """Train in pauses of `every` samples, logging the EMA encoder's colour report at each."""
    log_path = run / "colour.jsonl"
    logged = [json.loads(ln) for ln in log_path.read_text().splitlines()] if log_path.exists() else []
    done = {r["samples"] for r in logged}
    total, spent = cfg.train.total_samples, 0.0
    for until in range(every, total + every, every):
        until = min(until, total)
        if until in done:
            continue
        t0 = time.time()
        res = train_stage(cfg, run, device, progress=False, until=until)
        spent += time.time() - t0
        model, _ = load_model(res.artifact, device, stage="latents")
        rep = colour_report(model.encode, probe.to(device), cfg.diffusion.lam0)
        rec = {"samples": res.samples, "train_sec": spent, **rep}
        logged.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"  {res.samples:>8,} samples: colour sensitivity {rep['colour_sensitivity']:.3f} "
            f"(shift {rep['shift_sensitivity']:.3f}, noise margin {rep['noise_margin']:.1f})",
            flush=True,
        )
    return logged


def _check_same_settings(run: Path, cfg) -> None:
    """A run folder trained with other settings (e.g. an older preset) is never reused silently."""
    path = run / "config.json"
    if not path.exists():
        return
    old, new = flatten(json.loads(path.read_text())), flatten(to_dict(cfg))
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    if changed:
        raise SystemExit(
            f"{run} was trained with other settings ({', '.join(f'{k}={old[k]!r}' for k in changed[:4])}); "
            f"pass another --outdir or delete the folder"
        )


def run_variant(name: str, overrides: list[str], args, codec: PCACodec, test: torch.Tensor, device) -> dict:
    cfg = apply_overrides(get_preset(args.preset), [*overrides, *args.set])
    run = args.outdir / name
    result_path = run / "rgb.json"
    _check_same_settings(run, cfg)
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if (done.get("mean_of"), done.get("recon")) == (args.mean_of, args.recon):
            return done  # finished; other --mean-of / --recon re-evaluate the trained model
    print(f"== {name}: {' '.join(overrides + args.set) or '(preset)'}", flush=True)
    log = _train_logged(cfg, run, args.check_every, to_float(test[:64]), device)
    model, _ = load_model(run / "artifact.safetensors", device, stage="latents")
    m, recs = evaluate_reconstruction(model, test[: args.recon], device=device, progress=False)
    mm, mrecs = evaluate_reconstruction(model, test[: args.recon], device=device, progress=False, mean_of=args.mean_of)
    save_grid(torch.cat([test[:32], recs[:32], mrecs[:32]]), run / "rgb-reconstructions.png", nrow=16)
    later = [r["colour_sensitivity"] for r in log if r["samples"] > 0.1 * cfg.train.total_samples]
    pca = codec.psnr_at_bits(test[: args.recon], m["bits_per_image"])
    minutes = sum(rec.get("sec", 0) for rec in read_jsonl(run / "stats.jsonl")) / 60
    res = {
        "variant": name,
        "overrides": overrides + args.set,
        "bits_per_image": m["bits_per_image"],
        "psnr": m["psnr"],
        "psnr_mean": mm["psnr"],
        "mean_of": args.mean_of,
        "pca_psnr": pca,
        "gap_db": m["psnr"] - pca,
        "gap_mean_db": mm["psnr"] - pca,
        "colour_end": log[-1]["colour_sensitivity"],
        "colour_min_after_10pct": min(later) if later else float("nan"),
        "train_minutes": minutes,
        "samples": cfg.train.total_samples,
        "recon": args.recon,
    }
    atomic_write_text(result_path, json.dumps(res, indent=2))
    return res


def fid_floor(data_cfg, test: torch.Tensor, n: int = 2000) -> str:
    """FID of n real training crops (random, seed 0) against the first n test crops: what a
    generator that reproduced the training photos perfectly would score on this split."""
    from unified_latents.eval.fid import InceptionFeatures, fid_from_features, kid

    train = load_images(data_cfg).images
    pick = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    net = InceptionFeatures(None, "cpu")
    f_train, f_test = net(train[pick], progress=True), net(test[:n], progress=True)
    k, k_std = kid(f_train, f_test, subset_size=min(1000, n))
    return (
        f"FID floor of the split: {n} training crops vs {n} test crops: {fid_from_features(f_train, f_test):.2f} "
        f"(KID x 1e3 {k * 1e3:.1f} +- {k_std * 1e3:.1f})"
    )


def train_vs_test(artifact: Path, codec: PCACodec, data_cfg, test: torch.Tensor, n: int = 300) -> str:
    """PSNR against the PCA codec on n training crops (random, seed 0) and on the first n test
    crops, for one decoder sample and for the mean of 8 DDIM-4 samples: how much of the gap is
    generalisation from the benchmark's few training scenes."""
    model, _ = load_model(artifact, "cpu", stage="latents")
    train = load_images(data_cfg).images
    sets = {
        "training crops": train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:n]],
        "test crops": test[:n],
    }
    lines = ["| crops | bits/image | one sample vs PCA | mean of 8 vs PCA |", "|---|---|---|---|"]
    for name, x in sets.items():
        one, _ = evaluate_reconstruction(model, x, progress=False)
        mean, _ = evaluate_reconstruction(model, x, progress=False, mean_of=8, steps=4, sampler="ddim")
        pca = codec.psnr_at_bits(x, one["bits_per_image"])
        lines.append(
            f"| {name} | {one['bits_per_image']:.1f} | {one['psnr']:.2f} vs {pca:.2f} dB "
            f"({one['psnr'] - pca:+.2f}) | {mean['psnr']:.2f} vs {pca:.2f} dB ({mean['psnr'] - pca:+.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="rgb32")
    ap.add_argument("--variants", default="ul", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], help="extra config override for every variant")
    ap.add_argument("--check-every", type=int, default=16_000, help="samples between colour-sensitivity checks")
    ap.add_argument("--recon", type=int, default=500, help="test crops reconstructed")
    ap.add_argument("--mean-of", type=int, default=8, help="decoder samples averaged for the posterior-mean PSNR")
    ap.add_argument("--outdir", type=Path, default=Path("runs/rgb"))
    ap.add_argument("--fid-floor", action="store_true", help="only print the FID of real training crops vs test crops")
    ap.add_argument(
        "--train-vs-test",
        type=Path,
        metavar="ARTIFACT",
        help="only compare a stage-1 artifact with PCA on training crops and on test crops",
    )
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_cfg = get_preset(args.preset).data
    if args.fid_floor:
        print(fid_floor(data_cfg, load_images(data_cfg, split="test").images))
        return
    print(f"fitting the PCA codec on the training crops ({data_cfg.resolution}x{data_cfg.resolution}) ...", flush=True)
    codec = PCACodec(load_images(data_cfg).images)
    test = load_images(data_cfg, split="test").images
    if args.train_vs_test:
        print(train_vs_test(args.train_vs_test, codec, data_cfg, test))
        return
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        rows.append(run_variant(name, VARIANTS[name], args, codec, test, device))
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f.format(**r) for _, f in COLUMNS) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(args.outdir / "rgb.md", "# RGB photo benchmark\n\n" + table + "\n")


if __name__ == "__main__":
    main()
