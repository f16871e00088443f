"""One-command GPU check: every CUDA path of the package once, and the numbers that say how well
a GPU is used. Sized for one H100 and under 8 minutes.

On a GPU machine, from the repository root (nothing to install beyond the package's requirements):

    mkdir -p OUTDIR && python benchmarks/gpu_check.py --out OUTDIR 2>OUTDIR/log
    torchrun --nproc_per_node=1 benchmarks/gpu_check.py --out OUTDIR    # the same, in torchrun's NCCL group

Sections start until --deadline (330 s by default), which leaves the last one started time to
finish inside 8 minutes; `timeout 470` in front guards the total (lines already written stay).

Each section prints one JSON line {"check": NAME, "t": seconds since start, "sec": its seconds, ...},
also appended to OUTDIR/gpu_check.jsonl (OUTDIR: --out, else $OUT). A failing section records
"error" (type, message, the last traceback lines) and the run goes on; the last line is
{"check": "done", "errors": N, ...}. The exit code is 0 whatever the sections found (non-zero only
for bad arguments); what the sections print goes to stderr. --deadline S: no section (or
train_mfu row) starts after S seconds. --only a,b: those sections.
--set k=v: a config override for every model built (e.g. accel.noise=host). --inception PATH: the
FID Inception file (default: a small TorchScript stand-in). --dry: every section at tiny sizes on
the CPU (the imagenet512 structure narrowed, at 64 px) with the CUDA choices forced on
(accel.amp/channels_last/fused_adam/pin_memory/tf32=on, accel.noise=device): tests this script.

Sections:
  env            torch, device, process group, the resolved accel choices; dense matmul rate (bf16 on CUDA)
  video_prepare  tiny-video stage 1 through training/parallel.prepare (5-D conv weights channels-last-3d), one step
  pipeline       tiny stage 1 (straight, and stopped + resumed from its checkpoint) -> base -> sample ->
                 reconstruct -> eval -> API, on the device; host reads (and on CUDA synchronisations)
                 inside training steps, by source line
  fsdp_lam       FSDP2 mixed precision: dtype and values of the log-SNR reaching NoiseEmbedding (fp32 wanted)
  noise          imagenet512 decoder at the eval batch, per decoder step: host per-seed noise, device
                 CounterNoise, the network call; a seed's device noise alone equals its row in the batch
  generation     imagenet512 generation at the preset's sampler and steps: seconds per image with device and
                 host noise, and generation time over the time of its network calls alone (target <= 1.2)
  memory         peak memory of `ul encode` (encode_sample at batch 500) and `ul eval` (decoder at batch 250)
  inception      InceptionFeatures throughput on 512 px images (the pinned network where installed or given)
  compile        per-block torch.compile of the imagenet512 stage-1 structure (narrowed: the counts depend on
                 the blocks, not their widths): Dynamo frames and graphs with and without activation
                 checkpointing, recompile-limit hits (eager backend on --dry, inductor on CUDA)
  train_mfu      stage-1 and base training at the imagenet512 network sizes (benchmarks/train_speed.measure,
                 accel defaults): samples/s, model FLOP utilisation against the measured matmul rate, peak memory
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from unified_latents import dist  # noqa: E402
from unified_latents.accel import apply_backends, lay_out, resolve  # noqa: E402
from unified_latents.config import apply_overrides  # noqa: E402
from unified_latents.presets import IMAGENET512_NARROW, get_preset  # noqa: E402

# The choices "auto" makes on CUDA, forced on the CPU by --dry so that it takes the GPU's code paths.
CUDA_CHOICES = [
    "accel.amp=on",
    "accel.channels_last=on",
    "accel.fused_adam=on",
    "accel.pin_memory=on",
    "accel.tf32=on",
    "accel.noise=device",
]
NARROW = IMAGENET512_NARROW  # the imagenet512 networks narrowed, at 64 px (--dry)
NARROW_PRESET = "imagenet512-narrow"

ARGS = argparse.Namespace(dry=False, out="", deadline=0.0, set=[], inception=None)
DEV = torch.device("cpu")
FORCE: list[str] = []  # overrides of every config built here (--set; the CUDA choices on --dry)
T0 = time.time()
_PEAK: list[float] = []  # the measured matmul rate, once


# ----------------------------------------------------------------------------- running and recording


def record(name: str, **fields) -> dict:
    """One JSON line on stdout (rank 0), appended to OUT/gpu_check.jsonl as well."""
    rec = {"check": name, "t": round(time.time() - T0, 1), **fields}
    if dist.is_main():
        line = json.dumps(rec, default=str)
        print(line, flush=True)
        if ARGS.out:
            Path(ARGS.out).mkdir(parents=True, exist_ok=True)
            with open(Path(ARGS.out) / "gpu_check.jsonl", "a") as f:
                f.write(line + "\n")
    return rec


def error_of(e: Exception) -> dict:
    return {
        "type": type(e).__name__,
        "message": str(e)[:800],
        "where": traceback.format_exc().strip().splitlines()[-4:],
    }


def run_section(name: str, fn) -> dict:
    """Run one section unless the deadline has passed; what it prints (training logs) goes to
    stderr, so that stdout holds only JSON lines; an exception is recorded, not raised."""
    if time.time() - T0 > ARGS.deadline:
        return record(name, skipped=f"deadline ({ARGS.deadline:g} s) passed")
    t = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = fn() or {}
        return record(name, sec=round(time.time() - t, 1), **out)
    except Exception as e:  # noqa: BLE001 - recorded; the next section runs
        return record(name, sec=round(time.time() - t, 1), error=error_of(e))
    finally:
        if DEV.type == "cuda":
            torch.cuda.empty_cache()


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def timed(fn, reps: int = 3, warm: int = 1) -> float:
    """Seconds per call of fn, after `warm` untimed calls (device work included)."""
    for _ in range(warm):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def reset_peak() -> None:
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated(DEV) / 2**30, 2) if DEV.type == "cuda" else None


def ms(seconds: float) -> float:
    return round(1e3 * seconds, 2)


def matmul_peak() -> float:
    """Dense matmul FLOP/s (bf16 on CUDA, float32 on the CPU, one short round there), measured once."""
    from train_speed import matmul_flops

    if not _PEAK:
        cuda = DEV.type == "cuda"
        _PEAK.append(matmul_flops(DEV, torch.bfloat16 if cuda else torch.float32, *((5, 10) if cuda else (1, 2))))
    return _PEAK[0]


# ----------------------------------------------------------------------------- models and data


def cfg_of(preset: str, stage: str = "latents", *over: str):
    return apply_overrides(get_preset(preset, stage), [*FORCE, *over])


def big(stage: str, *over: str, narrow: bool | None = None):
    """An imagenet512 stage, narrowed (at 64 px) on --dry or when `narrow`."""
    narrow = ARGS.dry if narrow is None else narrow
    return cfg_of("imagenet512", stage, *(NARROW if narrow else []), *over)


def on_device(make, cfg):
    """(model, Accel): built on the device and laid out as load_model lays out an artifact, in eval mode."""
    acc = resolve(cfg, DEV)
    apply_backends(acc)
    torch.manual_seed(0)
    with torch.device(DEV):  # initialised where it runs: the imagenet512 networks are large
        model = make()
    return lay_out(model.to(DEV), acc).eval(), acc


def imagenet_models(*over: str):
    """(base model, its stage 1, Accel) of the imagenet512 preset, random weights."""
    from unified_latents.objectives import BaseModel, UnifiedLatents

    s1cfg, cfg = big("latents", *over), big("base", *over)
    base, acc = on_device(lambda: BaseModel(cfg, UnifiedLatents(s1cfg)), cfg)
    return base, base.stage1, acc


def blobs(path: Path, n: int, seed: int, size: int = 16) -> Path:
    """An .npz of n labelled 16x16 gray images (discs on black): data that needs no download."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c, r = rng.uniform(3, size - 3, (n, 2, 1, 1)), rng.uniform(2, size / 3, (n, 1, 1))
    imgs = ((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2 < r**2).astype(np.uint8) * 255
    np.savez(path, images=imgs, labels=rng.integers(0, 10, n))
    return path


class StandIn(nn.Module):
    """A TorchScript stand-in for the FID Inception: [N, 3, 299, 299] -> [N, 64] features (64
    dimensions keep the Frechet distance's matrix square root instant on a CPU)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)).mean((2, 3))


def inception_file(folder: Path, prefer_pinned: bool) -> tuple[str, str]:
    """(path, kind): --inception, else (when `prefer_pinned`, not on --dry) the installed pinned
    file, else a stand-in written into `folder`."""
    from unified_latents.errors import UserError
    from unified_latents.eval.fid import find_inception

    if ARGS.inception:
        return ARGS.inception, "given"
    if prefer_pinned and not ARGS.dry:
        with contextlib.suppress(UserError):
            return str(find_inception()), "pinned"
    torch.manual_seed(0)
    path = folder / "inception-stand-in.pt"
    torch.jit.script(StandIn()).save(str(path))
    return str(path), "stand-in"


def captured(fn, *a, **kw):
    """(stdout text, result) of fn: what the training loop printed, e.g. that it resumed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fn(*a, **kw)
    return buf.getvalue(), res


# ----------------------------------------------------------------------------- sections


def s_env() -> dict:
    out = {
        "torch": torch.__version__,
        "device": str(DEV),
        "dry": ARGS.dry,
        "world": dist.world(),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "threads": torch.get_num_threads(),
        "overrides": FORCE,
    }
    acc = resolve(cfg_of("tiny"), DEV)
    out["accel"] = {k: v for k, v in dataclasses.asdict(acc).items() if k != "device"}
    if DEV.type == "cuda":
        p = torch.cuda.get_device_properties(DEV)
        out.update(
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            cuda=torch.version.cuda,
        )
    out["matmul_dtype"] = "bfloat16" if DEV.type == "cuda" else "float32"
    out["matmul_tflops"] = round(matmul_peak() / 1e12, 3)
    return out


def s_video_prepare() -> dict:
    from unified_latents.objectives import UnifiedLatents
    from unified_latents.objectives.noise import BatchNoise
    from unified_latents.training.ema import EMA
    from unified_latents.training.parallel import prepare

    cfg = cfg_of("tiny-video", "latents")
    torch.manual_seed(0)
    model = UnifiedLatents(cfg).to(DEV)
    ema = EMA(model, 0.99)
    layout, acc = prepare(cfg, model, ema, DEV), resolve(cfg, DEV)
    five = [p for p in model.parameters() if p.dim() == 5]
    cl3d = lambda ps: all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in ps)  # noqa: E731
    x = acc.layout(torch.rand(2, *model.x_shape, device=DEV) * 2 - 1)
    with acc.autocast():
        loss = layout.forward(x, None, model.draw_noise(BatchNoise(0, 2, device=DEV)))
    loss.total.sum().backward()
    layout.opt.step()
    return {
        "channels_last": acc.channels_last,
        "amp": acc.amp,
        "conv3d_weights": len(five),
        "weights_channels_last_3d": cl3d(five),
        "ema_channels_last_3d": cl3d(p for p in ema.model.parameters() if p.dim() == 5),
        "loss_finite": bool(torch.isfinite(loss.total).all()),
        "all_grads": all(p.grad is not None for p in five),
    }


def s_pipeline() -> dict:
    from safetensors.torch import load_file

    from unified_latents.stages import base_config, train_stage

    with (
        tempfile.TemporaryDirectory() as d,
        mock.patch.dict(os.environ, {"UL_CACHE": f"{d}/cache"}),
    ):  # its own feature cache
        d = Path(d)
        over = [f"data.source={blobs(d / 'train.npz', 64, 0)}", f"data.eval_source={blobs(d / 'held.npz', 32, 1)}"]
        c1 = cfg_of("tiny", "latents", *over)
        a1 = captured(train_stage, c1, d / "s1", DEV, progress=False)[1].artifact
        captured(train_stage, c1, d / "s1-split", DEV, progress=False, until=c1.train.total_samples // 2)
        log, res = captured(train_stage, c1, d / "s1-split", DEV, progress=False)
        straight, split = load_file(a1), load_file(res.artifact)
        out = {
            "resume": {
                "resumed": "resuming" in log,
                "samples": res.samples,
                "of": c1.train.total_samples,
                "artifact_max_abs_diff": max(
                    float((straight[k].float() - split[k].float()).abs().max()) for k in straight
                ),
            }
        }
        out["host_reads"] = step_reads(c1, d / "s1-split")
        a2 = captured(train_stage, base_config(cfg_of("tiny", "base"), a1), d / "s2", DEV, progress=False)[1].artifact
        out.update(after_training(a1, a2, d))
    return out


class HostReads(TorchDispatchMode):
    """Counts the ops that bring a tensor's value to the host (on a GPU, each one waits for the
    device): per op, the innermost line of the package that asked for it."""

    READS = ("_local_scalar_dense", "nonzero", "equal", "is_nonzero")

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func.overloadpacket.__name__ in self.READS and any(t.device.type == DEV.type for t in tensors):
            frames = [f for f in traceback.extract_stack() if "unified_latents" in f.filename]
            self.sites.append(f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?")
        return func(*args, **(kwargs or {}))


def step_reads(cfg, run: Path) -> dict:
    """Host reads inside training steps, over 4 more steps of a finished run (train.log_every=2,
    so the loop's once-per-logged-step read falls outside them): none are wanted with the fused
    optimizer, one per step without it. On the CPU every tensor is a host tensor, so host-side
    scalars count there too; on CUDA only reads of CUDA tensors count, and torch's sync debug mode
    counts the synchronisations as well."""
    from unified_latents.stages import train_stage
    from unified_latents.training import loop

    real, reads, syncs = loop._step, [], []

    def step(run_, batches):
        mode = HostReads()
        with warnings.catch_warnings(record=True) as w, mode:
            warnings.simplefilter("always")
            if DEV.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                return real(run_, batches)
            finally:
                if DEV.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
                reads.append(mode.sites)
                syncs.append([f"{Path(x.filename).name}:{x.lineno}" for x in w if "synchroniz" in str(x.message)])

    more = apply_overrides(
        cfg,
        [
            f"train.total_samples={cfg.train.total_samples + 4 * cfg.train.batch}",
            "train.log_every=2",
            "train.ckpt_every=0",
            "train.image_every=0",
        ],
    )
    with mock.patch.object(loop, "_step", step):
        captured(train_stage, more, run, DEV, progress=False)
    sites = sorted({s for r in reads + syncs for s in r})
    return {
        "fused_adam": resolve(cfg, DEV).fused_adam,
        "reads_per_step": [len(r) for r in reads],
        "syncs_per_step": [len(r) for r in syncs] if DEV.type == "cuda" else None,
        "sites": sites[:20],
    }


def after_training(a1: Path, a2: Path, d: Path) -> dict:
    """Sample, reconstruct, evaluate and use the API with the trained artifacts."""
    from unified_latents.api import load
    from unified_latents.eval.evaluate import EvalRequest, evaluate_artifact
    from unified_latents.eval.reconstruct import reconstruct
    from unified_latents.generate import SampleRequest, write_samples

    write_samples(a2, [0, 1, 2], d / "samples", SampleRequest(), DEV, progress=False)
    rec = reconstruct(a1, None, None, count=8, device=DEV, progress=False)
    path, kind = inception_file(d, prefer_pinned=False)
    ev = evaluate_artifact(
        a2,
        EvalRequest(
            samples=16,
            recon=8,
            ref_count=16,
            inception=path,
            device=DEV,
            progress=False,
            trust_torchscript=kind == "stand-in",
        ),
    )
    ul = load(str(a2), str(DEV))
    pics = ul.sample([0, 1])
    return {
        "sample_pngs": len(list((d / "samples").glob("0*.png"))),
        "reconstruct": {k: round(v, 3) for k, v in rec.items() if k in ("psnr", "ssim", "bits_per_image")},
        "eval": {k: round(ev[k], 4) for k in ("gfid", "kid", "rfid", "psnr", "base_bits_per_image") if k in ev},
        "inception": kind,
        "api": {
            "samples": len(pics),
            "latent": list(ul.encode(pics).shape),
            "bits_positive": bool((ul.bits(pics) > 0).all()),
        },
    }


def s_fsdp_lam() -> dict:
    import torch.distributed as tdist

    from unified_latents.config import NetConfig
    from unified_latents.nn.networks import ViT
    from unified_latents.training.parallel import _fully_shard

    made = not tdist.is_initialized()
    if made:  # one process: a group of one (NCCL for CUDA tensors, which FSDP gathers over)
        backend = "cpu:gloo,cuda:nccl" if DEV.type == "cuda" else "gloo"
        tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = ViT(NetConfig(arch="vit", transformer_blocks=1, width=32, heads=2, patch=1, emb_dim=16), 2, 4, 4).to(DEV)
        seen = {}
        net.emb.register_forward_pre_hook(
            lambda m, a: seen.update(
                lam_dtype=str(a[0].dtype), lam=a[0].tolist(), param_dtype=str(next(m.parameters()).dtype)
            )
        )
        _fully_shard([net], DEV, mixed=True)
        lam = torch.tensor([7.30, 7.31, 7.32], device=DEV)
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            net(torch.randn(3, 4, 8, 8, device=DEV), lam).float().sum().backward()
    finally:
        if made:
            tdist.destroy_process_group()
    return {**seen, "distinct_lam": len(set(seen["lam"])), "group": "created" if made else "existing"}


def s_noise() -> dict:
    from unified_latents.objectives.base import denoise, seeded_noise
    from unified_latents.objectives.noise import CounterNoise

    _, s1, acc = imagenet_models()
    n = 4 if ARGS.dry else s1.cfg.eval.batch or s1.modality.batch  # `ul eval`'s batch (250 images)
    seeds = list(range(n))
    out = {"batch": n, "x_shape": list(s1.x_shape), "amp": acc.amp}
    with torch.no_grad(), acc.autocast():
        z0 = torch.randn(n, *s1.z_shape, device=DEV)
        xt, lam = acc.layout(torch.randn(n, *s1.x_shape, device=DEV)), torch.full((n,), 2.0, device=DEV)
        reset_peak()
        out["decoder_step_ms"] = ms(timed(lambda: denoise(s1.decoder, xt, lam, cond=z0), reps=2))
        out["peak_gib"] = peak_gib()
    host, on_dev = seeded_noise(seeds, DEV, on_device=False), seeded_noise(seeds, DEV, on_device=True)
    out["host_noise_ms"] = ms(timed(lambda: host.normal(s1.x_shape), reps=2, warm=0))
    out["device_noise_ms"] = ms(timed(lambda: on_dev.normal(s1.x_shape), reps=3))
    out["host_noise_over_step"] = round(out["host_noise_ms"] / out["decoder_step_ms"], 3)
    out["device_noise_over_step"] = round(out["device_noise_ms"] / out["decoder_step_ms"], 4)
    k = n // 2  # a seed's noise drawn alone equals its row of the batch's
    alone, row = CounterNoise([seeds[k]], DEV).normal(s1.x_shape)[0], CounterNoise(seeds, DEV).normal(s1.x_shape)[k]
    out["device_noise_row_equal"] = bool(torch.equal(alone, row))
    out["device_noise_row_max_abs_diff"] = float((alone - row).abs().max())
    return out


def s_generation() -> dict:
    from unified_latents.objectives.base import denoise

    # the preset's sampling (64 base, 128 decoder steps); a few steps on --dry
    base, s1, acc = imagenet_models(*(["sample.base_steps=6", "sample.decoder_steps=6"] if ARGS.dry else []))
    sc = base.cfg.sample
    n = 2 if ARGS.dry else 16
    seeds, labels = list(range(n)), torch.arange(n, device=DEV) % max(1, base.num_classes)
    out = {
        "batch": n,
        "sampler": sc.sampler,
        "base_steps": sc.base_steps,
        "decoder_steps": s1.cfg.sample.decoder_steps,
        "guidance": sc.guidance,
    }
    with torch.no_grad():
        z, x = torch.randn(n, *base.z_shape, device=DEV), acc.layout(torch.randn(n, *s1.x_shape, device=DEV))
        lam = torch.full((n,), 2.0, device=DEV)
        fn = base.model_fn(labels, sc.guidance, sc.guidance_interval or None)
        with acc.autocast():
            base_s = timed(lambda: fn(z, lam), reps=2)
            dec_s = timed(lambda: denoise(s1.decoder, x, lam, cond=z / base.latent_scale), reps=2)
    network_s = sc.base_steps * base_s + (s1.cfg.sample.decoder_steps + 1) * dec_s  # + the final prediction
    out.update(base_step_ms=ms(base_s), decoder_step_ms=ms(dec_s), network_s_per_image=round(network_s / n, 4))
    for noise in ("device", "host"):
        base.cfg, s1.cfg = (apply_overrides(c, [f"accel.noise={noise}"]) for c in (base.cfg, s1.cfg))
        gen_s = timed(lambda: base.generate(seeds, labels), reps=1, warm=0)
        ratio = round(gen_s / network_s, 3)
        out[f"{noise}_noise"] = {"s_per_image": round(gen_s / n, 4), "over_network": ratio, "within_1.2": ratio <= 1.2}
    return out


def s_memory() -> dict:
    from unified_latents.objectives.base import denoise

    _, s1, acc = imagenet_models()
    m, out = s1.modality, {}
    for tag, b in (("encode", 4 if ARGS.dry else m.encode_batch), ("eval_decoder", 2 if ARGS.dry else m.batch)):
        reset_peak()
        t = time.perf_counter()
        try:
            with torch.no_grad():
                x = acc.layout(torch.rand(b, *s1.x_shape, device=DEV) * 2 - 1)
                if tag == "encode":  # what `ul encode` runs per batch (data/latents.py encode_images)
                    s1.encode_sample(x, list(range(b)))
                else:  # one decoder step of `ul eval`'s generation and reconstruction
                    with acc.autocast():
                        denoise(
                            s1.decoder,
                            x,
                            torch.full((b,), 2.0, device=DEV),
                            cond=torch.randn(b, *s1.z_shape, device=DEV),
                        )
            sync()
            out[tag] = {"batch": b, "sec": round(time.perf_counter() - t, 2), "peak_gib": peak_gib()}
        except torch.OutOfMemoryError as e:
            out[tag] = {"batch": b, "oom": str(e)[:300], "peak_gib": peak_gib()}
        x = None
    return out


def s_inception() -> dict:
    from unified_latents.eval.fid import InceptionFeatures

    with tempfile.TemporaryDirectory() as d:
        path, kind = inception_file(Path(d), prefer_pinned=True)
        net = InceptionFeatures(path, DEV, trust=kind == "stand-in")
        k, batch = (4, 2) if ARGS.dry else (200, 50)
        imgs = torch.randint(0, 256, (k, 3, 512, 512), dtype=torch.uint8)
        net(imgs[:batch], batch=batch)  # warm-up (cuDNN autotuning, the CPU's frozen network)
        sec = timed(lambda: net(imgs, batch=batch), reps=1, warm=0)
        feats = net(imgs[:2], batch=2)
    return {
        "network": kind,
        "precision": net.precision,
        "features": int(feats.shape[1]),
        "batch": batch,
        "img_per_s": round(k / sec, 1),
    }


def s_compile() -> dict:
    import torch._dynamo as dynamo

    real, out = torch.compile, {"backend": "eager" if ARGS.dry else "inductor"}
    # Dynamo traces the frames (what is counted) with any backend; the eager one skips code generation
    eager = mock.patch.object(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    try:
        with eager if ARGS.dry else contextlib.nullcontext():
            for ac in (False, True):
                out["with_ac" if ac else "without_ac"] = compiled_step(ac)
    finally:
        dynamo.reset()
    return out


def compiled_step(ac: bool) -> dict:
    """Dynamo's counters over one training step of the narrowed imagenet512 stage 1, compiled per block."""
    import torch._dynamo as dynamo

    from unified_latents.objectives import UnifiedLatents
    from unified_latents.objectives.noise import BatchNoise
    from unified_latents.training.ema import EMA
    from unified_latents.training.parallel import blocks, prepare, trainable_networks

    dynamo.reset()
    dynamo.utils.counters.clear()
    cfg = big("latents", "train.compile=true", f"train.activation_checkpointing={str(ac).lower()}", narrow=True)
    torch.manual_seed(0)
    model = UnifiedLatents(cfg).to(DEV)
    n_blocks = sum(len(blocks(net)) for net in trainable_networks(model))
    layout, acc = prepare(cfg, model, EMA(model, 0.99), DEV), resolve(cfg, DEV)
    x = acc.layout(torch.rand(2, *model.x_shape, device=DEV) * 2 - 1)
    with acc.autocast():
        loss = layout.forward(
            x, torch.zeros(2, dtype=torch.long, device=DEV), model.draw_noise(BatchNoise(0, 2, device=DEV))
        )
    loss.total.sum().backward()
    sync()
    c = dynamo.utils.counters
    hits = [k for k in c["unimplemented"] if "recompile" in k.lower() or "cache_size" in k.lower()]
    return {
        "blocks": n_blocks,
        "frames_ok": c["frames"]["ok"],
        "frames_total": c["frames"]["total"],
        "unique_graphs": c["stats"]["unique_graphs"],
        "recompile_limit_hit": bool(hits or c["recompile_limit_hit"]),
        "loss_finite": bool(torch.isfinite(loss.total).all()),
    }


def s_train_mfu() -> dict:
    # GPU: micro-batches that fit 80 GB and a few minutes; one GPU, so global batch = micro-batches
    rows = [
        (
            "stage1_ac",
            "latents",
            6,
            2,
            ["train.batch=32", "train.micro_batch=32", "train.activation_checkpointing=true"],
        ),
        ("base", "base", 8, 2, ["train.batch=64", "train.micro_batch=32"]),
        ("stage1_no_ac", "latents", 4, 2, ["train.batch=16", "train.micro_batch=8"]),
        ("base_compiled", "base", 8, 3, ["train.batch=64", "train.micro_batch=32", "train.compile=true"]),
    ]
    if ARGS.dry:
        rows = [(tag, stage, 2, 1, ["train.batch=2"]) for tag, stage, *_ in rows[:2]]
    out = {"preset": NARROW_PRESET if ARGS.dry else "imagenet512", "peak_tflops": round(matmul_peak() / 1e12, 3)}
    with mfu_setup():
        for tag, stage, steps, warm, over in rows:
            if time.time() - T0 > ARGS.deadline:
                out[tag] = {"skipped": "deadline"}
                continue
            try:  # a failed row (out of memory, say) leaves the others' numbers
                out[tag] = mfu_row(stage, steps, warm, ["train.shard=ddp", *FORCE, *over])
            except Exception as e:  # noqa: BLE001 - recorded in the row and counted as the section's error
                out[tag] = {"error": error_of(e)}
    failed = [tag for tag, row in out.items() if isinstance(row, dict) and "error" in row]
    return {**out, "error": {"type": "rows failed", "rows": failed}} if failed else out


def mfu_row(stage: str, steps: int, warm: int, over: list[str]) -> dict:
    import train_speed as ts

    t = time.time()
    r = ts.measure(NARROW_PRESET if ARGS.dry else "imagenet512", stage, steps, warm, DEV, over)
    return {
        "batch": r["batch"],
        "params_m": round(r["params"] / 1e6, 1),
        "samples_per_s": round(r["sps"], 3),
        "gflop_per_sample": round(r["flops"] / 1e9, 2),
        "mfu_pct": round(100 * r["sps"] * r["flops"] / matmul_peak(), 2),
        "peak_gib": round(r["mem"] / 2**30, 2) if DEV.type == "cuda" else None,
        "sec": round(time.time() - t, 1),
    }


@contextlib.contextmanager
def mfu_setup():
    """train_speed's random examples drawn once per shape (a CPU randn of every batch would be timed
    with the step otherwise); no final checkpoint (gigabytes at these sizes, and not timed); on
    --dry, the narrowed imagenet512 stages as a named preset for train_speed.measure."""
    import train_speed as ts

    from unified_latents import presets
    from unified_latents.training import loop

    made, real_get = {}, ts.RandomData.get

    def get(self, idx):
        key = (self.shape, len(idx))
        if key not in made:
            made[key] = real_get(self, idx)[0]
        return made[key], (idx % self.classes if self.classes else None)

    narrow = {NARROW_PRESET: lambda: presets.Preset(big("latents"), big("base"))} if ARGS.dry else {}
    with (
        mock.patch.object(ts.RandomData, "get", get),
        mock.patch.object(loop, "checkpoint", lambda run: run.artifact),
        mock.patch.dict(presets.PRESETS, narrow),
    ):
        yield


SECTIONS = {
    "env": s_env,
    "video_prepare": s_video_prepare,
    "pipeline": s_pipeline,
    "fsdp_lam": s_fsdp_lam,
    "noise": s_noise,
    "generation": s_generation,
    "memory": s_memory,
    "inception": s_inception,
    "compile": s_compile,
    "train_mfu": s_train_mfu,
}


# ----------------------------------------------------------------------------- main


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_check.jsonl (default: $OUT)")
    ap.add_argument(
        "--dry", action="store_true", help="tiny sizes on the CPU with the CUDA choices forced (tests this script)"
    )
    ap.add_argument("--deadline", type=float, default=330.0, help="seconds after which no section starts")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every model")
    ap.add_argument("--inception", default=None, help="the FID Inception TorchScript file (default: a stand-in)")
    args = ap.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.set:
        try:
            apply_overrides(get_preset("tiny"), args.set)
        except Exception as e:  # noqa: BLE001 - a bad override is an argument error
            ap.error(f"--set: {e}")
    return args


def main(argv=None) -> None:
    global ARGS, DEV, FORCE
    ARGS = parse(argv)
    DEV = dist.init("cpu" if ARGS.dry else "auto")  # under torchrun: joins its group, this process's GPU
    FORCE = [*(CUDA_CHOICES if ARGS.dry else []), *ARGS.set]
    recs = [run_section(name, fn) for name, fn in SECTIONS.items() if not ARGS.only or name in ARGS.only]
    record(
        "done",
        total_sec=round(time.time() - T0, 1),
        sections=len(recs),
        errors=sum("error" in r for r in recs),
        errored=[r["check"] for r in recs if "error" in r],
        skipped=[r["check"] for r in recs if "skipped" in r],
    )
    dist.shutdown()


if __name__ == "__main__":
    main()
