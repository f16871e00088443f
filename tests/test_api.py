"""The Python API (`unified_latents.load`): the same images and numbers as the command line."""

import json

import numpy as np
import pytest
import torch
from helpers import make_npz, run_ul
from PIL import Image

import unified_latents
from unified_latents.errors import UserError

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    data, held = make_npz(tmp / "d.npz", n=40), make_npz(tmp / "h.npz", n=12, seed=1)
    assert (
        run_ul("train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(tmp / "s1")).returncode
        == 0
    )
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
    return tmp / "s1" / "artifact.safetensors", tmp / "b" / "artifact.safetensors", held


def test_sample_gives_the_images_ul_sample_writes(artifacts, tmp_path):
    _, base, _ = artifacts
    ul = unified_latents.load(base, device="cpu")
    images = ul.sample([0, 1, 5], classes=[3, 4], steps=3, decoder_steps=3)
    r = run_ul(
        "sample",
        "--artifact",
        str(base),
        "--seeds",
        "0,1,5",
        "--classes",
        "3,4",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
        "--outdir",
        str(tmp_path / "cli"),
    )
    assert r.returncode == 0, r.stderr
    assert [im.size for im in images] == [(16, 16)] * 3 and images[0].mode == "L"  # tiny: 16x16 gray, no pad
    for seed, im in zip((0, 1, 5), images, strict=True):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "cli" / f"{seed:06d}.png")))


def test_encode_decode_reconstruct_and_bits_agree_with_the_cli(artifacts, tmp_path):
    s1, _, held = artifacts
    ul = unified_latents.load(s1, device="cpu")
    arrays = np.load(held)["images"][:4]  # uint8 [N, 16, 16] at the data's size
    pil = [Image.fromarray(a).resize((36, 36)) for a in arrays]  # PIL input of another size: resized like training data
    z = ul.encode(arrays)
    assert z.shape[0] == 4 and torch.allclose(ul.encode(arrays), z)
    rec = ul.reconstruct(arrays, steps=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(rec, ul.decode(z, steps=3), strict=True))
    assert len(ul.reconstruct(pil, steps=3)) == 4
    bits = ul.bits(arrays)
    r = run_ul(
        "reconstruct", "--artifact", str(s1), "--count", "4", "--steps", "3", "--json", "--out", str(tmp_path / "r.png")
    )
    assert r.returncode == 0, r.stderr
    assert float(bits.mean()) == pytest.approx(json.loads(r.stdout)["bits_per_image"], rel=1e-5)
    with pytest.raises(UserError, match="base"):
        ul.sample([0])
    with pytest.raises(UserError, match="one seed per example"):
        ul.bits(arrays, seeds=[1, 2])


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_export_folder_loads_everywhere_an_artifact_does(artifacts, tmp_path):
    s1, base, _ = artifacts
    r = run_ul("export", "--artifact", str(base), "--to", str(tmp_path / "ul-tiny"))
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "ul-tiny"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "base",
        "config.json",
        "decoder",
        "encoder",
        "extras.safetensors",
        "prior",
        "unified_latents.json",
    ]
    for comp in ("encoder", "prior", "decoder", "base"):
        assert {p.name for p in (folder / comp).iterdir()} == {"config.json", "model.safetensors"}
    card = (folder / "README.md").read_text()
    assert "library_name: unified-latents" in card and "unified_latents.load" in card
    # the CLI and the API take the folder as they take the file: the same samples
    for art, out in ((base, "file"), (folder, "folder")):
        r = run_ul(
            "sample",
            "--artifact",
            str(art),
            "--seeds",
            "0-2",
            "--base-steps",
            "3",
            "--decoder-steps",
            "3",
            "--outdir",
            str(tmp_path / out),
        )
        assert r.returncode == 0, r.stderr
    for seed in range(3):
        assert (tmp_path / "file" / f"{seed:06d}.png").read_bytes() == (
            tmp_path / "folder" / f"{seed:06d}.png"
        ).read_bytes()
    a, b = unified_latents.load(base, "cpu"), unified_latents.load(folder, "cpu")
    for (k, v), (k2, v2) in zip(
        sorted(a.model.state_dict().items()), sorted(b.model.state_dict().items()), strict=True
    ):
        assert k == k2 and torch.equal(v, v2), k
    # a stage-1 export: reconstruct from it
    r = run_ul("export", "--artifact", str(s1), "--to", str(tmp_path / "s1-export"))
    assert r.returncode == 0 and not (tmp_path / "s1-export" / "base").exists(), r.stderr
    r = run_ul(
        "reconstruct",
        "--artifact",
        str(tmp_path / "s1-export"),
        "--count",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "r.png"),
    )
    assert r.returncode == 0, r.stderr


def test_hub_names_download_and_push_through_huggingface_hub(artifacts, tmp_path, monkeypatch):
    # offline: huggingface_hub's download and upload are replaced by stand-ins that record the calls
    import huggingface_hub

    from unified_latents import export as ex

    _, base, _ = artifacts
    folder = ex.export(base, tmp_path / "ul-tiny")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(folder))
    ul = unified_latents.load("someone/ul-tiny", device="cpu")
    assert asked == ["someone/ul-tiny"] and len(ul.sample([0], steps=2, decoder_steps=2)) == 1
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert ex.push(folder, "someone/ul-tiny") == "https://huggingface.co/someone/ul-tiny"
    assert calls == [("create", "someone/ul-tiny", False, True), ("upload", str(folder), "someone/ul-tiny")]
    with pytest.raises(UserError, match="user/name"):
        ex.push(folder, "not a repo")


def test_diffusers_pipeline_and_autoencoder_surface(artifacts, tmp_path):
    pytest.importorskip("diffusers")
    from unified_latents import export as ex
    from unified_latents.diffusers_pipeline import UnifiedLatentsAutoencoder, UnifiedLatentsPipeline

    _, base, held = artifacts
    folder = ex.export(base, tmp_path / "ul-tiny")
    pipe = UnifiedLatentsPipeline.from_pretrained(str(folder))
    gens = [torch.Generator().manual_seed(s) for s in (0, 4)]
    out = pipe(class_labels=[2, 9], num_inference_steps=3, decoder_steps=3, generator=gens)
    r = run_ul(
        "sample",
        "--artifact",
        str(base),
        "--seeds",
        "0,4",
        "--classes",
        "2,9",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
        "--outdir",
        str(tmp_path / "cli"),
    )
    assert r.returncode == 0, r.stderr
    for seed, im in zip((0, 4), out.images, strict=True):  # the pipeline's images are `ul sample`'s for the same seeds
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "cli" / f"{seed:06d}.png")))
    # the KL-VAE surface: encode(x).latent_dist at log-SNR 5, decode(z).sample from the diffusion decoder
    vae = UnifiedLatentsAutoencoder.from_pretrained(str(folder))
    x = torch.from_numpy(np.load(held)["images"][:3]).float()[:, None] / 127.5 - 1
    dist = vae.encode(x).latent_dist
    s1 = vae.stage1
    z_clean = s1.encode(x)
    lam0 = torch.tensor(s1.cfg.diffusion.lam0, dtype=torch.float64)
    torch.testing.assert_close(dist.mode(), torch.sigmoid(lam0).sqrt().float() * z_clean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        dist.std, torch.full_like(z_clean, float(torch.sigmoid(-lam0).sqrt())), rtol=1e-5, atol=0
    )
    z0 = dist.sample(torch.Generator().manual_seed(0))
    dec = vae.decode(z0, seeds=[7, 8, 9]).sample
    assert dec.shape == x.shape and torch.equal(dec, s1.decode(z0, [7, 8, 9])) and vae.config.scaling_factor == 1.0


def test_an_export_index_naming_other_components_is_refused(artifacts, tmp_path):
    from unified_latents import export as ex
    from unified_latents.errors import ArtifactError
    from unified_latents.training.checkpoint import load_artifact

    folder = ex.export(artifacts[0], tmp_path / "s1")  # a stage-1 export: no eval.json is claimed for it
    assert "## Metrics" not in (folder / "README.md").read_text()
    index = json.loads((folder / "unified_latents.json").read_text())
    index["components"]["../.."] = "encoder."  # a downloaded folder must not send us outside it
    (folder / "unified_latents.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="does not have"):
        load_artifact(folder)
