"""Evaluation of a base-model artifact: gFID/KID (and FVD) of generated samples, rFID/PSNR/SSIM
of reconstructions against held-out data (Inception pool3, float64 statistics), latent bitrates
of the stage-1 prior and the base model (unweighted ELBO), and FLOPs. Every figure carries its
sample count. Video: counts are clips, FID is per frame, bits per pixel are per pixel per frame,
and context-frame continuations of held-out clips are scored by PSNR against the real frames."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..config import SampleConfig
from ..data import ImageData, crop_pad, load_images, named_by_artifact, to_float, to_uint8
from ..data.fingerprint import data_fingerprint
from ..data.grids import save_strip
from ..data.modality import Modality
from ..data.prepared import RowRange
from ..files import atomic_write_text
from ..generate import class_labels, generate_images
from ..objectives import BaseModel, UnifiedLatents
from ..objectives.registry import build_meta_stages, load_model
from ..runlock import holding
from ..training.posthoc_ema import apply_ema_length
from .fid import InceptionFeatures, feature_cache, fid_from_features, kid, read_features, write_features
from .flops import generation_report, stage1_report
from .metrics import psnr
from .reconstruct import reconstruct_rows, summarise
from .results import (
    ContinuationScores,
    EvalRequest,
    EvalResult,
    FlopCounts,
    PixelBits,
    ReconstructionScores,
    Reference,
    SampleScores,
)


@dataclass
class _Context:
    """What every part of one evaluation shares."""

    model: BaseModel
    req: EvalRequest
    sc: SampleConfig  # the sampling settings in force (the artifact's, with the request's overrides)
    held: ImageData
    ref: np.ndarray  # reference Inception features [N, 2048]
    net: InceptionFeatures

    @property
    def m(self) -> Modality:
        return self.model.modality

    @property
    def pad(self) -> int:
        return self.model.stage1.cfg.data.pad

    @property
    def batch(self) -> int:
        """Examples per generation or reconstruction call: the request's, the config's, the data's."""
        return self.req.batch or self.model.cfg.eval.batch or self.m.batch

    @property
    def encode_batch(self) -> int:
        return self.req.batch or self.model.cfg.eval.batch or self.m.eval_encode_batch


def eval_counts(m: Modality, samples: int | None, recon: int | None, ref_count: int | None) -> tuple[int, int, int]:
    """Fill unset counts with the modality's defaults (images, or clips)."""
    ds, dr, dc = m.eval_counts
    return (ds if samples is None else samples, dr if recon is None else recon, dc if ref_count is None else ref_count)


@holding(lambda a: a["request"].out and Path(a["request"].out) / "eval.json", "ul eval", beside=True)
def evaluate_artifact(artifact: Path, request: EvalRequest) -> dict:
    """`ul eval`: load a base (or pixel) artifact and evaluate it; the eval.json record."""
    model, _ = load_model(artifact, request.device, stage="base")
    if request.ema_length is None:
        return evaluate(model, request).to_dict()
    posthoc = apply_ema_length(model, artifact, request.ema_length)
    return evaluate(model, request, posthoc).to_dict()


def evaluate(model: BaseModel, request: EvalRequest, posthoc: dict | None = None) -> EvalResult:
    """Under torchrun, generation and its features are split over the processes (seed k is the
    same sample whatever their number); the rest runs on every process alike; rank 0 writes."""
    m, cfg = model.modality, model.cfg
    if not dist.is_main():
        request = dataclasses.replace(request, out=None, progress=False)
    fvd_net = None
    if request.i3d and m.has_fvd:
        from .fvd import I3DFeatures

        fvd_net = I3DFeatures(
            request.i3d, request.device, request.trust_torchscript
        )  # fails now, with where to get the weights, if missing
    ctx, reference, (samples, recon, ref_count) = eval_context(model, request)
    scores = eval_samples(ctx, samples, ref_count, fvd_net)
    cont = eval_continuations(ctx, recon) if (model.context and recon) else None
    pixel = None
    if cfg.stage == "pixel":  # no latents: nothing to reconstruct; the ELBO is a bound on the pixels' bits
        n = min(500, len(ctx.held))
        bits, bpp = eval_bits(ctx, n)
        pixel, recon = PixelBits(bits, bpp, n), 0
    recs = eval_reconstructions(ctx, recon) if recon else None
    res = EvalResult(reference, scores, cont, pixel, recs, cfg.stage, eval_flops(model, ctx.sc), ctx.sc, posthoc)
    if request.out is not None:
        atomic_write_text(Path(request.out) / "eval.json", json.dumps(res.to_dict(), indent=2))
    return res


def eval_context(model: BaseModel, request: EvalRequest) -> tuple[_Context, Reference, tuple[int, int, int]]:
    """What every part of an evaluation shares (the held-out data, Inception, the reference
    features), the reference's description, and the counts (samples, recon, ref_count) in force."""
    m, s1cfg = model.modality, model.stage1.cfg
    samples, recon, ref_count = eval_counts(m, request.samples, request.recon, request.ref_count)
    sc = dataclasses.replace(model.cfg.sample, **request.sampling)
    net = InceptionFeatures(
        request.inception, request.device, request.trust_torchscript, request.fid_resize
    )  # fails early, with the fix, if the weights are missing
    src, split = named_by_artifact(s1cfg.data)
    held = load_images(s1cfg.data, src, split)
    ref_count = min(ref_count, len(held))
    recon = min(recon, len(held))  # a held-out set smaller than asked for is used whole (eval.json says how many)
    d = s1cfg.data
    # the reference features are keyed on content (the held-out data's fingerprint, the network file's
    # hash) and on how they were computed (resize, device type and precision)
    key = dist.broadcast_object(
        dist.on_main(
            lambda: json.dumps([data_fingerprint(d, src, split), ref_count, net.sha256, net.resize, net.precision]),
            "fingerprinting the held-out data",
        )
    )
    ctx = _Context(model, request, sc, held, np.empty((0, 2048)), net)  # the reference features come next
    ctx.ref = eval_reference(ctx, key, ref_count)
    reference = Reference(ref_count, f"{src}:{split}", m.video, m.samples, d.frames, net.resize)
    return ctx, reference, (samples, recon, ref_count)


def eval_samples(ctx: _Context, samples: int, ref_count: int, fvd_net) -> SampleScores:
    """gFID and KID (and FVD) of `samples` generated examples, seeds 0..samples-1."""
    model, req, m = ctx.model, ctx.req, ctx.m
    lo, hi = dist.my_share(samples)  # this process's seeds
    seeds = list(range(lo, hi))
    labels = class_labels(list(range(samples)), None, model.num_classes)
    gen = (
        crop_pad(
            generate_images(
                model,
                seeds,
                labels[lo:hi] if labels is not None else None,
                batch=ctx.batch,
                progress=req.progress,
                decoder_steps=ctx.sc.decoder_steps,
                sampler=ctx.sc.sampler,
                **_base_kw(ctx),
            ),
            ctx.pad,
        )
        if hi > lo
        else torch.empty(0, dtype=torch.uint8)
    )
    gfeat = dist.gather_cat(_features(ctx, gen, 0, "sample features")).numpy()
    m_kid = kid_subset(gfeat.shape[0], ctx.ref.shape[0])
    k, k_std = kid(gfeat, ctx.ref, subsets=100, subset_size=m_kid)
    scores = SampleScores(fid_from_features(gfeat, ctx.ref), samples, k, k_std, m_kid)
    if fvd_net is not None:
        rlo, rhi = dist.my_share(ref_count)
        real = _gathered(fvd_net, crop_pad(ctx.held.images[rlo:rhi], ctx.pad), req.progress, "I3D real")
        fake = _gathered(fvd_net, gen, req.progress, "I3D generated")
        scores.fvd, scores.fvd_samples = fid_from_features(fake, real), samples
    head = dist.gather_cat(gen[: max(0, min(hi, 100) - lo)], everyone=False)  # the first 100, for the sheet
    if req.out is not None:  # rank 0 only
        assert head is not None  # rank 0 holds everyone's
        m.save_samples(head, Path(req.out) / "samples.png", samples, labels is not None)
    return scores


def eval_reference(ctx: _Context, key: str, count: int) -> np.ndarray:
    """Inception features of the first `count` held-out examples: from the feature cache, or
    computed split over the processes (each reading its rows a batch at a time) and cached by rank 0."""
    path = feature_cache(key)
    cached = read_features(path)
    if dist.all_agree(cached is not None):  # every process can read it (nodes may not share the cache folder)
        assert cached is not None  # this process's among them
        return cached
    lo, hi = dist.my_share(count)
    feats = dist.gather_cat(_features(ctx, RowRange(ctx.held.images, lo, hi), ctx.pad, "reference features")).numpy()
    dist.on_main(lambda: write_features(path, feats), f"writing {path}")
    return feats


def _features(ctx: _Context, rows, pad: int, desc: str) -> torch.Tensor:
    """Inception features [N, 2048] (float64) of uint8 rows, read a batch at a time: the `pad`
    border cropped, clips split into frames (N = clips x frames)."""
    if rows.shape[0] == 0:
        return torch.empty(0, 2048, dtype=torch.float64)
    batch = max(1, 50 // rows.shape[2]) if ctx.m.video else 50
    return torch.from_numpy(
        ctx.net(
            rows, batch=batch, progress=ctx.req.progress, desc=desc, transform=lambda x: ctx.m.frames(crop_pad(x, pad))
        )
    )


def kid_subset(n_gen: int, n_ref: int) -> int:
    """KID's subset size: the standard 1,000, or half the smaller set when that is smaller, so that
    the subsets differ and their spread says something (whole-set subsets would all be alike)."""
    return max(2, min(1000, n_gen // 2, n_ref // 2))


def _gathered(net, x: torch.Tensor, progress: bool, desc: str) -> np.ndarray:
    """Features of this process's examples, then everyone's in rank (= seed) order."""
    feats = (
        torch.from_numpy(net(x, progress=progress, desc=desc)) if x.shape[0] else torch.empty(0, 0, dtype=torch.float64)
    )
    return dist.gather_cat(feats).numpy()


def _base_kw(ctx: _Context) -> dict:
    sc = ctx.sc
    return {"steps": sc.base_steps, "guidance": sc.guidance, "interval": sc.guidance_interval}


def eval_continuations(ctx: _Context, count: int) -> ContinuationScores:
    """Continue held-out clips from their first `context_frames` frames; PSNR of the frames the
    model generated against the real ones (a stochastic continuation: this measures how far the
    motion is carried, not a reconstruction). Each process continues its share (seed k for clip k)."""
    model, frames, device = ctx.model, ctx.req.context_frames, ctx.req.device
    k = model.encode_context(to_float(ctx.held.images[:1]).to(device), frames)[1]  # checks frames, on every process
    first = k * model.frames_per_latent()  # frames whose latents were generated
    lo, hi = dist.my_share(count)
    clips, gens, ps = RowRange(ctx.held.images, lo, hi), [], []
    for i in range(0, clips.shape[0], ctx.batch):
        real = clips[i : i + ctx.batch]
        z, _ = model.encode_context(to_float(real).to(device), frames)
        seeds = list(range(lo + i, lo + i + real.shape[0]))
        gen = crop_pad(
            to_uint8(
                model.generate(
                    seeds,
                    None,
                    context=(z, k),
                    decoder_steps=ctx.sc.decoder_steps,
                    sampler=ctx.sc.sampler,
                    **_base_kw(ctx),
                )
            ).cpu(),
            ctx.pad,
        )
        real = crop_pad(real, ctx.pad)
        n = real.shape[0]
        ps.append(
            psnr(real[:, :, first:].transpose(1, 2).flatten(0, 1), gen[:, :, first:].transpose(1, 2).flatten(0, 1))
            .reshape(n, -1)
            .mean(1)
        )
        gens.append(gen[: max(0, 4 - lo - i)])
    p = dist.gather_cat(torch.cat(ps) if ps else torch.empty(0))
    head = dist.gather_cat(torch.cat(gens) if gens else torch.empty(0, dtype=torch.uint8), everyone=False)
    if ctx.req.out is not None:  # rank 0: the first 4 clips, each real row above its continuation
        assert head is not None
        n = head.shape[0]
        rows = torch.stack([crop_pad(ctx.held.images[:n], ctx.pad), head], dim=1).flatten(0, 1)
        save_strip(rows, Path(ctx.req.out) / "continuations.png")
    return ContinuationScores(float(p.mean()), count, frames, k, first)


def eval_bits(ctx: _Context, n: int, null_label: bool = False) -> tuple[float, float]:
    """(bits per example, bits per pixel) of the first n held-out examples' latents under the base
    model (unweighted ELBO; for the pixel baseline, of the pixels themselves), split over the
    processes; given each example's label, or with `null_label` the unconditional one."""
    model, held, device = ctx.model, ctx.held, ctx.req.device
    lo, hi = dist.my_share(n)
    bits = torch.empty(0)
    if hi > lo:
        rows, b = RowRange(held.images, lo, hi), ctx.encode_batch
        lab = held.labels[lo:hi].to(device) if (held.labels is not None and model.num_classes) else None
        if lab is not None and null_label:
            lab = torch.full_like(lab, model.num_classes)
        bits = torch.cat(
            [
                model.image_bits(
                    to_float(rows[i : i + b]).to(device),
                    None if lab is None else lab[i : i + b],
                    list(range(lo + i, min(lo + i + b, hi))),
                ).cpu()
                for i in range(0, hi - lo, b)
            ]
        )
    bits = dist.gather_cat(bits)
    return float(bits.mean()), float(bits.mean()) / model.stage1.pixels_per_image()


def eval_reconstructions(ctx: _Context, recon: int) -> ReconstructionScores:
    """rFID, PSNR/SSIM and the prior's bitrate of `recon` held-out reconstructions, and the base
    model's bitrate of their latents; each process reconstructs its share (seed k for example k)."""
    s1, req, pad = ctx.model.stage1, ctx.req, ctx.pad
    lo, hi = dist.my_share(recon)
    recs, ps, ss, bits = reconstruct_rows(
        s1,
        RowRange(ctx.held.images, lo, hi),
        pad,
        batch=ctx.batch,
        steps=ctx.sc.decoder_steps,
        sampler=ctx.sc.sampler,
        device=req.device,
        progress=req.progress,
        first=lo,
    )
    rfeat = dist.gather_cat(_features(ctx, recs, pad, "reconstruction features")).numpy()
    ps, ss, bits = dist.gather_cat(ps), dist.gather_cat(ss), dist.gather_cat(bits)  # every process's, in rank order
    rm = summarise(ps, ss, bits, s1.pixels_per_image())
    (base_bits, base_bpp), null = eval_bits(ctx, recon), None
    if ctx.model.num_classes and ctx.held.labels is not None:  # also without the labels: comparable with the prior's
        null = eval_bits(ctx, recon, null_label=True)
    rows = recon * (ctx.model.stage1.cfg.data.frames if ctx.m.video else 1)  # feature rows: frames for video
    if rows <= ctx.ref.shape[0]:  # rFID against the originals of these very reconstructions
        orig = ctx.ref[:rows]
    else:
        orig = dist.gather_cat(_features(ctx, RowRange(ctx.held.images, lo, hi), pad, "original features")).numpy()
    head = dist.gather_cat(recs[: max(0, min(hi, 10) - lo)], everyone=False)  # the first 10, for the picture
    if req.out is not None:  # rank 0 only
        assert head is not None
        ctx.m.save_reconstructions(
            crop_pad(ctx.held.images[: head.shape[0]], pad),
            crop_pad(head, pad),
            Path(req.out) / "reconstructions.png",
            10,
        )
    return ReconstructionScores(
        fid_from_features(rfeat, orig),
        recon,
        rm["psnr"],
        rm["ssim"],
        rm["bits_per_image"],
        rm["bpp"],
        base_bits,
        base_bpp,
        *(null or (None, None)),
    )


def eval_flops(model: BaseModel, sc: SampleConfig) -> FlopCounts:
    """FLOPs per training sample of both stages and per generated sample, counted on the meta device."""
    cfg = model.cfg
    meta_base = build_meta_stages(cfg, model.stage1.cfg)
    pixel = cfg.stage == "pixel"
    s1 = meta_base.stage1  # UnifiedLatents, or the pixel baseline's PixelSpace (nothing to train)
    s1_train = stage1_report(s1)["total"]["train_flops"] if isinstance(s1, UnifiedLatents) else 0
    gen = generation_report(meta_base, sc.guidance, sc.base_steps, 0 if pixel else sc.decoder_steps)
    return FlopCounts(s1_train, **gen)
