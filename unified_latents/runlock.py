"""One process per output folder: an exclusive lock on `<folder>/.ul-lock`.

The lock is `fcntl.flock` on the file, which the kernel releases when its holder dies (kill -9
included), so a lock can never outlive its process. The file also records who holds it (process
id, host, start time, command line): a second process pointed at a folder in use is told which
process has it, and a process that finds the record of a process that is gone (it was killed)
takes the folder over with a warning. A folder the process cannot write to is refused here,
before any work. Under torchrun only rank 0 takes the lock, for all the processes of the job.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".ul-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(owner: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return (
        f"process {owner.get('pid', '?')} on {owner.get('host', '?')}, started {started}: {owner.get('command', '?')}"
    )


class FolderLock:
    """`with FolderLock(folder, what):` holds `folder` for this process (created if missing);
    UserError when another live process holds it or the folder cannot be written."""

    def __init__(self, folder: Path, what: str = "this command"):
        self.folder, self.what = Path(folder), what
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(
                f"cannot write to {self.folder} ({e.strerror}): make it writable or pass another output folder"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = self._owner()
            os.close(self.fd)
            self.fd = None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"{self.folder} is in use by another run ({_describe(owner)}); wait for it to finish or "
                f"stop it, or give {self.what} another output folder"
            ) from None
        self._take_over(self._owner())
        return self

    def _owner(self) -> dict:
        try:
            text = os.pread(self.fd, 4096, 0).decode() if self.fd is not None else ""
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _take_over(self, previous: dict) -> None:
        """Record this process as the holder; say so when the last holder died holding it."""
        pid = previous.get("pid")
        if pid and pid != os.getpid() and previous.get("host") == socket.gethostname() and not _alive(pid):
            print(
                f"warning: {self.folder} was in use by {_describe(previous)}, which is gone (killed?); taking it over",
                file=sys.stderr,
                flush=True,
            )
        assert self.fd is not None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode(), 0)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder behind (the kernel drops the lock)
            os.close(self.fd)
            self.fd = None


def folder_lock(folder: Path, what: str, main: bool = True):
    """FolderLock on the main process of a job; a no-op context elsewhere (the main one holds it)."""
    from contextlib import nullcontext

    return FolderLock(folder, what) if main else nullcontext()
