"""Files written atomically (a temp file in the same folder, fsync, rename: never half written) and
safetensors read with a clear error."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
ACCESS_ERRNOS = (errno.EACCES, errno.EROFS, errno.EPERM)


def folder_fault(e: BaseException) -> str | None:
    """Why a write failed, when the user can fix it: "space" (errno ENOSPC/EDQUOT, or its text
    inside a wrapped error: pyarrow, DCP's per-rank errors) or "access" (permission, read-only
    disk); None for any other cause."""
    text = f"{e} {getattr(e, 'strerror', '')}"
    code = getattr(e, "errno", None)
    if code in SPACE_ERRNOS or "No space left" in text or "quota" in text:
        return "space"
    if code in ACCESS_ERRNOS or "Permission denied" in text or "Read-only" in text:
        return "access"
    return None


WRITE_FIXES = {"space": "free space", "access": "make the folder writable"}


def write_fix(e: BaseException) -> str:
    """What to do about a failed write, for a message that goes on "...: <fix> and rerun"."""
    return WRITE_FIXES.get(
        folder_fault(e) or "", "fix the cause above (if it names no folder problem, please report it as a bug)"
    )


def is_folder_fault(e: BaseException) -> bool:
    """A write that failed for want of space or permission (not a bug: the user can fix it)."""
    return isinstance(e, OSError) and folder_fault(e) is not None


def folder_fault_message(e: OSError) -> str:
    """One line for a write that failed for want of space or permission (is_folder_fault)."""
    what = f" {e.filename}" if getattr(e, "filename", None) else ""
    if folder_fault(e) == "space":
        return (
            f"could not write{what} ({e.strerror or e}): free space and rerun the same command (what was "
            "written completely is kept; no unfinished file is left behind)"
        )
    return (
        f"cannot access{what} ({e.strerror or e}): check its permissions and that its disk is not "
        "read-only, then rerun the same command"
    )


def atomic_write(path: Path, write_fn) -> None:
    """Write via `write_fn(tmp_path)` to a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write_fn(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as e:
            said = _with_cause(e, path)
            if said is e:
                raise
            raise said from e
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def temp_folder(tmp: Path) -> Iterator[Path]:
    """A fresh folder `tmp` to build an output in before it is renamed into place; removed again
    if building it fails (a full disk leaves no half-built folder behind)."""
    tmp = Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _with_cause(e: OSError, path: Path) -> OSError:
    """A short write reported without an errno (numpy's `tofile`: "1024 requested and 496
    written") is a full disk when the folder has no room left: said as ENOSPC, naming the file."""
    if e.errno is not None:
        return e
    try:
        st = os.statvfs(path.parent)
        full = st.f_bavail * st.f_frsize < 64 * 1024
    except OSError:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else e


TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write's temporaries: .NAME.XXXXXXXX.tmp


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporaries a killed atomic_write left directly in `folder` (only call it with
    the folder held: runlock.FolderLock; sub-folders are other commands' and are left to them)."""
    gone = [p for p in Path(folder).glob(".*.tmp") if p.is_file() and TEMP_RE.match(p.name)]
    for p in gone:
        try:
            p.unlink()
        except OSError:  # another user's, or already gone: not ours to insist on
            continue
    return gone


def canonical_header(blob: bytes) -> tuple:
    """The parts of the same safetensors file with its JSON header's keys sorted. safetensors
    writes the metadata in hash-map order, which changes from process to process; sorted, equal
    tensors and metadata give equal bytes (so a file's hash names its content). Data offsets
    are explicit in the header, so the tensor bytes do not move; the header keeps its length
    (padded with spaces, as the format allows) and so its 8-byte alignment."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for a header that we parsed: same content, same separators
        return (blob,)
    return blob[:8], text, b" " * (n - len(text)), memoryview(blob)[8 + n :]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically, its header in canonical (sorted) order: the same
    tensors and metadata always give the same bytes."""
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)

    def write(tmp) -> None:
        with open(tmp, "wb") as f:
            for part in canonical_header(blob):
                f.write(part)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log. A line that does not parse (torn by a kill or a full
    disk mid-write) is skipped with a warning on stderr rather than failing a resume or a report."""
    out, bad = [], 0
    for ln in Path(path).read_text().splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    if bad:
        print(f"warning: {path}: skipped {bad} unreadable line(s) (a write cut short?)", file=sys.stderr)
    return out


def read_safetensors(path: Path, error: type[Exception], fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file; `error` naming the file and `fix` otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise error(f"{path} is not a readable safetensors file ({e}); it may be truncated: {fix}") from None
