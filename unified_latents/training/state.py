"""Training state on disk: torch.distributed.checkpoint (DCP) folders in safetensors.

A state is the folder `state-<samples>/`: every process writes its own part of the sharded
tensors (FSDP shards; replicated tensors are written once), then rank 0 writes `state.json`
(sample count, metrics, config) and renames the folder from its temporary name. A folder
without that name or without `state.json` is an interrupted write and is never read; stale
temporaries are removed when a run starts. The files are safetensors and JSON only (DCP's
HuggingFace storage), so reading a state runs no code from it (DCP's default format pickles
its metadata).

Tensors are those of `{"model": ..., "ema": ..., "optim": {"state": ...}}`, as returned by
torch.distributed.checkpoint.state_dict; frozen parameters (stage 1 inside a base model) are
not stored: they come from their own artifact.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .. import dist
from ..errors import ResumeError
from ..files import atomic_write_text

STATE_RE = re.compile(r"state-(\d{12})$")
META = "state.json"


def state_path(outdir: Path, samples: int) -> Path:
    return Path(outdir) / f"state-{samples:012d}"


def list_states(outdir: Path) -> list[Path]:
    """Complete states, oldest first."""
    found = [p for p in Path(outdir).glob("state-*") if STATE_RE.fullmatch(p.name) and (p / META).is_file()]
    return sorted(found)


def remove_stale(outdir: Path) -> list[Path]:
    """Delete what a killed write left behind (temporary state folders and atomic-write temps)."""
    gone = [p for p in Path(outdir).glob(".state-*.tmp")] + [p for p in Path(outdir).glob(".*.tmp") if p.is_file()]
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


@contextmanager
def _quiet():
    """DCP warns that it runs in one process when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


@dataclass
class PendingSave:
    """A state being written (in the background under torchrun); `finish` makes it the newest state."""

    tmp: Path
    final: Path
    meta: dict
    keep: int
    future: Future | None = None

    def finish(self) -> Path:
        if self.future is not None:
            self.future.result()
        dist.barrier()  # every process's part is on disk
        dist.on_main(self._commit, f"finishing training state {self.final}")
        return self.final

    def _commit(self) -> None:
        atomic_write_text(self.tmp / META, json.dumps(self.meta))
        if self.final.exists():  # the same sample count written before (an interrupted run's rerun)
            remove_state(self.final)
        self.tmp.rename(self.final)
        for old in list_states(self.final.parent)[: -self.keep]:
            remove_state(old)


def remove_state(path: Path) -> None:
    """state.json first: a state folder is then incomplete (never read) before any shard goes."""
    (path / META).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def save_state(outdir: Path, samples: int, tensors: dict, meta: dict, keep: int, group=None) -> PendingSave:
    """Start writing a state; call `.finish()` on the result (at once, or before the next save).
    With a process `group` (dist.side_group) the write runs in a background thread after the
    tensors are copied to CPU memory (DCP async_save); otherwise it is done on return."""
    final = state_path(outdir, samples)
    tmp = final.parent / f".{final.name}.tmp"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    writer = HuggingFaceStorageWriter(str(tmp), save_distributed=True)
    pending = PendingSave(tmp, final, {"samples": samples, **meta}, keep)
    if group is not None:
        # A Future: async_save returns an AsyncSaveResponse only where it stages asynchronously (not asked here)
        pending.future = cast(Future, dcp.async_save(tensors, storage_writer=writer, process_group=group))
    else:
        with _quiet():
            dcp.save(tensors, storage_writer=writer, no_dist=dist.world() == 1)
    return pending


def read_meta(path: Path) -> dict:
    """A state's state.json; ResumeError when it is missing or damaged."""
    meta_file = Path(path) / META
    try:
        return json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"cannot read {meta_file} ({e})") from None


# Buffers added by later versions (the bitrate controller's smoothed bitrate): a state written
# before them lacks them, and they keep their initial values when it is resumed.
LATER_KEYS = ("controlled_bits",)


def load_tensors(path: Path, tensors: dict) -> dict:
    """Fill `tensors` (a template of the same keys, sharded like this run) in place from the state
    at `path`; entries named in LATER_KEYS that the state lacks are dropped from the template, and
    so are the optimizer entries of parameters that had no optimizer state when it was written
    (returned: {name: template entry}). Collective: a read error on any process raises
    ResumeError on every process."""
    try:
        have = set(HuggingFaceStorageReader(str(path)).read_metadata().state_dict_metadata)
        for part in ("model", "ema", "posthoc"):
            _drop_absent(tensors.get(part, {}), part, have)
        stateless = _drop_stateless(tensors.get("optim", {}).get("state", {}), "optim.state", have)
        with _quiet():
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=dist.world() == 1)
    except (Exception, CheckpointException) as e:  # a truncated or missing shard, another shape, ...
        raise ResumeError(f"cannot read training state {path}: {_reason(e)}") from None
    return stateless


def _drop_absent(tree: dict, prefix: str, have: set) -> None:
    for k in list(tree):
        if isinstance(tree[k], dict):
            _drop_absent(tree[k], f"{prefix}.{k}", have)
        elif k.rsplit(".", 1)[-1] in LATER_KEYS and f"{prefix}.{k}" not in have:
            del tree[k]


def _drop_stateless(state: dict, prefix: str, have: set) -> dict:
    """Take out of the template, and return, the optimizer entries of parameters that had no state
    when the state was written (no gradient had reached them: the unused prior network of a
    Gaussian-prior run). A state with no optimizer entries at all keeps the template whole, so it
    is refused rather than resumed with fresh moments."""
    if not any(k.startswith(prefix + ".") for k in have):
        return {}
    return {
        name: state.pop(name) for name in list(state) if not any(f"{prefix}.{name}.{k}" in have for k in state[name])
    }


def _reason(e: BaseException) -> str:
    """The last line of DCP's collected per-rank tracebacks (or of the error itself)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def read_state(path: Path) -> dict:
    """A state as full tensors in one process: {"model": {name: tensor}, "ema": ..., "optim": ...,
    **state.json}. For tools and tests; training loads through `load_tensors`."""
    reader = HuggingFaceStorageReader(str(path))
    md = reader.read_metadata()
    flat = {}
    for k, v in md.state_dict_metadata.items():
        assert isinstance(v, TensorStorageMetadata), f"{k}: not a tensor"  # the safetensors files hold tensors only
        flat[k] = torch.empty(v.size, dtype=v.properties.dtype)
    with _quiet():
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=True)
    out: dict = json.loads((Path(path) / META).read_text())
    for key, t in flat.items():
        group, name = key.split(".", 1)
        if group == "optim":
            name = name.removeprefix("state.")
        out.setdefault(group, {})[name] = t
    return out
