"""The Python API (`unified_latents.load`): the same images and numbers as the command line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import unified_latents
from helpers import make_npz, run_ul
from unified_latents.errors import UserError

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    data, held = make_npz(tmp / "d.npz", n=40), make_npz(tmp / "h.npz", n=12, seed=1)
    assert run_ul("train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(tmp / "s1")).returncode == 0
    r = run_ul("train", "--stage", "base", *FAST, "--artifact", str(tmp / "s1" / "artifact.safetensors"),
               "--outdir", str(tmp / "b"))
    assert r.returncode == 0, r.stderr
    return tmp / "s1" / "artifact.safetensors", tmp / "b" / "artifact.safetensors", held


def test_sample_gives_the_images_ul_sample_writes(artifacts, tmp_path):
    _, base, _ = artifacts
    ul = unified_latents.load(base, device="cpu")
    images = ul.sample([0, 1, 5], classes=[3, 4], steps=3, decoder_steps=3)
    r = run_ul("sample", "--artifact", str(base), "--seeds", "0,1,5", "--classes", "3,4", "--base-steps", "3",
               "--decoder-steps", "3", "--outdir", str(tmp_path / "cli"))
    assert r.returncode == 0, r.stderr
    assert [im.size for im in images] == [(16, 16)] * 3 and images[0].mode == "L"  # tiny: 16x16 gray, no pad
    for seed, im in zip((0, 1, 5), images):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "cli" / f"{seed:06d}.png")))


def test_encode_decode_reconstruct_and_bits_agree_with_the_cli(artifacts, tmp_path):
    s1, _, held = artifacts
    ul = unified_latents.load(s1, device="cpu")
    arrays = np.load(held)["images"][:4]  # uint8 [N, 16, 16] at the data's size
    pil = [Image.fromarray(a).resize((36, 36)) for a in arrays]  # PIL input of another size: resized like training data
    z = ul.encode(arrays)
    assert z.shape[0] == 4 and torch.allclose(ul.encode(arrays), z)
    rec = ul.reconstruct(arrays, steps=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(rec, ul.decode(z, steps=3)))
    assert len(ul.reconstruct(pil, steps=3)) == 4
    bits = ul.bits(arrays)
    r = run_ul("reconstruct", "--artifact", str(s1), "--count", "4", "--steps", "3", "--json", "--out",
               str(tmp_path / "r.png"))
    assert r.returncode == 0, r.stderr
    assert float(bits.mean()) == pytest.approx(json.loads(r.stdout)["bits_per_image"], rel=1e-5)
    with pytest.raises(UserError, match="base"):
        ul.sample([0])
    with pytest.raises(UserError, match="one seed per example"):
        ul.bits(arrays, seeds=[1, 2])
