"""The one training loop. It never asks which stage it runs: it trains any `Objective`
(objectives/base.py: draw_noise, forward -> Losses, after_step, previews, log_keys,
has_unused_parameters, artifact_metadata). `train` sets up, then steps and checkpoints.

Progress is counted in samples seen (global). Resume = rerun the same command: the training
state (training/run.py, training/state.py) holds weights, EMA, optimizer, the objective's
buffers and the sample count; data order and every random number are functions of (seed,
samples seen, row), so a resumed run replays exactly what a straight run would have done, and
any number of processes optimises the same (dropout masks aside: they are drawn per process).
How the model is laid out (DDP, FSDP2, compile, activation checkpointing) is
training/parallel.py's business.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .. import dist
from ..config import RunConfig, to_dict
from ..config_ranges import check_ranges
from ..data import DataOrder
from ..data.sampler import MicroBatches, micro_batch_loader
from ..errors import ConfigError, ResumeError, TrainingError
from ..files import read_jsonl
from ..objectives.noise import BatchNoise, step_key
from ..runlock import job_lock
from ..saved_config import incompatible_changes
from .checkpoint import atomic_write_text
from .loggers import check_kind, make_log
from .run import Run, checkpoint, finish_pending, setup, write_posthoc


@dataclass
class TrainResult:
    artifact: Path
    samples: int
    metrics: dict[str, float]


def lr_at(cfg, samples: int) -> float:
    """The learning rate after `samples` training samples (train.lr_decay was range-checked)."""
    t = cfg.train
    if samples < t.warmup_samples:
        return t.lr * (samples + t.batch) / (t.warmup_samples + t.batch)
    if t.lr_decay == "constant":
        return t.lr
    if t.lr_decay == "rsqrt":  # EDM2's inverse square root: constant until lr_ref_samples, then 1 / sqrt(samples)
        return t.lr / math.sqrt(max(samples / t.lr_ref_samples, 1.0))
    frac = (samples - t.warmup_samples) / max(1, t.total_samples - t.warmup_samples)
    lo = t.lr * t.lr_final_frac
    return lo + (t.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _check_batch(cfg: RunConfig, world: int) -> tuple[int, int]:
    t = cfg.train
    if t.batch % world:
        raise ConfigError(
            f"train.batch={t.batch} is not divisible by the {world} processes; choose a multiple of {world}"
        )
    per_rank = t.batch // world
    micro = t.micro_batch or per_rank
    if per_rank % micro:
        raise ConfigError(f"per-device batch {per_rank} is not divisible by train.micro_batch={micro}")
    if t.total_samples % t.batch:
        raise ConfigError(f"train.total_samples={t.total_samples} is not a multiple of train.batch={t.batch}")
    return per_rank, micro


def _prepare_outdir(cfg: RunConfig, outdir: Path) -> None:
    """Write config.json on a new run; refuse an incompatible config on a resumed one."""
    path = outdir / "config.json"
    new = to_dict(cfg)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ResumeError(f"{path} is damaged; restore it or start a new --outdir") from None
        diffs = incompatible_changes(old, new)
        if diffs:
            raise ResumeError(
                f"{outdir} holds a run with an incompatible config ({'; '.join(diffs)}); "
                "rerun with the original settings to resume, or pass a new --outdir"
            )
    if dist.is_main():
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(new, indent=2))


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint at the next step boundary and exit."""

    def __init__(self):
        self.stop = False
        self.forced = False  # a second signal: out at once, wherever the process was
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second signal: give up at once
            self.forced = True
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    cfg: RunConfig,
    outdir: Path,
    build_model: Callable[[], nn.Module],
    data,  # len(data) and data.get(indices) -> (x float, labels or None)
    preview_x: torch.Tensor | None = None,
    save_previews: Callable[[dict, Path], None] | None = None,
    artifact_kind: str = "model",  # written into the artifact; the caller names its stage (e.g. "ul-latents")
    device: torch.device | None = None,
    progress: bool | None = None,
    until: int | None = None,
) -> TrainResult:
    """Train to cfg.train.total_samples (or stop early, with a checkpoint, at `until` samples)."""
    t = check_ranges(cfg).train  # a config built in Python is checked as a loaded one is (lr_at trusts it)
    check_kind(t.log)  # before anything is written
    with job_lock(Path(outdir), "ul train"):  # one run per folder
        run = _setup(cfg, Path(outdir), build_model, data, device or torch.device("cpu"), artifact_kind)
        start = run.samples
        done = run.samples >= t.total_samples  # a finished run's rerun logs nothing new
        log = make_log("" if done else t.log, run.outdir, run.samples, to_dict(cfg), dist.is_main())
        try:
            return _train_loop(run, start, log, preview_x, save_previews, progress, until)
        finally:
            log.close()


def _train_loop(run: Run, start: int, log, preview_x, save_previews, progress, until) -> TrainResult:
    t, data = run.cfg.train, run.data
    preview = _previewer(run, preview_x, save_previews, log)
    show = dist.is_main() and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=t.total_samples, initial=run.samples, unit="img", disable=not show, dynamic_ncols=True)
    stats_f = open(run.outdir / "stats.jsonl", "a") if dist.is_main() else None
    t_last = time.time()
    flag = _StopFlag()
    try:
        with flag:
            end = t.total_samples if until is None else min(until, t.total_samples)
            items = MicroBatches(
                data, DataOrder(len(data), t.seed), run.samples, end, t.batch, dist.rank(), run.per_rank, run.micro
            )
            batches = iter(micro_batch_loader(items, run.accel.workers, pin=run.accel.pin_memory))
            while run.samples < end:
                step, lr = _step(run, batches)
                bar.update(t.batch)
                if step % t.log_every == 0 or run.samples >= t.total_samples:
                    settle(run)  # the steps' device results, read once per logged step
                    now = time.time()
                    rec = {
                        "samples": run.samples,
                        "step": step + 1,
                        "lr": lr,
                        "bad_steps": run.bad_total,
                        "sec": now - t_last,
                        **run.metrics,
                    }
                    t_last = now
                    _log(rec, run.model.log_keys, t.total_samples, stats_f, bar, show)
                    log.scalars(rec)
                _after_step(run, flag, preview)
    except KeyboardInterrupt:
        bar.close()
        _interrupted(run, flag)
        raise
    except TrainingError:  # raised on every process alike: a state being written is still completed
        finish_pending(run)
        raise
    finally:
        bar.close()
        if stats_f:
            stats_f.close()
    return _finish(run, start, preview)


def _finish(run: Run, start: int, preview) -> TrainResult:
    """The final checkpoint and preview (nothing is rewritten for a run that was already done)."""
    t = run.cfg.train
    if run.samples == start and run.artifact_at == run.samples:
        return TrainResult(run.artifact, run.samples, run.metrics)  # already finished: rewrite nothing
    try:
        settle(run)
    except TrainingError:  # too many bad steps, found only now: a state being written is still completed
        finish_pending(run)
        raise
    art = checkpoint(run)
    finish_pending(run)
    if run.samples >= t.total_samples and not (t.image_every > 0 and run.samples % t.image_every == 0):
        preview()
    return TrainResult(art, run.samples, run.metrics)


def _previewer(run: Run, preview_x: torch.Tensor | None, save_previews, log) -> Callable[[], None]:
    def preview() -> None:
        if preview_x is None or save_previews is None:
            return
        if run.layout.sharded or dist.is_main():  # a sharded EMA model needs every process in its forward
            pics = run.ema.model.previews(preview_x.to(run.device))
            if dist.is_main():
                save_previews(pics, run.outdir / f"preview-{run.samples:012d}")
                for name, imgs in pics.items():
                    log.images(name, imgs, run.samples)

    return preview


def _interrupted(run: Run, flag: _StopFlag) -> None:
    """After a stop request: complete the state just started (unless a second signal forced the
    exit) and say where the run can resume from."""
    saved = run.saved_at == run.samples and not flag.forced
    if saved:
        finish_pending(run)
    where = "state saved" if saved else f"the last state is at {max(run.saved_at, 0):,} samples"
    dist.print0(f"\ninterrupted at {run.samples:,} samples; {where} in {run.outdir}. Rerun the same command to resume.")


def _setup(cfg: RunConfig, outdir: Path, build_model, data, device: torch.device, artifact_kind: str) -> Run:
    per_rank, micro = _check_batch(cfg, dist.world())
    _prepare_outdir(cfg, outdir)
    dist.barrier()
    run = setup(cfg, outdir, build_model, data, device, artifact_kind, per_rank, micro)
    _truncate_stats(outdir / "stats.jsonl", run.samples)  # lines after the checkpoint (or a torn one) go
    return run


def _step(run: Run, batches) -> tuple[int, float]:
    """One optimizer step on the global batch at run.samples: (step index, lr). Nothing here reads
    a device value on the host when the optimizer can skip a non-finite step itself (the fused
    kernel's found_inf): the step's loss terms, gradient norm and finiteness stay on the device
    until `settle`. Otherwise whether to step is read at once (one read per step)."""
    t, model, device = run.cfg.train, run.model, run.device
    rank, per_rank = dist.rank(), run.per_rank
    step = run.samples // t.batch
    lr = lr_at(run.cfg, run.samples)
    for g in run.opt.param_groups:
        g["lr"] = lr
    # This process draws only its own rows' noise, each row from its own (seed, step, row) stream.
    noise = model.draw_noise(
        BatchNoise(step_key(t.seed, step), t.batch, rank * per_rank, (rank + 1) * per_rank, device)
    )
    torch.manual_seed((t.seed * 1_000_003 + step) * 1009 + rank)  # dropout
    model.train()
    sums = _accumulate(run, batches, noise)
    keys = sorted(sums)
    red = dist.all_sum(torch.stack([sums[k] for k in keys]).to(device)) / t.batch
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
    gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP: a replicated DTensor
    ok = torch.isfinite(red[keys.index("loss")]) & torch.isfinite(gnorm)
    # merged, not replaced: a skipped step's after_step values stay the last taken step's
    run.live = {**run.live, **dict(zip(keys, red, strict=True)), "grad_norm": gnorm}
    run.unread.append(ok)
    if run.accel.fused_adam:  # the kernel skips a non-finite step on the device: nothing is read here
        run.opt.found_inf = (~ok).to(torch.float32)  # type: ignore[attr-defined]  # read by the fused step
        _update(run, step, ok)
        if len(run.unread) >= run.cfg.train.max_bad_steps:  # enough unread steps to stop on: look at them
            settle(run)
    else:
        settle(run)  # the one host read of the step: was it finite?
        if not run.consecutive_bad:
            _update(run, step, None)
    run.opt.zero_grad(set_to_none=True)
    run.samples += t.batch
    return step, lr


def _update(run: Run, step: int, ok: torch.Tensor | None) -> None:
    """The optimizer step, the EMAs and the objective's after_step; `ok` (on the device): whether
    the step was finite, where only the device knows (each then leaves a skipped step out)."""
    run.opt.step()
    run.ema.update(run.model, step, ok)
    for p in run.posthoc:
        p.update(run.model, step, ok)
    metrics = {**run.metrics, **run.live, "samples": run.samples + run.cfg.train.batch}
    run.live.update(run.model.after_step(metrics, ok))


def settle(run: Run) -> None:
    """Read what the steps since the last read left on the device, in one transfer: their
    finiteness flags (counting bad steps; too many in a row stop training) and the last step's
    metrics (run.metrics, floats)."""
    if not (run.unread or run.live):
        return
    names = list(run.live)
    vals = [torch.as_tensor(run.live[k], dtype=torch.float64, device=run.device).reshape(()) for k in names]
    host = torch.stack([*(f.to(torch.float64) for f in run.unread), *vals]).tolist()
    flags, run.unread, run.live = host[: len(run.unread)], [], {}
    run.metrics.update(zip(names, host[len(flags) :], strict=True))
    for good in flags:
        run.consecutive_bad = 0 if good else run.consecutive_bad + 1
        run.bad_total += 0 if good else 1
        if run.consecutive_bad >= run.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{run.consecutive_bad} consecutive training steps gave a non-finite loss or gradient "
                f"by {run.samples:,} samples; the last good checkpoint in {run.outdir} is kept. "
                "Lower train.lr or raise train.warmup_samples, then rerun to resume"
            )


def _accumulate(run: Run, batches, noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward and backward over this process's micro-batches of the step (the next items of
    `batches`: data/sampler.py MicroBatches through a DataLoader); sums of each logged term."""
    t, acc, micro, per_rank = run.cfg.train, run.accel, run.micro, run.per_rank
    fwd = run.layout.forward
    sums: dict[str, torch.Tensor] = {}
    for m0 in range(0, per_rank, micro):
        sl = slice(m0, m0 + micro)
        x, labels = next(batches)
        x, labels = acc.to_device(x), acc.to_device(labels)
        last = m0 + micro >= per_rank
        with nullcontext() if last else run.layout.no_sync():
            with acc.autocast():
                losses = fwd(x, labels, {k: v[sl] for k, v in noise.items()})
            # DDP and FSDP average gradients over processes: scale so the result is the mean over the global batch.
            (losses.total.sum() * (dist.world() / t.batch)).backward()
        for k, v in [("loss", losses.total.detach()), *losses.terms.items()]:
            sums[k] = sums.get(k, 0) + v.double().sum()
    return sums


def _after_step(run: Run, flag: _StopFlag, preview: Callable[[], None]) -> None:
    """Previews and checkpoints when their sample counts are crossed; a requested stop checkpoints first."""
    t, samples = run.cfg.train, run.samples
    crossed = lambda every: every > 0 and samples // every != (samples - t.batch) // every  # noqa: E731
    if crossed(t.image_every):
        preview()
    timed = t.ckpt_minutes > 0 and time.monotonic() - run.saved_time >= 60 * t.ckpt_minutes
    # Rank 0's clock decides a timed checkpoint; any process's signal stops all of them (agreed on
    # over gloo with host values: no device synchronisation).
    stop, timed = dist.any_of([flag.stop, timed and dist.is_main()])
    if crossed(t.posthoc_every):
        write_posthoc(run)
    if crossed(t.ckpt_every) or stop or timed:
        settle(run)
        checkpoint(run)
    if stop:
        finish_pending(run)
        raise KeyboardInterrupt


def _log(rec: dict, log_keys: tuple[str, ...], total: int, stats_f, bar, show: bool) -> None:
    if stats_f:
        stats_f.write(json.dumps(rec) + "\n")
        stats_f.flush()
    shown = _shown(rec, log_keys)
    bar.set_postfix({k: f"{rec[k]:.4g}" for k in shown}, refresh=False)
    if not show and dist.is_main():
        print(f"[{rec['samples']:>10,}/{total:,}] " + " ".join(f"{k}={rec[k]:.4g}" for k in shown), flush=True)


def _shown(rec: dict, log_keys: tuple[str, ...]) -> list[str]:
    """The loss, then the keys the objective declares, where present."""
    return [k for k in ("loss", *log_keys) if k in rec]


def _truncate_stats(path: Path, samples: int) -> None:
    """Drop stats lines past the resumed position (written after the last checkpoint)."""
    if not path.exists() or not dist.is_main():
        return
    keep = [rec for rec in read_jsonl(path) if rec.get("samples", 0) <= samples]  # a torn line is dropped
    atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in keep))
