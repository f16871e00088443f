"""The fault drill: every long command killed with SIGKILL at seeded moments, then rerun as it was,
ends with the same files as an uninterrupted run (byte for byte, timings aside), and nothing
half-written is left for a later command to read. A fast subset runs by default; `-m slow`
drills every command at three kill points."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from helpers import make_npz, ul_command, ul_env

TIMING_KEYS = ("sec", "seconds", "time", "minutes", "wall", "started", "elapsed")
SKIP_FILES = (".ul-lock",)


def _env(tmp: Path) -> dict:
    return ul_env(UL_CACHE=str(tmp / "run" / "cache"))


def _cmd(args: list[str], torchrun: bool = False) -> list[str]:
    return ul_command(args, nproc=2 if torchrun else 0)


def _run(tmp: Path, args: list[str], torchrun: bool = False) -> float:
    t = time.monotonic()
    r = subprocess.run(_cmd(args, torchrun), env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return time.monotonic() - t


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if not any(t in k.lower() for t in TIMING_KEYS)}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def _safetensors(data: bytes):
    """(header as data, tensor bytes): safetensors' writer orders the header's keys as a hash map
    does, so the same tensors can come as other bytes; artifacts are written with sorted keys
    (and compared as bytes), training-state shards written by DCP are not."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = {k: json.loads(v) if v[:1] in "{[" else v for k, v in header.pop("__metadata__", {}).items()}
    return header, meta, data[8 + n :]


def _content(path: Path):
    """A file's content as compared: JSON (and JSON lines) without timing fields, a training
    state's safetensors shard by its tensors and header, else the bytes."""
    data = path.read_bytes()
    if path.suffix == ".safetensors" and path.parent.name.startswith("state-"):
        return _safetensors(data)
    if path.suffix == ".safetensors" and b'"distilled"' in data[:65536]:  # a student: its wall time aside
        header, meta, tensors = _safetensors(data)
        return header, _strip_timings(meta), tensors
    try:
        if path.suffix == ".json":
            return _strip_timings(json.loads(data))
        if path.suffix == ".jsonl":
            return [_strip_timings(json.loads(ln)) for ln in data.decode().splitlines() if ln.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return data
    return data


def _tree(root: Path) -> dict[str, object]:
    return {
        str(p.relative_to(root)): _content(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in SKIP_FILES and "tensorboard" not in p.parts
    }


def _assert_same_tree(ref: Path, got: Path, where: str) -> None:
    a, b = _tree(ref), _tree(got)
    assert sorted(a) == sorted(b), (
        f"{where}: files differ: only in the uninterrupted run {sorted(set(a) - set(b))}, "
        f"only after the kill {sorted(set(b) - set(a))}"
    )
    bad = [name for name in a if a[name] != b[name]]
    assert not bad, f"{where}: contents differ: {bad}"


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: each process's parent)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and everything it started, as when the machine loses power."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


def drill(tmp: Path, args: list[str], kills: int, seed: int, torchrun: bool = False, before=None) -> None:
    """Run `args` (writing under tmp/run) uninterrupted, keep the result; then `kills` times: a fresh
    tmp/run, the command killed with SIGKILL at a seeded moment of its duration, rerun to the end,
    the result compared with the uninterrupted one. `before(run)` prepares tmp/run each time."""
    run, ref = tmp / "run", tmp / "ref"
    (before or (lambda r: r.mkdir(parents=True)))(run)
    duration = _run(tmp, args, torchrun)
    run.rename(ref)
    rng = random.Random(seed)
    for _ in range(kills):
        (before or (lambda r: r.mkdir(parents=True)))(run)
        at = rng.uniform(0.15, 0.95) * duration
        p = subprocess.Popen(
            _cmd(args, torchrun),
            env=_env(tmp),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(at)
        _kill_tree(p.pid)  # torchrun's workers are session leaders of their own: not in p's group
        p.wait()
        _run(tmp, args, torchrun)
        _assert_same_tree(ref, run, f"{args[0]} killed at {at:.1f} s of {duration:.1f} s")
        shutil.rmtree(run)


# --------------------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Data, a stage-1 and a base artifact, and a stand-in Inception, made once."""
    from test_stage2 import _stand_in_inception

    d = tmp_path_factory.mktemp("fault-inputs")
    data = make_npz(d / "d.npz")
    common = ["--preset", "tiny", "--data", str(data), "--eval-data", str(data), "--no-progress"]
    env = ul_env(UL_CACHE=str(d / "cache"))
    for args in (
        ["train", *common, "--outdir", str(d / "s1")],
        [
            "train",
            "--stage",
            "base",
            *common,
            "--artifact",
            str(d / "s1" / "artifact.safetensors"),
            "--outdir",
            str(d / "s2"),
        ],
    ):
        r = subprocess.run(_cmd(args), env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return {
        "data": data,
        "s1": d / "s1" / "artifact.safetensors",
        "base": d / "s2" / "artifact.safetensors",
        "inception": _stand_in_inception(d / "inc.pt"),
        "common": common,
    }


def _train(inputs, run: Path) -> list[str]:
    return [
        "train",
        *inputs["common"],
        "--outdir",
        str(run),
        "--set",
        "train.ckpt_every=16",
        "--set",
        "train.image_every=32",
    ]


def _sample(inputs, run: Path) -> list[str]:
    return [
        "sample",
        "--artifact",
        str(inputs["base"]),
        "--seeds",
        "0-23",
        "--base-steps",
        "4",
        "--decoder-steps",
        "4",
        "--batch",
        "4",
        "--outdir",
        str(run / "samples"),
    ]


def test_train_killed_then_rerun_ends_as_uninterrupted(inputs, tmp_path):
    drill(tmp_path / "train", _train(inputs, tmp_path / "train" / "run"), kills=1, seed=1)


# --------------------------------------------------------------------------- every command, three kill points


def _commands(inputs, run: Path) -> dict[str, list[str]]:
    inc = ["--inception", str(inputs["inception"]), "--trust-torchscript"]
    return {
        "train": _train(inputs, run),
        "train-base": [
            "train",
            "--stage",
            "base",
            *inputs["common"],
            "--artifact",
            str(inputs["s1"]),
            "--outdir",
            str(run),
            "--set",
            "train.ckpt_every=16",
            "--set",
            "train.image_every=32",
        ],
        "encode": [
            "encode",
            "--artifact",
            str(inputs["s1"]),
            "--data",
            str(inputs["data"]),
            "--dest",
            str(run / "lat"),
        ],
        "data-prepare": [
            "data",
            "prepare",
            str(inputs["data"]),
            "--dest",
            str(run / "prep"),
            "--preset",
            "tiny",
            "--no-progress",
        ],
        "eval": [
            "eval",
            "--artifact",
            str(inputs["base"]),
            "--samples",
            "16",
            "--recon",
            "8",
            "--ref-count",
            "16",
            "--outdir",
            str(run / "eval"),
            *inc,
        ],
        "sample": _sample(inputs, run),
        "distill": [
            "distill",
            "--artifact",
            str(inputs["base"]),
            "--part",
            "decoder",
            "--from-steps",
            "8",
            "--steps",
            "4",
            "--samples-per-round",
            "256",
            "--batch",
            "32",
            "--out",
            str(run / "student.safetensors"),
        ],
        "export": ["export", "--artifact", str(inputs["base"]), "--to", str(run / "export")],
        "pipeline": [
            "pipeline",
            *inputs["common"],
            "--outdir",
            str(run / "p"),
            "--samples",
            "16",
            "--recon",
            "8",
            "--ref-count",
            "16",
            *inc,
        ],
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["train", "train-base", "encode", "data-prepare", "eval", "sample", "distill", "export", "pipeline"]
)
def test_every_long_command_killed_at_three_moments_ends_as_uninterrupted(inputs, tmp_path, name):
    drill(tmp_path, _commands(inputs, tmp_path / "run")[name], kills=3, seed=zlib.crc32(name.encode()))


@pytest.mark.slow
def test_a_torchrun_training_killed_then_rerun_ends_as_uninterrupted(inputs, tmp_path):
    drill(tmp_path, _train(inputs, tmp_path / "run"), kills=3, seed=7, torchrun=True)


# --------------------------------------------------------------------------- damaged inputs the project wrote


def _cut(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def _ul(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(list(args)), env=_env(tmp), capture_output=True, text=True, timeout=300)


def _clean_error(r: subprocess.CompletedProcess, *words: str) -> bool:
    return r.returncode == 2 and all(w in r.stderr for w in words) and "Traceback" not in r.stderr


def test_damaged_prepared_data_latent_shards_and_exports_are_one_error_naming_the_file_and_the_fix(inputs, tmp_path):
    prep, lat, exp = tmp_path / "prep", tmp_path / "lat", tmp_path / "export"
    prepare = ["data", "prepare", str(inputs["data"]), "--dest", str(prep), "--preset", "tiny"]
    assert _ul(tmp_path, *prepare).returncode == 0
    part = sorted(prep.glob("part-*"))[0]
    _cut(sorted(part.glob("*.arrow"))[0])
    train = ["train", "--preset", "tiny", "--data", str(prep), "--set", "train.total_samples=16", "--outdir"]
    r = _ul(tmp_path, *train, str(tmp_path / "a"))
    assert _clean_error(r, str(part), "ul data prepare"), r.stderr
    shutil.rmtree(part)  # as the message says: that part again, the others kept
    assert _ul(tmp_path, *prepare).returncode == 0
    r = _ul(tmp_path, *train, str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr

    encode = ["encode", "--artifact", str(inputs["s1"]), "--data", str(inputs["data"]), "--dest", str(lat)]
    assert _ul(tmp_path, *encode).returncode == 0
    shard = sorted(lat.glob("shard-*.safetensors"))[0]
    _cut(shard, 0.9)
    base = ["train", "--stage", "base", *inputs["common"], "--artifact", str(inputs["s1"]), "--latents", str(lat)]
    r = _ul(tmp_path, *base, "--outdir", str(tmp_path / "c"))
    assert _clean_error(r, str(shard), "ul encode"), r.stderr

    assert _ul(tmp_path, "export", "--artifact", str(inputs["base"]), "--to", str(exp)).returncode == 0
    shutil.rmtree(exp / "decoder")
    r = _ul(tmp_path, "sample", "--artifact", str(exp), "--seeds", "0", "--outdir", str(tmp_path / "s"))
    assert _clean_error(r, "decoder", "export it again"), r.stderr


def test_a_cut_feature_cache_is_rebuilt_with_a_warning_and_a_cut_snapshot_is_one_error(tmp_path, capsys):
    import numpy as np
    import torch

    from unified_latents.errors import UserError
    from unified_latents.eval.fid import read_features, write_features
    from unified_latents.files import write_safetensors
    from unified_latents.training.posthoc_ema import list_snapshots, snapshot_name

    cache = tmp_path / "features.npy"
    write_features(cache, np.ones((4, 8)))
    _cut(cache)
    assert read_features(cache) is None and not cache.exists()  # computed again by the caller
    assert "damaged" in capsys.readouterr().err
    snap = tmp_path / "posthoc-ema" / snapshot_name(0.05, 64)
    meta = {"sigma_rel": "0.05", "gamma": "6.9", "step": "8", "samples": "64"}
    write_safetensors(snap, {"w": torch.ones(1000)}, meta)
    _cut(snap)
    with pytest.raises(UserError, match=f"{snap.name} cannot be read"):
        list_snapshots(snap.parent)


# --------------------------------------------------------------------------- full and read-only disks


@pytest.fixture
def tmpfs():
    """`mount(where, bytes, ro=False)`: a tmpfs of that size at `where` (unmounted afterwards),
    `resize(where, bytes)`: more room, as when space is freed. Skips where mounting is refused
    (not root, no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(where: Path, size: int, ro: bool = False) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        opts = f"size={max(size, 4096)}" + (",ro" if ro else "")  # (size=0 would mean no limit)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): run the disk tests as root")
        mounted.append(where)
        return where

    def resize(where: Path, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    def umount(where: Path) -> None:
        subprocess.run(["umount", str(where)], check=True)
        mounted.remove(where)

    mount.resize, mount.umount = resize, umount  # type: ignore[attr-defined]
    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _footprint(root: Path) -> int:
    """Bytes a tree's files take on a tmpfs: each rounded up to whole pages (folders take none)."""
    return 4096 * sum(-(-p.stat().st_size // 4096) for p in root.rglob("*") if p.is_file())


def _leftovers(root: Path) -> list[str]:
    """Temporaries and unreadable results left in `root`: nothing here may be half written."""
    from safetensors import safe_open

    bad = [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]  # every temporary's name ends so
    for p in root.rglob("*.safetensors"):
        try:
            with safe_open(str(p), framework="pt") as f:
                [f.get_tensor(k) for k in f.keys()]  # noqa: B018 - every tensor's bytes are there
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{p}: {e}")
    for p in root.rglob("*.json"):
        try:
            json.loads(p.read_text())
        except (ValueError, OSError) as e:
            bad.append(f"{p}: {e}")
    return bad


def full_disk(tmp: Path, tmpfs, make_args, fractions: tuple[float, ...]) -> None:
    """For each fraction f: run the command with all its output (and caches) in a folder with room
    for f of what an uninterrupted run writes: one clean error saying to free space, nothing half
    written or temporary left; then, with room again, the same command finishes with the
    uninterrupted result."""
    run, ref = tmp / "run", tmp / "ref"  # every run at the same path (a run's config records its paths)
    run.mkdir(parents=True)
    args = make_args(run)
    _run(tmp, args)
    need = _footprint(run)
    run.rename(ref)
    for f in fractions:
        tmpfs(run, int(need * f))
        r = subprocess.run(_cmd(args), env=_env(tmp), capture_output=True, text=True, timeout=600)
        where = f"{args[0]} with {f:.0%} of the room it needs"
        assert r.returncode == 2 and "free space" in r.stderr and "Traceback" not in r.stderr, (
            f"{where}: rc {r.returncode}\n{r.stderr[-3000:]}"
        )
        assert r.stderr.count("error") == 1, f"{where}: one error, not {r.stderr}"
        assert not _leftovers(run), f"{where}: {_leftovers(run)}"
        tmpfs.resize(run, 2 * need + 4 * 2**20)
        _run(tmp, args)
        _assert_same_tree(ref, run, f"{where}, rerun after freeing space")
        tmpfs.umount(run)


def test_a_full_disk_is_one_error_and_the_rerun_after_freeing_space_ends_as_uninterrupted(inputs, tmp_path, tmpfs):
    # ul train is drilled on a full disk by tests/test_resume.py in the default run; all commands with -m slow
    full_disk(tmp_path, tmpfs, lambda run: _sample(inputs, run), (0.5,))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["train", "train-base", "encode", "data-prepare", "eval", "sample", "distill", "export", "pipeline"]
)
def test_every_writing_command_on_a_full_disk_at_three_fill_levels(inputs, tmp_path, tmpfs, name):
    full_disk(tmp_path, tmpfs, lambda run: _commands(inputs, run)[name], (0.2, 0.5, 0.85))


@pytest.mark.parametrize(
    "name", ["train", "train-base", "encode", "data-prepare", "eval", "sample", "distill", "export", "pipeline"]
)
def test_a_read_only_output_folder_is_one_error_before_any_work(inputs, tmp_path, tmpfs, name, capsys, monkeypatch):
    from unified_latents.cli.main import main

    ro = tmpfs(tmp_path / "ro", 1 << 20)
    args = _commands(inputs, ro / "run")[name]
    for p in (
        ro / "run",
        ro / "cache",
        ro / "run" / "samples",
    ):  # the output folders exist, then the disk turns read-only
        p.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    monkeypatch.setenv("UL_CACHE", str(ro / "cache"))
    t = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "writable" in err and str(ro) in err and err.count("error") == 1, err
    assert time.monotonic() - t < 5, f"{name} worked for {time.monotonic() - t:.1f} s before refusing"
    assert sorted(p.name for p in ro.rglob("*")) == ["cache", "run", "samples"]


def test_a_folder_fault_anywhere_is_one_error_and_anything_else_keeps_its_traceback(monkeypatch, capsys):
    """Space and permission failures are the user's to fix (one line saying how); other OS errors
    are bugs to report, so they keep their traceback."""
    import errno

    from unified_latents.cli import main as cli

    def failing(code):
        def cmd(args):
            raise OSError(code, os.strerror(code), "/data/out/file.bin")

        return cmd

    for code, words in ((errno.ENOSPC, "free space"), (errno.EDQUOT, "free space"), (errno.EROFS, "read-only")):
        monkeypatch.setitem(cli.COMMANDS, "info", failing(code))
        with pytest.raises(SystemExit) as e:
            cli.main(["info", "--preset", "tiny"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and "/data/out/file.bin" in err and err.count("\n") == 1, err
    monkeypatch.setitem(cli.COMMANDS, "info", failing(errno.EIO))
    with pytest.raises(OSError):
        cli.main(["info", "--preset", "tiny"])


def test_one_classifier_decides_the_fix_and_the_message():
    """The fix in a message and the one-line CLI error come from the same classification, so a
    wrapped error's text (pyarrow, DCP's per-rank errors) is told the same fix as an errno."""
    import errno

    from unified_latents.files import folder_fault, folder_fault_message, is_folder_fault, write_fix

    cases = [
        (OSError(errno.ENOSPC, "No space left on device", "/d/x"), "space", "free space"),
        (RuntimeError("rank 1: [Errno 28] No space left on device"), "space", "free space"),
        (OSError(errno.EACCES, "Permission denied", "/d/x"), "access", "make the folder writable"),
        (OSError(errno.EIO, "Input/output error", "/d/x"), None, "fix the cause above"),
    ]
    for e, kind, fix in cases:
        assert folder_fault(e) == kind and write_fix(e).startswith(fix), e
        assert is_folder_fault(e) == (isinstance(e, OSError) and kind is not None)
    assert folder_fault_message(cases[0][0]).startswith("could not write /d/x (No space left on device): free space")
    assert "check its permissions" in folder_fault_message(cases[2][0])
