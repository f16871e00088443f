"""The CLI end to end, and one clear error (no traceback) for each bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import has_fmnist
from helpers import make_npz, run_ul
from PIL import Image
from safetensors.torch import save_file

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=32", "--set", "train.ckpt_every=16"]


def _clear_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_train_resume_reconstruct_end_to_end(tmp_path):
    data = make_npz(tmp_path / "d.npz", n=48)
    held = make_npz(tmp_path / "held.npz", n=12, seed=1)
    out = tmp_path / "run"
    r = run_ul("train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(out), "--until", "16")
    assert r.returncode == 0, r.stderr
    r = run_ul("train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(out))
    assert r.returncode == 0 and "resuming" in r.stdout and "done: 32 samples" in r.stdout, r.stderr
    for name in ("config.json", "stats.jsonl", "artifact.safetensors", "state-000000000032"):
        assert (out / name).exists(), name
    assert list(out.glob("preview-*-reconstructions.png"))
    rec = [json.loads(ln) for ln in (out / "stats.jsonl").read_text().splitlines()]
    assert {"prior_nats", "decoder_nats", "bpp", "bits_per_image", "loss_factor"} <= set(rec[-1])
    r = run_ul("reconstruct", "--artifact", str(out / "artifact.safetensors"), "--count", "12", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["images"] == 12 and 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and m["bits_per_image"] > 0
    grid = Image.open(out / "reconstructions.png")
    assert grid.size[0] > grid.size[1]  # originals row above reconstructions row


@pytest.mark.skipif(not has_fmnist(), reason="needs the dataset-fashion-mnist Debian package")
def test_train_on_embedded_default_and_target_bits_flag(tmp_path):
    out = tmp_path / "fm"
    r = run_ul("train", *FAST, "--outdir", str(out), "--target-bits", "40")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["diffusion"]["target_bits"] == 40.0 and cfg["data"]["source"] == "fmnist"
    rec = [json.loads(ln) for ln in (out / "stats.jsonl").read_text().splitlines()]
    assert rec[-1]["loss_factor"] != 1.5  # the controller acted
    r = run_ul("reconstruct", "--artifact", str(out / "artifact.safetensors"), "--count", "8")
    assert r.returncode == 0 and "PSNR" in r.stdout and "bits/image" in r.stdout, r.stderr


def test_info_imagenet512_prints_counts():
    r = run_ul("info", "--preset", "imagenet512")
    assert r.returncode == 0, r.stderr
    assert "latent [32, 32, 32]" in r.stdout and "GFLOP" in r.stdout


def test_error_missing_data_path(tmp_path):
    _clear_error(
        run_ul("train", *FAST, "--data", str(tmp_path / "nope"), "--outdir", str(tmp_path / "o")),
        "does not exist",
        "--data",
    )


def test_error_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _clear_error(
        run_ul("train", *FAST, "--data", str(tmp_path / "empty"), "--outdir", str(tmp_path / "o")), "no images"
    )


def _folder(tmp_path, n=6):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(d / f"im{i}.png")
    return d


def test_error_corrupt_image_names_file_and_skip_bad_counts(tmp_path):
    d = _folder(tmp_path)
    good = (d / "im0.png").read_bytes()
    (d / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    r = run_ul("train", *FAST, "--data", str(d), "--outdir", str(tmp_path / "o"))
    _clear_error(r, "broken.png", "--skip-bad")
    assert not (tmp_path / "o" / "artifact.safetensors").exists()
    r = run_ul(
        "train",
        *FAST,
        "--data",
        str(d),
        "--outdir",
        str(tmp_path / "o2"),
        "--skip-bad",
        "--set",
        "train.total_samples=16",
    )
    assert r.returncode == 0 and "skipped 1 unreadable" in r.stdout, r.stderr


def test_error_unknown_preset(tmp_path):
    _clear_error(run_ul("train", "--preset", "huge", "--outdir", str(tmp_path)), "unknown preset", "fmnist")


def test_error_unknown_key_and_wrong_type(tmp_path):
    _clear_error(
        run_ul("train", *FAST, "--set", "train.lrr=1", "--outdir", str(tmp_path)), "unknown config key", "train.lrr"
    )
    _clear_error(
        run_ul("train", *FAST, "--set", "train.lr=fast", "--outdir", str(tmp_path)), "train.lr", "expected float"
    )
    _clear_error(
        run_ul("train", *FAST, "--set", "train.batch=2.5", "--outdir", str(tmp_path)), "train.batch", "expected int"
    )


@pytest.mark.parametrize(
    "override,rule",
    [
        ("train.batch=0", "greater than 0"),
        ("train.lr=-1e-3", "greater than 0"),
        ("train.lr=.nan", "finite"),
        ("sample.guidance=-2", "0 or more"),
        ("model.decoder.dropout=1", "in [0, 1)"),
        ("diffusion.lam_x_min=20", "below diffusion.lam_x_max"),
    ],
)
def test_error_value_out_of_range(tmp_path, override, rule):
    # refused where the config is parsed, before anything is written
    _clear_error(
        run_ul("train", *FAST, "--set", override, "--outdir", str(tmp_path / "o")), override.split("=")[0], rule
    )
    assert not (tmp_path / "o").exists()


def test_every_preset_passes_the_range_checks():
    from unified_latents.config_ranges import check_ranges
    from unified_latents.presets import PRESETS, get_preset

    for name in PRESETS:
        for stage in ("latents", "base"):
            check_ranges(get_preset(name, stage))


def test_error_incompatible_resume(tmp_path):
    data = make_npz(tmp_path / "d.npz", n=32)
    out = tmp_path / "run"
    assert run_ul("train", *FAST, "--data", str(data), "--outdir", str(out), "--until", "16").returncode == 0
    before = sorted(p.name for p in out.iterdir())
    r = run_ul("train", *FAST, "--data", str(data), "--outdir", str(out), "--set", "model.latent_channels=3")
    _clear_error(r, "incompatible", "model.latent_channels", "--outdir")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    # a compatible change (training length) resumes
    r = run_ul("train", *FAST, "--data", str(data), "--outdir", str(out), "--set", "train.total_samples=48")
    assert r.returncode == 0 and "done: 48 samples" in r.stdout, r.stderr


def test_error_artifact_not_ours_or_truncated(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    _clear_error(run_ul("reconstruct", "--artifact", str(foreign)), "not a unified-latents artifact")
    data = make_npz(tmp_path / "d.npz", n=16)
    out = tmp_path / "run"
    assert (
        run_ul("train", *FAST, "--data", str(data), "--outdir", str(out), "--set", "train.total_samples=8").returncode
        == 0
    )
    blob = (out / "artifact.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) - 100])
    _clear_error(run_ul("reconstruct", "--artifact", str(cut)), "truncated")
    _clear_error(run_ul("reconstruct", "--artifact", str(tmp_path / "missing.safetensors")), "does not exist")


def test_debug_shows_traceback(tmp_path):
    r = run_ul("train", "--preset", "huge", "--outdir", str(tmp_path), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
