"""One training run's objects, and saving/restoring them: `setup` builds (or resumes) a Run,
`checkpoint` writes the EMA artifact and then the training state.

Resume: rank 0 lists the complete states and broadcasts the list, so every process restores the
same one; a state that cannot be read is skipped with a warning for the one before it. States
written by earlier versions (`training-state-*.pt`, one torch.save with weights_only loading)
are still resumed from when the run is not sharded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from .. import dist
from ..accel import Accel, contiguous, lay_out, resolve
from ..config import RunConfig, to_dict
from ..data.fingerprint import comparable, data_fingerprint
from ..errors import ConfigError, ResumeError, TrainingError
from ..files import write_fix
from .checkpoint import LEGACY_STATE_RE, load_legacy_state, save_artifact
from .ema import EMA
from .parallel import Layout, full_state, prepare
from .posthoc_ema import FOLDER as POSTHOC_FOLDER
from .posthoc_ema import PowerEMA, write_snapshot
from .state import PendingSave, list_states, load_tensors, read_meta, remove_stale, save_state

if TYPE_CHECKING:
    from ..data.sampler import Examples
    from ..objectives.base import ObjectiveModule


@dataclass
class Run:
    """A training run's objects and counters (what `setup` builds and each step advances)."""

    cfg: RunConfig
    outdir: Path
    model: ObjectiveModule  # sharded in place under FSDP
    ema: EMA[ObjectiveModule]
    layout: Layout
    data: Examples
    device: torch.device
    artifact_kind: str
    per_rank: int
    micro: int
    accel: Accel  # the resolved device choices (unified_latents/accel.py)
    samples: int = 0
    bad_total: int = 0
    consecutive_bad: int = 0
    metrics: dict = field(default_factory=dict)  # the last step's values, as floats (see loop.settle)
    live: dict = field(default_factory=dict)  # ... as 0-d device tensors, not yet read
    unread: list = field(default_factory=list)  # finiteness flags of the steps not yet read
    saved_at: int = -1  # sample count of the last state written
    artifact_at: int | None = None  # sample count of the artifact on disk (rank 0 reads it; all agree)
    saved_time: float = field(default_factory=time.monotonic)
    pending: PendingSave | None = None
    ckpt_group: object = None  # the gloo group of background state writes (train.async_checkpoint)
    fingerprints: dict = field(default_factory=dict)  # what the state must be resumed with (`fingerprints`)
    posthoc: list = field(default_factory=list)  # PowerEMA per train.posthoc_ema (training/posthoc_ema.py)

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.layout.opt

    @property
    def artifact(self) -> Path:
        return self.outdir / "artifact.safetensors"

    def frozen(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if not p.requires_grad}

    def state_tensors(self) -> tuple[dict, list]:
        """({"model", "ema", "optim"} tensors, optimizer param_groups), frozen parameters left out."""
        msd, osd = get_state_dict(self.model, self.opt)
        esd = get_model_state_dict(self.ema.model)
        frozen = self.frozen()
        keep = lambda sd: {k: v for k, v in sd.items() if k not in frozen}  # noqa: E731
        out = {"model": keep(msd), "ema": keep(esd), "optim": {"state": osd["state"]}}
        if self.posthoc:
            out["posthoc"] = {str(i): keep(get_model_state_dict(p.model)) for i, p in enumerate(self.posthoc)}
        return out, cast(list, osd["param_groups"])  # torch types every value of the optimizer's state alike

    def meta(self) -> dict:
        return {
            "bad_steps": self.bad_total,
            "metrics": self.metrics,
            "config": to_dict(self.cfg),
            "fingerprints": self.fingerprints,
        }


def fingerprints(cfg: RunConfig, model: ObjectiveModule) -> dict:
    """The training data's content fingerprint and, for stage 2, the frozen encoder's: a state is
    resumed only with the same ones (rank 0 computes them; every process gets rank 0's)."""

    def compute() -> dict:
        fp = {"data": data_fingerprint(cfg.data, cfg.data.source)}
        encoder = model.artifact_metadata().get("encoder_fingerprint")
        return {**fp, "encoder": encoder} if encoder else fp

    return dist.broadcast_object(dist.on_main(compute, "fingerprinting the training data"))


CHANGED = {
    "data": "the training data ({source}) is not the data this run has trained on so far (files added, removed "
    "or changed); restore that data to resume, or pass a new --outdir to start over on this data",
    "encoder": "the stage-1 artifact ({stage1}) is not the one this stage-2 run started from (was stage 1 "
    "retrained? or, for an encoder with a learned variance, its latents are now one seeded sample per "
    "example instead of the mean); the base model would continue on other latents: pass a new --outdir "
    "to train a base model on this encoder, or restore the stage-1 artifact it started from",
}


def check_fingerprints(run: Run, meta: dict) -> None:
    """Refuse to resume a state made from other data or (stage 2) another encoder."""
    saved = dict(meta.get("fingerprints") or {})  # states of earlier versions carry none
    saved["data"] = comparable(saved.get("data"))  # a data fingerprint of an earlier kind is not compared
    for key, text in CHANGED.items():
        if saved.get(key) is not None and saved[key] != run.fingerprints.get(key):
            raise ResumeError(
                f"cannot resume {run.outdir}: "
                + text.format(source=run.cfg.data.source, stage1=run.cfg.base.stage1_artifact)
            )


def setup(
    cfg: RunConfig, outdir: Path, build_model, data, device: torch.device, artifact_kind: str, per_rank: int, micro: int
) -> Run:
    """Model, EMA, layout and optimizer, restored from the newest readable state when there is one."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every process
    model = cast("ObjectiveModule", build_model().to(device))  # build_model makes an Objective (objectives/base.py)
    fps = fingerprints(cfg, model)  # before sharding: the encoder's weights are read whole
    acc = resolve(cfg, device)
    lay_out(model, acc)  # before the EMA copies are made, so they share the layout
    ema = EMA(model, cfg.train.ema_decay)
    if cfg.train.posthoc_ema and cfg.train.shard == "fsdp" and dist.world() > 1:
        raise ConfigError(
            "train.posthoc_ema is not supported with train.shard=fsdp yet; use train.shard=ddp, "
            "or train without post-hoc EMA"
        )
    posthoc = [PowerEMA(model, s) for s in cfg.train.posthoc_ema]
    layout = prepare(cfg, model, ema, device)
    run = Run(
        cfg,
        outdir,
        model,
        ema,
        layout,
        data,
        device,
        artifact_kind,
        per_rank,
        micro,
        acc,
        fingerprints=fps,
        posthoc=posthoc,
    )
    if cfg.train.async_checkpoint and dist.world() > 1:
        run.ckpt_group = dist.side_group()
    if dist.is_main():
        for p in remove_stale(outdir):
            print(f"removed {p.name}, left by an interrupted checkpoint write", flush=True)
    dist.barrier()
    _resume(run)
    run.artifact_at = dist.broadcast_object(artifact_samples(run.artifact) if dist.is_main() else None)
    return run


def _candidates(outdir: Path) -> list[str]:
    """Names of the states to try, newest first (rank 0's listing, the same on every process)."""
    found = {int(p.name[-12:]): p.name for p in list_states(outdir)}
    for p in Path(outdir).glob("training-state-*.pt"):
        m = LEGACY_STATE_RE.search(p.name)
        if m and int(m.group(1)) not in found:
            found[int(m.group(1))] = p.name
    names = [found[k] for k in sorted(found, reverse=True)] if dist.is_main() else None
    return dist.broadcast_object(names)


def _resume(run: Run) -> None:
    names = _candidates(run.outdir)
    for i, name in enumerate(names):
        path = run.outdir / name
        if not dist.all_agree(path.exists()):
            raise ResumeError(
                f"{path} is not visible on every process: --outdir must be a folder that all "
                "nodes share (the same path on each)"
            )
        try:
            meta = _load_legacy(run, path) if name.endswith(".pt") else _load(run, path)
        except ResumeError as e:
            if i + 1 == len(names):
                raise ResumeError(
                    f"{e}. No readable training state is left in {run.outdir}: restore one or pass a new --outdir"
                ) from None
            dist.print0(f"warning: {e}; resuming from the state before it ({names[i + 1]})")
            continue
        check_fingerprints(run, meta)
        dist.on_main(lambda bad=names[:i]: _set_aside(run.outdir, bad), "setting damaged states aside")
        run.samples, run.bad_total = int(meta["samples"]), int(meta.get("bad_steps", 0))
        run.metrics = meta.get("metrics", {})  # the last step's, for a run that is already done
        run.saved_at = run.samples
        dist.print0(f"resuming {run.outdir} at {run.samples:,} samples seen")
        return


def _set_aside(outdir: Path, names: list[str]) -> None:
    """Rename states that could not be read (newer than the one resumed) so that they neither
    count among the `train.keep` kept nor are tried again; nothing is deleted."""
    for name in names:
        src, dst = outdir / name, outdir / f"damaged-{name}"
        if src.exists() and not dst.exists():
            src.rename(dst)
            print(f"set {name} aside as {dst.name}", flush=True)


def _load(run: Run, path: Path) -> dict:
    meta = dist.on_every(lambda: read_meta(path), f"reading {path}", ResumeError)
    tensors, groups = run.state_tensors()  # templates laid out like this run (sharded or not)
    stateless = load_tensors(path, tensors)  # collective: a read error anywhere raises everywhere
    dist.on_every(lambda: _apply(run, path, tensors, groups, stateless), f"loading {path}", ResumeError)
    return meta


def _apply(run: Run, path: Path, tensors: dict, groups: list, stateless: dict) -> None:
    """Load the read state into the run. Parameters that had no optimizer state are loaded with
    the template's fresh entries (every torch version accepts a full optimizer state), then
    left with none, as in the run that wrote it."""
    opts = StateDictOptions(strict=False)  # frozen parameters are not in the state
    try:
        set_state_dict(
            run.model,
            run.opt,
            model_state_dict=tensors["model"],
            options=opts,
            optim_state_dict={"state": {**tensors["optim"]["state"], **stateless}, "param_groups": groups},
        )
        params = dict(run.model.named_parameters())
        for name in stateless:
            run.opt.state.pop(params[name], None)
        set_model_state_dict(run.ema.model, tensors["ema"], options=opts)
        for i, p in enumerate(run.posthoc):
            set_model_state_dict(p.model, tensors["posthoc"][str(i)], options=opts)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ResumeError(f"{path} does not fit this model ({e}); pass a new --outdir") from None


def _load_legacy(run: Run, path: Path) -> dict:
    if run.layout.sharded:
        raise ResumeError(f"{path} was written by an earlier version; resume it with train.shard=ddp")
    st = dist.on_every(lambda: load_legacy_state(path), f"reading {path}", ResumeError)
    try:
        run.model.load_state_dict(st["model"])
        run.ema.model.load_state_dict(st["ema"])
        run.opt.load_state_dict(legacy_optimizer_state(st["optimizer"], run.model))
    except (RuntimeError, KeyError, ValueError) as e:
        raise ResumeError(f"{path} does not fit this model ({e}); pass a new --outdir") from None
    return {
        "samples": st["samples"],
        "bad_steps": st.get("bad_steps", 0),
        "metrics": json.loads(st.get("metrics", "{}")),
    }


def legacy_optimizer_state(sd: dict, model: nn.Module) -> dict:
    """Earlier versions' optimizer held every parameter (frozen ones too, without state); this
    one holds the trainable ones, in the same order. Keep their entries, renumbered."""
    params = list(model.parameters())
    (group,) = sd["param_groups"]
    if len(group["params"]) != len(params):
        return sd  # not of that layout: let load_state_dict say what does not fit
    keep = [i for i, p in enumerate(params) if p.requires_grad]
    state = {
        new: sd["state"][group["params"][old]] for new, old in enumerate(keep) if group["params"][old] in sd["state"]
    }
    return {"state": state, "param_groups": [{**group, "params": list(range(len(keep)))}]}


def checkpoint(run: Run) -> Path:
    """The EMA artifact, then the training state (so a state never outlives its artifact). A state
    at this sample count that exists already is not written again. Written in the background under
    torchrun (train.async_checkpoint): finished before the next one starts and before training
    ends or pauses (`finish_pending`). A write that fails (a full disk) leaves the previous
    checkpoint in place and stops training with one error saying so."""
    if run.saved_at == run.samples and run.artifact_at == run.samples:
        return run.artifact
    return _disk_guard(run, lambda: _checkpoint(run))


def _disk_guard(run: Run, fn):
    before = run.saved_at
    try:
        return fn()
    except (OSError, CheckpointException) as e:
        _drop_temporaries(run.outdir)
        kept = (
            f"the previous training state ({before:,} samples) is kept"
            if before >= 0
            else "no training state was written yet"
        )
        raise TrainingError(
            f"could not write the checkpoint at {run.samples:,} samples in {run.outdir} ({_reason(e)}); "
            f"{kept}: {write_fix(e)} and rerun the same command to resume from it"
        ) from None


def _checkpoint(run: Run) -> Path:
    finish_pending(run)
    weights = full_state(run.ema.model, run.layout.sharded)  # gathered on rank 0 under FSDP
    extra = {"samples": run.samples, "metrics": run.metrics, **run.model.artifact_metadata()}
    dist.on_main(
        lambda: save_artifact(run.artifact, weights, to_dict(run.cfg), run.artifact_kind, extra),
        f"writing {run.artifact}",
    )
    run.artifact_at = run.samples
    write_posthoc(run)
    if run.saved_at != run.samples:
        tensors, _ = run.state_tensors()
        tensors = contiguous(tensors)  # channels-last weights and moments: safetensors writes contiguous ones
        run.pending = save_state(run.outdir, run.samples, tensors, run.meta(), run.cfg.train.keep, run.ckpt_group)
        if run.pending.future is None:
            finish_pending(run)
    run.saved_at, run.saved_time = run.samples, time.monotonic()
    return run.artifact


def finish_pending(run: Run) -> None:
    pending, run.pending = run.pending, None  # tried once, even if finishing it fails
    if pending is None:
        return
    try:
        pending.finish()
    except (OSError, CheckpointException) as e:
        _drop_temporaries(pending.final.parent)
        raise TrainingError(
            f"could not complete the training state {pending.final} ({_reason(e)}); the states "
            f"before it are kept: {write_fix(e)} and rerun the same command to resume"
        ) from None


def _drop_temporaries(outdir: Path) -> None:
    """After a failed write: the unfinished state folder and temporary files go (rank 0; every
    process's part of a DCP write has ended when its error is raised), so a full disk leaves only
    complete files and the room they took back."""
    if dist.is_main():
        remove_stale(outdir)


def _reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or ["?"])[-1][:200]


def artifact_samples(path: Path) -> int | None:
    """The sample count written into an artifact's metadata (None when absent or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})["samples"]))
    except Exception:  # missing, damaged, or written by something else: treat as absent
        return None


def write_posthoc(run: Run) -> None:
    """Snapshots of the tracked power EMAs at this sample count (rank 0; training/posthoc_ema.py);
    a full disk stops training with the checkpoint's message."""
    step, names = run.samples // run.cfg.train.batch, set(EMA.trainable(run.model))

    def write() -> None:
        for p in run.posthoc:
            weights = {n: v for n, v in p.model.state_dict().items() if n in names}
            dist.on_main(
                lambda p=p, weights=weights: write_snapshot(run.outdir / POSTHOC_FOLDER, p, weights, step, run.samples),
                f"writing a post-hoc EMA snapshot in {run.outdir / POSTHOC_FOLDER}",
            )

    if run.posthoc:
        _disk_guard(run, write)
