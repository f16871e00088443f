"""One run per output folder (unified_latents/runlock.py): a live holder is named, a killed one's
folder is taken over with a warning, an unwritable folder is refused before any work."""

import errno
import os
import signal
import subprocess
import sys

import pytest
from helpers import ul_command, ul_env

from unified_latents.errors import UserError
from unified_latents.runlock import LOCK_NAME, FolderLock

HOLD = (
    "import sys, time\nfrom unified_latents.runlock import FolderLock\nwith FolderLock(sys.argv[1]):\n"
    "    print('held', flush=True)\n    time.sleep(120)\n"
)


def _holder(folder, wait: bool = True):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ul_env(),
    )
    if wait:
        assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    p = _holder(folder)
    try:
        with pytest.raises(UserError, match=rf"in use by another run \(process {p.pid} on .*another output folder"):
            with FolderLock(folder, "ul train"):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with FolderLock(folder):  # the kernel dropped the killed holder's lock
        pass
    capsys.readouterr()
    with FolderLock(folder):  # a clean exit leaves no record: no warning the next time
        pass
    assert "taking it over" not in capsys.readouterr().err


def test_the_takeover_warning_names_the_dead_process(tmp_path, capsys):
    folder = tmp_path / "run"
    p = _holder(folder)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with FolderLock(folder):
        err = capsys.readouterr().err
    assert f"process {p.pid}" in err and "gone (killed?); taking it over" in err
    assert (folder / LOCK_NAME).read_text() == ""  # released cleanly


def test_one_process_may_hold_several_folders_a_folder_twice_and_again_after_release(tmp_path):
    with FolderLock(tmp_path / "a"), FolderLock(tmp_path / "b"):
        with FolderLock(tmp_path / "a"):  # nested: ul pipeline evaluating into the folder it holds
            pass
        p = _holder(tmp_path / "a", wait=False)  # still held by the outer hold: another process cannot have it
        assert p.wait(timeout=60) != 0
    with FolderLock(tmp_path / "a"):
        pass


def test_an_unwritable_folder_is_one_error_before_any_work(tmp_path, monkeypatch):
    real = os.open

    def refused(path, *a, **k):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "open", refused)  # the tests run as root, for whom chmod does not refuse
    with pytest.raises(UserError, match="cannot write to .*Permission denied.*make the folder writable"):
        with FolderLock(tmp_path / "ro"):
            pass


def test_a_second_ul_train_in_the_same_folder_is_one_error_naming_the_first(tmp_path):
    from helpers import make_npz, run_ul

    data = make_npz(tmp_path / "d.npz")
    args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--outdir",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        "train.total_samples=4096",
    ]
    env = ul_env()
    first = subprocess.Popen(
        ul_command(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert first.stdout.readline()  # its first training line: it holds the folder
        second = run_ul(*args)
        assert second.returncode == 2, second.stderr
        assert f"in use by another run (process {first.pid}" in second.stderr
        assert second.stderr.count("error:") == 1 and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
