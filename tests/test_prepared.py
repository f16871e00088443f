"""Prepared datasets (`ul data prepare`): the same examples, labels and order as the source,
the same training, clear errors for unreadable files, resume after an interruption."""

import json

import numpy as np
import pytest
import torch
from helpers import make_npz, run_ul, ul_env
from PIL import Image

from unified_latents.config import apply_overrides
from unified_latents.data import load_images
from unified_latents.data import prepared as prep
from unified_latents.errors import DataError
from unified_latents.presets import get_preset


def _folder(root, n=6, seed=0):
    """Two classes of RGB photos-like images of different sizes (so resizing and cropping run)."""
    rng = np.random.default_rng(seed)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(18, 40, 2)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def _cfg(source, **over):
    over = {"data.channels": 3, "data.pad": 1, **over}
    return apply_overrides(get_preset("tiny"), [f"data.source={source}", *[f"{k}={v}" for k, v in over.items()]])


@pytest.mark.parametrize("kind", ["folder", "npz"])
def test_prepared_data_round_trips_images_labels_and_order(tmp_path, kind):
    src = _folder(tmp_path / "src") if kind == "folder" else make_npz(tmp_path / "d.npz", n=20)
    cfg = _cfg(src, **({} if kind == "folder" else {"data.channels": 1}))
    meta = prep.prepare(cfg.data, str(src), tmp_path / "prep", num_proc=2 if kind == "folder" else 1, progress=False)
    direct, lazy = load_images(cfg.data), load_images(cfg.data, str(tmp_path / "prep"))
    assert meta["count"] == len(direct) == len(lazy)
    assert torch.equal(lazy.images[torch.arange(len(lazy))], direct.images)  # PNG is lossless; pad applied on read
    assert torch.equal(lazy.images[2:5], direct.images[2:5]) and lazy.images.shape == tuple(direct.images.shape)
    assert torch.equal(lazy.labels, direct.labels)
    x, y = lazy.get(torch.tensor([3, 0, 3]))
    x0, y0 = direct.get(torch.tensor([3, 0, 3]))
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_training_from_prepared_data_equals_training_from_the_folder(tmp_path):
    src = _folder(tmp_path / "src")
    args = [
        "--preset",
        "tiny",
        "--no-progress",
        "--set",
        "data.channels=3",
        "--set",
        "data.pad=0",
        "--set",
        "train.total_samples=32",
        "--set",
        "train.log_every=1",
        "--set",
        "train.image_every=0",
    ]
    r = run_ul(
        "data",
        "prepare",
        str(src),
        "--dest",
        str(tmp_path / "prep"),
        "--preset",
        "tiny",
        "--set",
        "data.channels=3",
        "--set",
        "data.pad=0",
    )
    assert r.returncode == 0 and "prepared 12 images" in r.stdout, r.stderr
    runs = (("folder", src, 0), ("prepared", tmp_path / "prep", 0), ("workers", tmp_path / "prep", 2))
    for name, data, workers in runs:
        r = run_ul(
            "train", *args, "--data", str(data), "--set", f"data.workers={workers}", "--outdir", str(tmp_path / name)
        )
        assert r.returncode == 0, r.stderr

    def rec(d):
        return [
            {k: v for k, v in json.loads(ln).items() if k != "sec"}  # noqa: E731
            for ln in (tmp_path / d / "stats.jsonl").read_text().splitlines()
        ]

    assert rec("folder") == rec("prepared") == rec("workers")  # 2 DataLoader workers decoding ahead: the same


def test_unreadable_file_is_one_clear_error_or_listed_with_skip_bad(tmp_path):
    src = _folder(tmp_path / "src")
    bad = src / "dogs" / "03.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    r = run_ul(
        "data", "prepare", str(src), "--dest", str(tmp_path / "p1"), "--preset", "tiny", "--set", "data.channels=3"
    )
    assert r.returncode == 2 and str(bad) in r.stderr and "--skip-bad" in r.stderr and "Traceback" not in r.stderr
    r = run_ul(
        "data",
        "prepare",
        str(src),
        "--dest",
        str(tmp_path / "p2"),
        "--preset",
        "tiny",
        "--set",
        "data.channels=3",
        "--skip-bad",
    )
    assert r.returncode == 0 and f"skipped (unreadable): {bad}" in r.stdout and "prepared 11 images" in r.stdout
    lazy = load_images(_cfg(src, **{"data.pad": 0}).data, str(tmp_path / "p2"))
    assert lazy.labels.tolist() == [0] * 6 + [1] * 5 and lazy.skipped == [str(bad)]


def test_interrupted_prepare_resumes_at_the_first_missing_part(tmp_path, monkeypatch):
    import dataclasses

    from unified_latents.data import modality

    monkeypatch.setattr(modality, "IMAGE", dataclasses.replace(modality.IMAGE, part=5))  # images per part
    src, dest = _folder(tmp_path / "src"), tmp_path / "prep"
    cfg = _cfg(src)
    prep.prepare(cfg.data, str(src), dest, progress=False)
    assert sorted(p.name for p in dest.glob("part-*")) == ["part-00000", "part-00001", "part-00002"]
    first = (dest / "part-00000" / "skipped.json").stat().st_mtime_ns
    (dest / prep.MARKER).unlink()  # as if killed while writing part 2
    import shutil

    shutil.rmtree(dest / "part-00002")
    with pytest.raises(DataError, match="not prepared|no images|holds"):
        load_images(cfg.data, str(dest))  # an unfinished folder is not taken for a prepared one
    with pytest.raises(DataError, match="another prepare"):  # the parts left are of other settings
        prep.prepare(_cfg(src, **{"data.resolution": 20}).data, str(src), dest, progress=False)
    prep.prepare(cfg.data, str(src), dest, progress=False)
    assert (dest / "part-00000" / "skipped.json").stat().st_mtime_ns == first  # not redone
    assert torch.equal(load_images(cfg.data, str(dest)).images[torch.arange(12)], load_images(cfg.data).images)


def test_prepared_at_another_size_is_refused(tmp_path):
    src = _folder(tmp_path / "src")
    prep.prepare(_cfg(src).data, str(src), tmp_path / "prep", progress=False)
    with pytest.raises(DataError, match="prepare it again"):
        load_images(_cfg(src, **{"data.resolution": 32}).data, str(tmp_path / "prep"))


def test_a_datasets_source_prepares_like_the_folder_it_reads(tmp_path):
    # hf:NAME goes through datasets.load_dataset; a local image folder stands in for a Hub name offline.
    src = _folder(tmp_path / "src")
    cfg = _cfg(src)
    prep.prepare(cfg.data, f"hf:{src}", tmp_path / "hub", progress=False)
    prep.prepare(cfg.data, str(src), tmp_path / "dir", progress=False)
    a, b = load_images(cfg.data, str(tmp_path / "hub")), load_images(cfg.data, str(tmp_path / "dir"))
    assert torch.equal(a.images[torch.arange(12)], b.images[torch.arange(12)]) and torch.equal(a.labels, b.labels)
    with pytest.raises(DataError, match="data.image_column"):
        prep.prepare(_cfg(src, **{"data.image_column": "picture"}).data, f"hf:{src}", tmp_path / "x", progress=False)


def test_encoding_prepared_data_reads_it_a_batch_at_a_time(tmp_path, monkeypatch):
    from unified_latents.objectives import UnifiedLatents
    from unified_latents.stages import dist_encode

    src = _folder(tmp_path / "src")
    cfg = _cfg(src, **{"data.pad": 0})
    prep.prepare(cfg.data, str(src), tmp_path / "prep", progress=False)
    lazy, direct = load_images(cfg.data, str(tmp_path / "prep")), load_images(cfg.data)
    import dataclasses

    model = UnifiedLatents(cfg).eval()
    model.modality = dataclasses.replace(model.modality, encode_batch=5)
    asked = []
    real = prep.PreparedImages.__getitem__
    monkeypatch.setattr(prep.PreparedImages, "__getitem__", lambda self, i: asked.append(i) or real(self, i))
    z_lazy, z_direct = dist_encode(model, lazy, "cpu", False), dist_encode(model, direct, "cpu", False)
    assert torch.allclose(z_lazy.latents, z_direct.latents, atol=1e-6) and torch.equal(z_lazy.labels, z_direct.labels)
    assert [(i.start, i.stop) for i in asked] == [(0, 5), (5, 10), (10, 12)]  # never the whole set at once


def test_sigterm_to_the_whole_job_with_loader_workers_still_checkpoints(tmp_path):
    # A scheduler signals every process of the job, DataLoader workers included: they must leave
    # the stop to the training process, which finishes its step, checkpoints and exits.
    import os
    import signal
    import subprocess
    import sys
    import time

    src = _folder(tmp_path / "src")
    prep.prepare(_cfg(src, **{"data.pad": 0}).data, str(src), tmp_path / "prep", progress=False)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "unified_latents",
        "train",
        "--preset",
        "tiny",
        "--no-progress",
        "--data",
        str(tmp_path / "prep"),
        "--set",
        "data.channels=3",
        "--set",
        "data.pad=0",
        "--set",
        "data.workers=2",
        "--set",
        "train.total_samples=800000",
        "--set",
        "train.ckpt_every=0",
        "--set",
        "train.image_every=0",
        "--set",
        "train.log_every=1",
        "--outdir",
        str(out),
    ]
    env = ul_env()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "stats.jsonl").exists() and (out / "stats.jsonl").read_text()):
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "interrupted at" in stdout and "state saved" in stdout, stderr[-2000:]
    assert list(out.glob("state-*/state.json"))
