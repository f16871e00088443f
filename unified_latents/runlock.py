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
import functools
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from . import dist
from .errors import UserError
from .files import remove_stale_temps, write_fix

LOCK_NAME = ".ul-lock"
_HELD: dict[Path, int] = {}  # lock files this process holds -> how many times (nested holds are free)
_FDS: set[int] = set()  # their descriptors
UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)  # flock refused by the file system


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's lock; closing its copies means the
    lock goes with the parent, not with the last of its children."""
    for fd in list(_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _FDS.clear()
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


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
    UserError when another live process holds it or the folder cannot be written. Once held, the
    temporaries a killed write left under it are removed (files.remove_stale_temps). `name`: the
    lock file's name, for an output that is one entry of a shared folder (ul export's folder,
    which is replaced whole, is held by `.NAME.ul-lock` beside it); `clean` off leaves the
    folder's other entries alone."""

    def __init__(self, folder: Path, what: str = "this command", name: str = LOCK_NAME, clean: bool = True):
        self.folder, self.what, self.name, self.clean = Path(folder), what, name, clean
        self.fd: int | None = None
        self.made: list[Path] = []  # what taking the lock created (the folder, the lock file)

    def __enter__(self) -> FolderLock:
        import fcntl

        key = (self.folder / self.name).resolve()
        if key in _HELD:  # this process holds it already (ul pipeline evaluating into its own folder)
            _HELD[key] += 1
            return self
        try:
            missing = [p for p in (*reversed(self.folder.parents), self.folder) if not p.exists()]
            self.made = [*missing, *([] if (self.folder / self.name).exists() else [self.folder / self.name])]
            self.folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.folder / self.name, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(
                f"cannot write to {self.folder} ({e.strerror}): {write_fix(e)} or pass another output folder"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = self._owner()
            self._close()
            if e.errno in UNSUPPORTED:  # a file system without flock: run unguarded rather than not at all
                print(
                    f"warning: {self.folder} cannot be locked ({e.strerror}); nothing stops a second run from "
                    "using it at the same time",
                    file=sys.stderr,
                    flush=True,
                )
                return self
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"{self.folder} is in use by another run ({_describe(owner)}); wait for it to finish or "
                f"stop it, or give {self.what} another output folder"
            ) from None
        try:
            self._take_over(self._owner())
            if self.clean:
                for p in remove_stale_temps(self.folder):
                    print(f"removed {p}, left by an interrupted write", file=sys.stderr, flush=True)
        except BaseException:
            self._close()
            raise
        _HELD[key] = 1
        _FDS.add(self.fd)
        return self

    def _close(self) -> None:
        if self.fd is not None:
            _FDS.discard(self.fd)
            os.close(self.fd)
            self.fd = None

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
        key = (self.folder / self.name).resolve()
        if _HELD.get(key, 0) > 1:
            _HELD[key] -= 1
            return
        _HELD.pop(key, None)
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder behind (the kernel drops the lock)
            if exc and exc[0] is not None:  # failed (bad input): leave no folder or lock file it created
                self._unmake()
            self._close()

    def _unmake(self) -> None:
        for p in reversed(self.made):
            try:
                p.rmdir() if p.is_dir() else p.unlink()
            except OSError:  # the folder holds what the command wrote before failing: keep it
                return


@contextmanager
def job_lock(folder: Path, what: str, **kw) -> Iterator[None]:
    """FolderLock held by rank 0 for the whole job (every process when there is one): all the
    processes learn whether rank 0 got it, so a refused job stops everywhere instead of hanging."""
    lock = FolderLock(folder, what, **kw) if dist.is_main() else None
    err: BaseException | None = None
    if lock is not None:
        try:
            lock.__enter__()
        except Exception as e:  # noqa: BLE001 - re-raised below, after every process knows
            err = e
    if not dist.all_agree(err is None):
        raise err or UserError(f"{folder}: rank 0 of this job could not take it; see its message")
    try:
        yield
    except BaseException as e:
        if lock is not None:
            lock.__exit__(type(e), e, e.__traceback__)  # a failed command leaves no folder it created
        raise
    if lock is not None:
        lock.__exit__(None, None, None)


P = ParamSpec("P")
R = TypeVar("R")


def holding(where: str | Callable[[dict], Path | None], what: str, beside: bool | Callable[[Path], bool] = False):
    """Decorator: the function runs with the output it writes held by its job (job_lock). `where`:
    the name of the argument giving the output folder, or a function of the bound arguments giving
    it (None: nothing to hold). `beside` (or a test of the path): the output is one entry of its
    parent folder (a file, or a folder replaced whole), held by `.NAME.ul-lock` there, the
    parent's other entries left alone; otherwise the output folder itself is held."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            out = where(bound.arguments) if callable(where) else bound.arguments[where]
            if out is None:
                return fn(*args, **kwargs)
            out = Path(out)
            if beside(out) if callable(beside) else beside:
                with job_lock(out.parent, what, name=f".{out.name}.ul-lock", clean=False):
                    return fn(*args, **kwargs)
            with job_lock(out, what):
                return fn(*args, **kwargs)

        return run

    return deco
