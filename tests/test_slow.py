"""Quality checks on the real default data: minutes on 2 CPU cores, opt in with `-m slow`."""

import json

import pytest
from conftest import has_fmnist
from helpers import run_ul

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_fmnist(), reason="needs dataset-fashion-mnist")]


def test_fmnist_stage1_beats_linear_codec(tmp_path):
    """The default stage-1 run: PSNR >= 21 dB on 500 test images at <= 200 bits per image."""
    out = tmp_path / "fm"
    r = run_ul("train", "--preset", "fmnist", "--outdir", str(out), "--no-progress", timeout=1800)
    assert r.returncode == 0, r.stderr
    r = run_ul("reconstruct", "--artifact", str(out / "artifact.safetensors"), "--count", "500", "--json", timeout=600)
    m = json.loads(r.stdout)
    assert m["psnr"] >= 21.0 and m["bits_per_image"] <= 200.0, m


def test_loss_factor_raises_bits_and_psnr(tmp_path):
    """Table 2's direction: a higher loss factor puts more bits in the latent and reconstructs better."""
    res = {}
    for lf in (8, 24):
        out = tmp_path / f"lf{lf}"
        r = run_ul(
            "train",
            "--preset",
            "fmnist",
            "--outdir",
            str(out),
            "--no-progress",
            "--set",
            "train.total_samples=48000",
            "--set",
            "diffusion.target_bits=0",
            "--set",
            f"diffusion.loss_factor={lf}",
            timeout=1800,
        )
        assert r.returncode == 0, r.stderr
        r = run_ul(
            "reconstruct", "--artifact", str(out / "artifact.safetensors"), "--count", "500", "--json", timeout=600
        )
        res[lf] = json.loads(r.stdout)
    assert res[24]["bits_per_image"] > res[8]["bits_per_image"] and res[24]["psnr"] > res[8]["psnr"], res


def test_target_bits_lands_within_15_percent(tmp_path):
    out = tmp_path / "tb"
    r = run_ul(
        "train",
        "--preset",
        "fmnist",
        "--outdir",
        str(out),
        "--no-progress",
        "--target-bits",
        "100",
        "--set",
        "train.total_samples=96000",
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr
    r = run_ul("reconstruct", "--artifact", str(out / "artifact.safetensors"), "--count", "500", "--json", timeout=600)
    assert abs(json.loads(r.stdout)["bits_per_image"] - 100) <= 15, r.stdout
