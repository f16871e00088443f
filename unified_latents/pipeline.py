"""Library entry points behind the CLI: build, train, load and evaluate models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import dist
from .config import RunConfig, from_dict, to_dict
from .data import LatentData, encode_images, eval_source, load_images, load_latents, save_latents, to_float
from .errors import ArtifactError, ConfigError, UserError
from .eval import evaluate_reconstruction, psnr, save_grid, save_png, save_previews, save_strip
from .objectives import BaseModel, UnifiedLatents, encoder_fingerprint
from .objectives.pixel import PixelSpace
from .training import TrainResult, load_artifact, train

PREVIEW_COUNT = 8
STAGES = ("latents", "base", "pixel")


def build_model(cfg: RunConfig, stage1: UnifiedLatents | None = None):
    if cfg.stage == "latents":
        return UnifiedLatents(cfg)
    if cfg.stage == "base":
        if stage1 is None:
            raise ConfigError("stage 'base' needs a stage-1 artifact; pass --artifact runs/.../artifact.safetensors")
        return BaseModel(cfg, stage1)
    if cfg.stage == "pixel":  # the pixel-diffusion baseline: the base model on the pixels themselves
        return BaseModel(cfg, PixelSpace(cfg))
    raise ConfigError(f"unknown stage {cfg.stage!r}; choose one of: {', '.join(STAGES)}")


def _config(d: dict, path: Path) -> RunConfig:
    try:
        return from_dict(d)
    except UserError as e:
        raise ArtifactError(f"{path}: its config does not match this version of unified-latents ({e})") from None


def artifact_config(path: Path) -> RunConfig:
    return _config(load_artifact(path)[1], path)


def load_model(path: Path, device: torch.device | str = "cpu", stage: str | None = None):
    """Artifact -> (EMA model in eval mode, its resolved config)."""

    tensors, cfg_dict, meta = load_artifact(path)
    cfg = _config(cfg_dict, path)
    wanted = {"base": ("base", "pixel")}.get(stage, (stage,))  # a pixel-diffusion model generates like a base model
    if stage is not None and cfg.stage not in wanted:
        raise ArtifactError(f"{path} is a '{cfg.stage}' artifact; this command needs a '{stage}' one")
    stage1 = None
    if cfg.stage == "base":
        if "stage1_config" not in meta:
            raise ArtifactError(f"{path}: base artifact without its stage-1 config; re-export it with `ul train --stage base`")
        stage1 = UnifiedLatents(_config(json.loads(meta["stage1_config"]), path))
    model = build_model(cfg, stage1)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not fit the network its config describes ({str(e)[:200]})") from None
    return model.to(device).eval(), cfg


def train_stage(
    cfg: RunConfig, outdir: Path, device: torch.device, progress: bool | None = None, until: int | None = None
) -> TrainResult:
    if cfg.stage == "base":
        return _train_base(cfg, Path(outdir), device, progress, until)
    data = load_images(cfg.data)
    if data.skipped:
        dist.print0(f"skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}")
    try:
        src, split = eval_source(cfg.data)
        held = load_images(cfg.data, src, split)
    except UserError:
        held = data  # no held-out set configured: preview training images
    preview_x = to_float(held.images[: PREVIEW_COUNT // 2 if cfg.data.frames else PREVIEW_COUNT])
    return train(cfg, outdir, lambda: build_model(cfg), data, preview_x, save_previews, f"ul-{cfg.stage}", device, progress, until)


def _with_scale(model: BaseModel, scale: float) -> BaseModel:
    model.latent_scale.fill_(scale)
    return model


def latents_for(stage1: UnifiedLatents, cfg: RunConfig, cache: Path, device, progress: bool | None = None) -> LatentData:
    """The training data's z_clean: from cfg.base.latents, or encoded once and cached at `cache`."""
    fp = encoder_fingerprint(stage1)
    if cfg.base.latents:
        return load_latents(Path(cfg.base.latents), fp)
    if cache.exists():
        try:
            return load_latents(cache, fp)
        except UserError:
            pass  # made by another encoder: encode again
    data = load_images(cfg.data)
    dist.print0(f"encoding {len(data):,} images with the frozen encoder ...")
    batch = 32 if stage1.dims == 3 else 500
    lat = LatentData(encode_images(stage1, data.images, batch, device=device, progress=progress is not False), data.labels)
    if dist.is_main():
        save_latents(cache, lat, fp, cfg.data.source)
    dist.barrier()
    return lat


def encode(artifact: Path, data: str | None, dest: Path, device="cpu", progress: bool = True) -> Path:
    """`ul encode`: cache z_clean (and labels) of a dataset with the frozen EMA encoder."""
    stage1, cfg = load_model(artifact, device, stage="latents")
    images = load_images(cfg.data, data) if data else load_images(cfg.data)
    batch = 32 if stage1.dims == 3 else 500
    lat = LatentData(encode_images(stage1, images.images, batch, device=device, progress=progress), images.labels)
    dest = Path(dest)
    if dest.suffix != ".safetensors":
        dest = dest / "latents.safetensors"
    save_latents(dest, lat, encoder_fingerprint(stage1), data or cfg.data.source)
    return dest


def _train_base(cfg: RunConfig, outdir: Path, device, progress, until) -> TrainResult:
    if not cfg.base.stage1_artifact:
        raise ConfigError("stage 'base' needs the stage-1 artifact: pass --artifact runs/.../artifact.safetensors")
    stage1, _ = load_model(Path(cfg.base.stage1_artifact), device, stage="latents")
    if dist.is_main():
        outdir.mkdir(parents=True, exist_ok=True)
    lat = latents_for(stage1, cfg, outdir / "latents.safetensors", device, progress)
    if cfg.data.num_classes and lat.labels is None:
        dist.print0("the data has no labels: training an unconditional base model")
    scale = 1.0 / float(lat.latents.std()) if cfg.base.scale_latents else 1.0
    if cfg.base.scale_latents:
        dist.print0(f"latent scale factor 1/std = {scale:.4g} (base.scale_latents; UL itself never rescales)")
    return train(cfg, outdir, lambda: _with_scale(build_model(cfg, stage1.cpu()), scale), lat, _held_latents(stage1, cfg, lat, device),
                 save_previews, "ul-base", device, progress, until)


def _held_latents(stage1: UnifiedLatents, cfg: RunConfig, lat: LatentData, device) -> torch.Tensor:
    """Latents for stage-2 previews: held-out clips for video (continuations of unseen clips),
    else the first training latents."""
    if stage1.dims == 3:
        try:
            src, split = eval_source(cfg.data)
            held = load_images(cfg.data, src, split).images[: PREVIEW_COUNT // 2]
            return encode_images(stage1, held, 32, device=device).cpu()
        except UserError:
            pass
    return lat.latents[:PREVIEW_COUNT]


def base_config(preset: RunConfig, stage1_artifact: Path) -> RunConfig:
    """A stage-2 config: the preset's base model and training, the stage-1 run's data."""
    s1 = artifact_config(stage1_artifact)
    cfg = from_dict({**to_dict(preset), "stage": "base", "data": to_dict(s1.data)})
    cfg.base.stage1_artifact = str(stage1_artifact)
    return cfg


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
    metrics, recs = evaluate_reconstruction(model, images, cfg.data.pad, batch=16 if images.ndim == 5 else 250,
                                            steps=steps, sampler=sampler, device=device, progress=progress)
    if out is not None:
        if images.ndim == 5:  # video: rows of frames, originals first
            k = min(4, images.shape[0])
            save_strip(torch.cat([images[:k], recs[:k]]), out)
        else:
            k = min(16, images.shape[0])
            save_grid(torch.cat([images[:k], recs[:k]]), out, nrow=k, scale=2)
    return metrics


def run_pipeline(preset: str, overrides: list[str], outdir: Path, device: torch.device, samples: int | None = None,
                 recon: int | None = None, ref_count: int | None = None, inception: str | None = None,
                 progress: bool | None = None, i3d: str | None = None) -> Path:
    """The main job: stage 1, stage 2, sampling and evaluation, then a Markdown report. Each
    step resumes, or is skipped when its output is already there: rerunning continues the job.
    Works on images and on video (a preset with data.frames > 0; counts are then in clips)."""

    from .config import apply_overrides, get_preset
    from .eval.fid import find_inception
    from .eval.report import plot_curves, read_stats, write_report
    from .training.checkpoint import atomic_write_text

    outdir = Path(outdir)
    find_inception(inception)  # fail now, not after half an hour of training
    if i3d:
        from .eval.fvd import find_i3d

        find_i3d(i3d)
    times = {}
    t0 = time.time()
    cfg1 = apply_overrides(get_preset(preset, "latents"), overrides)
    video = cfg1.data.frames > 0
    samples, recon, ref_count = eval_counts(video, samples, recon, ref_count)
    res1 = train_stage(cfg1, outdir / "latents", device, progress)
    times["stage 1"] = time.time() - t0
    t0 = time.time()
    cfg2 = apply_overrides(base_config(get_preset(preset, "base"), res1.artifact), overrides)
    res2 = train_stage(cfg2, outdir / "base", device, progress)
    times["stage 2"] = time.time() - t0
    t0 = time.time()
    eval_path = outdir / "eval.json"
    want = {"samples": samples, "recon": recon, "ref_count": ref_count, "stage1": res1.samples, "base": res2.samples,
            "i3d": i3d or ""}
    ev = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    if ev.get("request") != want:
        what = "clips" if video else "images"
        dist.print0(f"evaluating: {samples} samples, {recon} reconstructions, {ref_count} reference {what} ...")
        ev = evaluate(res2.artifact, samples, recon, ref_count, inception, device, progress is not False, outdir,
                      i3d=i3d)
        ev["request"] = want
        atomic_write_text(eval_path, json.dumps(ev, indent=2))
    times["evaluation"] = time.time() - t0
    plot_curves(read_stats(outdir / "latents" / "stats.jsonl"), outdir / "curves-latents.png", "stage 1 (latents)")
    plot_curves(read_stats(outdir / "base" / "stats.jsonl"), outdir / "curves-base.png", "stage 2 (base model)")
    write_report(outdir / "report.md", "Unified Latents run report", _report_sections(ev, cfg1, res1, res2, times))
    return outdir / "report.md"


def _latent_frames(k: int) -> str:
    return "latent frame 0" if k == 1 else f"latent frames 0-{k - 1}"


def _report_sections(ev: dict, cfg1: RunConfig, res1, res2, times: dict) -> list[tuple[str, str]]:
    from .eval.report import format_metrics, table

    f, video = ev["flops"], ev.get("video", False)
    side = cfg1.data.resolution - 2 * cfg1.data.pad
    per, bpp = ("clip", "bits/pixel/frame") if video else ("image", "bits/pixel")
    fid = "frame FID (Inception pool3, every frame)" if video else "gFID (Inception pool3)"
    unit = "clips" if video else "samples"
    rows = [(fid, f"{ev['gfid']:.2f} ({ev['gfid_samples']} {unit} vs {ev['reference_images']} {ev['reference']})"),
            ("KID x 1e3", f"{ev['kid'] * 1e3:.2f} +- {ev['kid_std'] * 1e3:.2f}")]
    if video:
        rows.append(("FVD", f"{ev['fvd']:.2f} ({ev['fvd_samples']} clips)" if "fvd" in ev
                     else "not computed: no I3D weights given (`--i3d PATH`)"))
    if "continuation_psnr" in ev:
        rows.append(("continuation PSNR (generated frames vs real)",
                     f"{ev['continuation_psnr']:.2f} dB (frames {ev['generated_from_frame']}-{cfg1.data.frames - 1} of "
                     f"{ev['continuation_clips']} clips, {ev['context_frames']} context frames)"))
    if "rfid" in ev:
        rows += [
            ("rFID" + (" (per frame)" if video else ""), f"{ev['rfid']:.2f} ({ev['rfid_samples']} reconstructions)"),
            ("reconstruction PSNR / SSIM", f"{ev['psnr']:.2f} dB / {ev['ssim']:.4f} (original {side}x{side} pixels"
             + (", per frame)" if video else ")")),
            ("latent bitrate, stage-1 prior", f"{ev['prior_bits_per_image']:.1f} bits/{per} ({ev['prior_bpp']:.4f} {bpp})"),
            ("latent bitrate, base model (unweighted ELBO)",
             f"{ev['base_bits_per_image']:.1f} bits/{per} ({ev['base_bpp']:.4f} {bpp})"),
        ]
    rows += [
        ("final loss factor c_lf", f"{res1.metrics.get('loss_factor', float('nan')):.3g}"),
        ("FLOPs / training sample: stage 1, base", f"{f['stage1_train_per_sample'] / 1e6:.1f} M, {f['base_train_flops'] / 1e6:.1f} M"),
        ("FLOPs / generated sample", f"{f['generate_flops'] / 1e6:.1f} M ({ev['sampling']['base_steps']} base + "
         f"{ev['sampling']['decoder_steps']} decoder {ev['sampling']['sampler']} steps)"),
        ("samples seen: stage 1, stage 2", f"{res1.samples:,}, {res2.samples:,}"),
    ]
    rows += [(f"wall time this invocation: {k}", f"{v / 60:.1f} min") for k, v in times.items() if v > 5]
    if video:
        samples_text = "Unconditional clips, one row of frames per clip (time runs left to right).\n\n![samples](samples.png)"
        recon_text = ("Top rows: held-out clips. Bottom rows: their reconstructions (decoder samples given z0).\n\n"
                      "![reconstructions](reconstructions.png)")
    elif cfg1.data.num_classes and cfg1.data.source == "fmnist":
        samples_text = ("Class-conditional samples, one column per class (Fashion-MNIST: T-shirt, trouser, pullover, "
                        "dress, coat, sandal, shirt, sneaker, bag, ankle boot).\n\n![samples](samples.png)")
        recon_text = "Top: held-out originals. Bottom: decoder samples given z0 (fresh noise).\n\n![reconstructions](reconstructions.png)"
    else:
        samples_text = "Generated samples.\n\n![samples](samples.png)"
        recon_text = "Top: held-out originals. Bottom: decoder samples given z0 (fresh noise).\n\n![reconstructions](reconstructions.png)"
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


# ----------------------------------------------------------------------------- generation


def parse_seeds(spec: str) -> list[int]:
    """'0-63' or '0,5,9' or '0-9,100-109' -> list of seeds."""
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.strip().split("-", 1)
                seeds += list(range(int(lo), int(hi) + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"cannot read seeds {spec!r}; write them like 0-63 or 0,5,9") from None
    if not seeds:
        raise UserError(f"no seeds in {spec!r}; write them like 0-63")
    return seeds


def class_labels(seeds: list[int], classes: str | None, num_classes: int) -> torch.Tensor | None:
    """Labels per seed: None/'' -> seed % classes; 'random' -> drawn from the seed; '3,5' -> cycled;
    'none' -> unconditional."""
    if not num_classes or classes == "none":
        return None
    if not classes:
        return torch.tensor([s % num_classes for s in seeds])
    if classes == "random":
        return torch.tensor([int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s))) for s in seeds])
    try:
        chosen = [int(c) for c in classes.split(",")]
    except ValueError:
        raise UserError(f"cannot read classes {classes!r}; give indices like 3 or 0,1,2, or 'random'") from None
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} is out of range; this model has classes 0..{num_classes - 1}")
    return torch.tensor([chosen[i % len(chosen)] for i in range(len(seeds))])


@torch.no_grad()
def generate_images(model: BaseModel, seeds: list[int], labels: torch.Tensor | None, batch: int = 250,
                    progress: bool = False, context: tuple[torch.Tensor, int] | None = None, **kw) -> torch.Tensor:
    """uint8 [N, C, H, W] (video: [N, C, T, H, W]); sample k depends only on seeds[k], labels[k]
    and, for video continuations, context[0][k] (latents of its context frames), never on the batch."""
    from tqdm import tqdm

    from .data import to_uint8

    device = next(model.net.parameters()).device
    out = []
    for i in tqdm(range(0, len(seeds), batch), desc="sampling", unit="batch", disable=not progress, leave=False):
        lab = labels[i : i + batch].to(device) if labels is not None else None
        ctx = None if context is None else (context[0][i : i + batch], context[1])
        out.append(to_uint8(model.generate(seeds[i : i + batch], lab, context=ctx, **kw)).cpu())
    return torch.cat(out)


def load_context(model: BaseModel, cfg: RunConfig, source: str, count: int, frames: int, device="cpu"):
    """Context clips for `ul sample --context`: `source` is a video file, a folder of videos, an
    .npz/.npy of clips, or 'test' (the model's held-out clips). Returns (clips uint8 [count, ...]
    cycled over what the source holds, (z_clean, known latent frames))."""
    from .data import to_float

    s1cfg = model.stage1.cfg
    if source == "test":
        src, split = eval_source(s1cfg.data)
        clips = load_images(s1cfg.data, src, split).images
    else:
        clips = load_images(s1cfg.data, source, "test").images
    clips = clips[torch.arange(count) % clips.shape[0]]
    z = []
    k = 0
    for i in range(0, count, 16):
        zi, k = model.encode_context(to_float(clips[i : i + 16]).to(device), frames)
        z.append(zi.cpu())
    return clips, (torch.cat(z), k)


def sample(artifact: Path, seeds: list[int], outdir: Path, classes: str | None = None, batch: int = 250,
           npz: bool = False, device="cpu", progress: bool = True, context: str | None = None,
           context_frames: int = 5, fps: int = 8, **kw) -> dict[str, Path]:
    """`ul sample`: a PNG grid plus individual PNGs (or one .npz) of the given seeds. Video: one
    MP4 per seed and a PNG strip (a row of frames per clip); with `context`, each clip continues
    the first `context_frames` frames of a context clip (strip rows: context clip, continuation)."""

    from .data import crop_pad, write_mp4
    from .training.checkpoint import atomic_write

    model, cfg = load_model(artifact, device, stage="base")
    video = model.stage1.dims == 3
    if context and not video:
        raise UserError("--context needs a video base model; this artifact generates images")
    labels = class_labels(seeds, classes, model.num_classes)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pad = cfg.data.pad
    if video:
        ctx_clips, ctx = (None, None)
        if context:
            ctx_clips, ctx = load_context(model, cfg, context, len(seeds), context_frames, device)
        clips = crop_pad(generate_images(model, seeds, labels, min(batch, 16), progress, context=ctx, **kw), pad)
        paths = {"strip": outdir / "strip.png"}
        shown = clips[:16]
        if ctx_clips is not None:
            shown = torch.stack([crop_pad(ctx_clips[:8], pad), clips[:8]], dim=1).flatten(0, 1)
        save_strip(shown, paths["strip"], scale=1)
        if npz:
            paths["npz"] = outdir / "samples.npz"
            arrays = {"videos": clips.permute(0, 2, 3, 4, 1).numpy(), "seeds": np.array(seeds)}
            atomic_write(paths["npz"], lambda tmp: _savez(tmp, arrays))
        else:
            for s, c in zip(seeds, clips):
                write_mp4(c, outdir / f"{s:06d}.mp4", fps=fps)
            paths["mp4"] = outdir / f"{seeds[0]:06d}.mp4"
        return paths
    imgs = crop_pad(generate_images(model, seeds, labels, batch, progress, **kw), pad)
    paths = {"grid": outdir / "grid.png"}
    nrow = model.num_classes if (labels is not None and not classes and len(seeds) >= model.num_classes) else None
    save_grid(imgs, paths["grid"], nrow=nrow, scale=2)
    if npz:
        paths["npz"] = outdir / "samples.npz"
        arrays = {"images": imgs.permute(0, 2, 3, 1).numpy(), "seeds": np.array(seeds)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        atomic_write(paths["npz"], lambda tmp: _savez(tmp, arrays))
    else:
        for s, im in zip(seeds, imgs):
            save_png(im.permute(1, 2, 0).numpy(), outdir / f"{s:06d}.png")
    return paths


def _savez(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:  # np.savez would append ".npz" to a temp name without one
        np.savez(f, **arrays)


# ----------------------------------------------------------------------------- evaluation


VIDEO_EVAL_COUNTS = (64, 32, 64)  # video defaults for (samples, recon, ref_count), in clips of 16 frames
IMAGE_EVAL_COUNTS = (2000, 500, 2000)


def eval_counts(video: bool, samples: int | None, recon: int | None, ref_count: int | None) -> tuple[int, int, int]:
    """Fill unset sample counts with the defaults for images or video clips."""
    d = VIDEO_EVAL_COUNTS if video else IMAGE_EVAL_COUNTS
    return tuple(v if v is not None else dv for v, dv in zip((samples, recon, ref_count), d))


def evaluate(artifact: Path, samples: int | None = None, recon: int | None = None, ref_count: int | None = None,
             inception: str | None = None,
             device="cpu", progress: bool = True, out: Path | None = None, guidance: float | None = None,
             i3d: str | None = None, context_frames: int = 5, base_steps: int | None = None,
             decoder_steps: int | None = None, sampler: str | None = None) -> dict:
    """gFID/KID of generated samples and rFID/PSNR/SSIM of reconstructions against held-out
    images (Inception pool3, float64 statistics), latent bitrates of the stage-1 prior and the
    base model (unweighted ELBO), and FLOPs. Every figure carries its sample count.

    Video: `samples`, `recon` and `ref_count` count clips; FID is per frame (every frame of
    every clip through Inception), bits per pixel are per pixel per frame, FVD is added when
    an I3D network is given (`i3d`), and context-frame continuations of held-out clips are
    scored by PSNR of the generated frames against the real ones."""

    from .data import crop_pad, frames_of
    from .eval.fid import InceptionFeatures, fid_from_features, kid, reference_features
    from .eval.flops import generation_report, stage1_report
    from .training.checkpoint import atomic_write_text

    model, cfg = load_model(artifact, device, stage="base")
    # model.cfg is this object: sampling and FLOPs both see these
    for key, value in (("guidance", guidance), ("base_steps", base_steps), ("decoder_steps", decoder_steps),
                       ("sampler", sampler)):
        if value is not None:
            setattr(cfg.sample, key, value)
    dec = {"decoder_steps": cfg.sample.decoder_steps, "sampler": cfg.sample.sampler}  # the decoder's, passed on
    s1, s1cfg = model.stage1, model.stage1.cfg
    video = s1.dims == 3
    samples, recon, ref_count = eval_counts(video, samples, recon, ref_count)
    fvd_net = None
    if video and i3d:
        from .eval.fvd import I3DFeatures

        fvd_net = I3DFeatures(i3d, device)  # fails now, with where to get the weights, if missing
    net = InceptionFeatures(inception, device)  # fails early, with the fix, if the weights are missing
    src, split = eval_source(s1cfg.data)
    held = load_images(s1cfg.data, src, split)
    pad = s1cfg.data.pad
    frames = frames_of if video else (lambda x: x)
    ref_count = min(ref_count, len(held))
    key = json.dumps([src, split, ref_count, s1cfg.data.resolution, s1cfg.data.channels, pad, str(inception),
                      s1cfg.data.frames, s1cfg.data.frame_stride, s1cfg.data.clips if video else 0])
    ref = reference_features(key, lambda: frames(crop_pad(held.images[:ref_count], pad)), net, progress)
    unit = "clips" if video else "samples"
    res: dict = {"reference_images": ref_count, "reference": f"{src}:{split}", "video": video, "unit": unit,
                 "frames": s1cfg.data.frames}

    seeds = list(range(samples))
    labels = class_labels(seeds, None, model.num_classes)
    gen = crop_pad(generate_images(model, seeds, labels, batch=16 if video else 250, progress=progress, **dec), pad)
    gfeat = net(frames(gen), progress=progress, desc="sample features")
    res.update(gfid=fid_from_features(gfeat, ref), gfid_samples=samples)
    res["kid"], res["kid_std"] = kid(gfeat, ref, subset_size=min(1000, gfeat.shape[0], ref.shape[0]))
    if fvd_net is not None:
        real = fvd_net(crop_pad(held.images[:ref_count], pad), progress=progress, desc="I3D real")
        fake = fvd_net(gen, progress=progress, desc="I3D generated")
        res.update(fvd=fid_from_features(fake, real), fvd_samples=samples)
    if out is not None:
        if video:
            save_strip(gen[:8], Path(out) / "samples.png")
        else:
            save_grid(gen[: 10 * min(10, max(1, samples // 10))], Path(out) / "samples.png",
                      nrow=10 if labels is not None else None, scale=2)

    if video and model.context and recon:
        res.update(_continuations(model, held.images[:recon], pad, context_frames, device, progress, out, dec))
    if cfg.stage == "pixel":  # no latents: nothing to reconstruct; the ELBO is a bound on the pixels' bits
        n = min(500, len(held))
        bits = model.bits(encode_images(s1, held.images[:n]).to(device), None if held.labels is None or not model.num_classes
                          else held.labels[:n].to(device), list(range(n))).cpu()
        res.update(pixel_bits_per_image=float(bits.mean()), pixel_bpp=float(bits.mean()) / s1.pixels_per_image(),
                   pixel_bits_images=n)
        recon = 0
    if recon:
        rm, recs = evaluate_reconstruction(s1, held.images[:recon], pad, batch=16 if video else 250, steps=dec["decoder_steps"],
                                           sampler=dec["sampler"], device=device,
                                           progress=progress)
        rfeat = net(frames(crop_pad(recs, pad)), progress=progress, desc="reconstruction features")
        res.update(rfid=fid_from_features(rfeat, ref), rfid_samples=recon, psnr=rm["psnr"], ssim=rm["ssim"],
                   prior_bits_per_image=rm["bits_per_image"], prior_bpp=rm["bpp"])
        z = encode_images(s1, held.images[:recon], batch=16 if video else 500, device=device)
        lab = held.labels[:recon].to(device) if (held.labels is not None and model.num_classes) else None
        base_bits = model.bits(z.to(device), lab, list(range(recon))).cpu()
        res.update(base_bits_per_image=float(base_bits.mean()), base_bpp=float(base_bits.mean()) / s1.pixels_per_image())
        if out is not None:
            if video:
                k = min(4, recon)
                save_strip(torch.cat([crop_pad(held.images[:k], pad), crop_pad(recs[:k], pad)]),
                           Path(out) / "reconstructions.png")
            else:
                save_grid(torch.cat([crop_pad(held.images[:10], pad), crop_pad(recs[:10], pad)]),
                          Path(out) / "reconstructions.png", nrow=10, scale=2)
    with torch.device("meta"):
        meta_s1 = PixelSpace(cfg) if cfg.stage == "pixel" else UnifiedLatents(s1cfg)
        meta_base = BaseModel(cfg, meta_s1)
    sc = cfg.sample
    pixel = cfg.stage == "pixel"
    res["stage"] = cfg.stage
    res["flops"] = {"stage1_train_per_sample": 0 if pixel else stage1_report(meta_s1)["total"]["train_flops"],
                    **generation_report(meta_base, sc.guidance, sc.base_steps, 0 if pixel else sc.decoder_steps)}
    res["sampling"] = {"sampler": sc.sampler, "base_steps": sc.base_steps, "decoder_steps": sc.decoder_steps,
                       "guidance": sc.guidance, "guidance_interval": sc.guidance_interval}
    if out is not None:
        atomic_write_text(Path(out) / "eval.json", json.dumps(res, indent=2))
    return res


def _continuations(model: BaseModel, clips: torch.Tensor, pad: int, context_frames: int, device, progress, out,
                   dec: dict | None = None) -> dict:
    """Continue held-out clips from their first `context_frames` frames; PSNR of the frames the
    model generated against the real ones (a stochastic continuation: this measures how far the
    motion is carried, not a reconstruction)."""
    from .data import crop_pad, to_float, to_uint8

    gens = []
    for i in range(0, clips.shape[0], 16):
        x = to_float(clips[i : i + 16]).to(device)
        z, k = model.encode_context(x, context_frames)
        seeds = list(range(i, i + x.shape[0]))
        gens.append(to_uint8(model.generate(seeds, None, context=(z, k), **(dec or {}))).cpu())
    gen = crop_pad(torch.cat(gens), pad)
    real = crop_pad(clips, pad)
    first = k * model.frames_per_latent()  # frames whose latents were generated
    p = psnr(real[:, :, first:].transpose(1, 2).flatten(0, 1), gen[:, :, first:].transpose(1, 2).flatten(0, 1))
    if out is not None:
        n = min(4, clips.shape[0])
        rows = torch.stack([real[:n], gen[:n]], dim=1).flatten(0, 1)  # real, continuation, real, ...
        save_strip(rows, Path(out) / "continuations.png")
    return {"continuation_psnr": float(p.mean()), "continuation_clips": int(clips.shape[0]),
            "context_frames": context_frames, "context_latent_frames": k, "generated_from_frame": first}


# ----------------------------------------------------------------------------- sweeps


def run_sweep(preset: str, overrides: list[str], loss_factors: list[float], outdir: Path, device, samples: int = 2000,
              recon: int = 500, ref_count: int = 2000, inception: str | None = None, progress: bool | None = None) -> Path:
    """The paper's Table 2 on this data: one full pipeline per fixed loss factor (controller
    off), each resumable and skipped when finished, then a table and a rate-distortion plot."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .eval.report import write_report
    from .training.checkpoint import atomic_write

    outdir = Path(outdir)
    rows = []
    for lf in loss_factors:
        run = outdir / f"lf-{lf:g}"
        dist.print0(f"== loss factor {lf:g}: {run}")
        over = [*overrides, "diffusion.target_bits=0", f"diffusion.loss_factor={lf}"]
        run_pipeline(preset, over, run, device, samples, recon, ref_count, inception, progress)
        ev = json.loads((run / "eval.json").read_text())
        rows.append((lf, ev))
    head = "| loss factor | bits/pixel | bits/image | PSNR (dB) | rFID | gFID |\n|---|---|---|---|---|---|"
    lines = [f"| {lf:g} | {e['prior_bpp']:.4f} | {e['prior_bits_per_image']:.1f} | {e['psnr']:.2f} | {e['rfid']:.2f} | "
             f"{e['gfid']:.2f} |" for lf, e in rows]
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
    atomic_write(outdir / "rate-distortion.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    e0 = rows[0][1]
    note = (f"gFID: {e0['gfid_samples']} samples vs {e0['reference_images']} {e0['reference']} images; "
            f"rFID and PSNR: {e0['rfid_samples']} reconstructions.")
    write_report(outdir / "sweep.md", "Loss-factor sweep (the paper's Table 2 on this data)",
                 [("Table", head + "\n" + "\n".join(lines) + "\n\n" + note), ("Rate-distortion", "![rd](rate-distortion.png)")])
    return outdir / "sweep.md"
