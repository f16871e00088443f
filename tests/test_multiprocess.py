"""`ul sample` and `ul eval` split over torchrun processes (gloo on CPU) give what one process gives."""

import json

import pytest
import torch
from helpers import make_npz, run_ul
from safetensors.torch import load_file
from test_stage2 import _stand_in_inception

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]


def _torchrun(*args):
    return run_ul(*args, nproc=2)


@pytest.fixture(scope="module")
def base_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    data, held = make_npz(tmp / "d.npz", n=40), make_npz(tmp / "h.npz", n=12, seed=1)
    r = run_ul("train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(tmp / "s1"))
    assert r.returncode == 0, r.stderr
    r = run_ul(
        "train",
        "--stage",
        "base",
        *FAST,
        "--artifact",
        str(tmp / "s1" / "artifact.safetensors"),
        "--outdir",
        str(tmp / "b"),
    )
    assert r.returncode == 0, r.stderr
    return tmp / "b" / "artifact.safetensors"


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_sample_on_two_processes_writes_the_same_bytes(base_artifact, tmp_path):
    common = [
        "sample",
        "--artifact",
        str(base_artifact),
        "--seeds",
        "0-10",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
        "--device",
        "cpu",
    ]
    for extra, name in (([], "files"), (["--npz"], "npz")):
        one, two = tmp_path / f"one-{name}", tmp_path / f"two-{name}"
        r = run_ul(*common, *extra, "--outdir", str(one))
        assert r.returncode == 0, r.stderr
        r = _torchrun(*common, *extra, "--outdir", str(two))  # shares of 5 and 6 seeds
        assert r.returncode == 0, r.stderr[-3000:]
        names = sorted(p.name for p in one.iterdir())
        assert names == sorted(p.name for p in two.iterdir()) and "samples.json" in names
        for n in names:
            assert (one / n).read_bytes() == (two / n).read_bytes(), n
    assert len(list((tmp_path / "two-files").glob("0000*.png"))) == 11


def test_eval_on_two_processes_matches_one(base_artifact, tmp_path):
    inc = _stand_in_inception(tmp_path / "inc.pt")
    common = [
        "eval",
        "--artifact",
        str(base_artifact),
        "--samples",
        "9",
        "--recon",
        "6",
        "--ref-count",
        "12",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--json",
        "--device",
        "cpu",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
    ]
    r = run_ul(*common, "--outdir", str(tmp_path / "one"), env={"UL_CACHE": str(tmp_path / "own-cache")})
    assert r.returncode == 0, r.stderr
    r2 = _torchrun(*common, "--outdir", str(tmp_path / "two"))  # reference features computed on two processes
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = json.loads(r.stdout), json.loads(r2.stdout)  # printed by rank 0 only
    for key in ("gfid", "kid", "rfid", "psnr", "base_bits_per_image", "prior_bits_per_image"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
    assert two["gfid_samples"] == 9
    for png in ("samples.png", "reconstructions.png"):
        assert (tmp_path / "one" / png).read_bytes() == (tmp_path / "two" / png).read_bytes(), png
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["gfid"] == two["gfid"]
    # the reference features were computed on two processes and cached: a one-process rerun reads them
    r = run_ul(*common, "--outdir", str(tmp_path / "again"))
    assert r.returncode == 0 and json.loads(r.stdout)["gfid"] == pytest.approx(one["gfid"], rel=1e-6), r.stderr


def test_reconstruct_on_two_processes_matches_one(base_artifact, tmp_path):
    s1 = base_artifact.parents[1] / "s1" / "artifact.safetensors"
    common = ["reconstruct", "--artifact", str(s1), "--count", "7", "--steps", "3", "--json", "--device", "cpu"]
    r = run_ul(*common, "--out", str(tmp_path / "one.png"))
    assert r.returncode == 0, r.stderr
    r2 = _torchrun(*common, "--out", str(tmp_path / "two.png"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = json.loads(r.stdout), json.loads(r2.stdout)
    assert two["images"] == 7 and all(
        two[k] == pytest.approx(one[k], rel=1e-6) for k in ("psnr", "ssim", "bits_per_image")
    )
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


def _stats(d):
    return [json.loads(ln) for ln in (d / "stats.jsonl").read_text().splitlines()]


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_encode_on_two_processes_writes_shards_that_stage2_reads_lazily(base_artifact, tmp_path):
    s1 = base_artifact.parents[1] / "s1" / "artifact.safetensors"
    data = base_artifact.parents[1] / "d.npz"
    one, two = tmp_path / "one.safetensors", tmp_path / "two"
    assert run_ul("encode", "--artifact", str(s1), "--dest", str(one), "--device", "cpu").returncode == 0
    r = _torchrun("encode", "--artifact", str(s1), "--dest", str(two), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in two.iterdir()) == [
        "index.json",
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
    ]
    whole = load_file(one)
    shards = [load_file(two / f"shard-0000{k}-of-00002.safetensors") for k in (0, 1)]
    for key in ("latents", "labels"):
        assert torch.equal(torch.cat([sh[key] for sh in shards]), whole[key]), key
    # stage 2 from the sharded folder (read row by row) and from the one file: the same training
    base = ["train", "--stage", "base", *FAST, "--artifact", str(s1), "--data", str(data), "--set", "train.log_every=1"]
    for name, cache in (("from-file", one), ("from-shards", two)):
        r = run_ul(*base, "--latents", str(cache), "--outdir", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    assert _stats(tmp_path / "from-file") == [
        {**rec, "sec": a["sec"]}
        for rec, a in zip(_stats(tmp_path / "from-shards"), _stats(tmp_path / "from-file"), strict=True)
    ]
    # a cache of other data than the run's is refused, whichever form it has
    other = make_npz(tmp_path / "other.npz", n=40, seed=7)
    for cache in (one, two):
        r = run_ul(
            "train",
            "--stage",
            "base",
            *FAST,
            "--artifact",
            str(s1),
            "--data",
            str(other),
            "--latents",
            str(cache),
            "--outdir",
            str(tmp_path / "refused"),
        )
        assert r.returncode == 2 and "other data" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_stage2_encodes_its_data_into_one_shard_per_process_and_trains_as_one_process(base_artifact, tmp_path):
    s1 = base_artifact.parents[1] / "s1" / "artifact.safetensors"
    base = ["--stage", "base", *FAST, "--artifact", str(s1), "--set", "train.log_every=1"]
    assert run_ul("train", *base, "--outdir", str(tmp_path / "one")).returncode == 0
    r = _torchrun("train", *base, "--outdir", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "latents").iterdir()) == [
        "index.json",
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
    ]
    one, two = _stats(tmp_path / "one"), _stats(tmp_path / "two")
    assert len(one) == len(two) > 1
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)


def test_a_shard_folder_without_its_index_is_refused(base_artifact, tmp_path):
    s1 = base_artifact.parents[1] / "s1" / "artifact.safetensors"
    dest = tmp_path / "lat"
    assert run_ul("encode", "--artifact", str(s1), "--dest", str(dest), "--device", "cpu").returncode == 0
    (dest / "index.json").unlink()  # as if the run was killed before rank 0 finished
    r = run_ul(
        "train",
        "--stage",
        "base",
        *FAST,
        "--artifact",
        str(s1),
        "--latents",
        str(dest),
        "--outdir",
        str(tmp_path / "b"),
    )
    assert r.returncode == 2 and "no complete latent cache" in r.stderr, r.stderr


def test_device_cuda_without_a_gpu_is_one_clear_error(base_artifact, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run_ul(
        "sample",
        "--artifact",
        str(base_artifact),
        "--seeds",
        "0-1",
        "--outdir",
        str(tmp_path / "o"),
        "--device",
        "cuda",
    )
    assert r.returncode == 2 and "no GPU" in r.stderr and "Traceback" not in r.stderr
