"""Baselines (paper Table 1, Fig. 4): pixel diffusion and the SD-style KL-VAE with scaled latents."""

import json

import pytest
import torch
from helpers import make_npz, run_ul

from unified_latents.config import apply_overrides
from unified_latents.diffusion import alpha_sigma
from unified_latents.errors import ConfigError
from unified_latents.objectives import BaseModel, UnifiedLatents
from unified_latents.objectives.noise import BatchNoise
from unified_latents.objectives.pixel import PixelSpace
from unified_latents.objectives.registry import preset_config
from unified_latents.presets import baseline_overrides, get_preset


def test_pixel_diffusion_is_the_base_model_on_pixels():
    cfg = preset_config("fmnist", "pixel")
    model = BaseModel(cfg, PixelSpace(cfg))
    assert model.z_shape == model.x_shape == (1, 32, 32)
    assert cfg.model.base.patch == 4  # the same 8x8 token grid as on the 4x8x8 latents
    d = cfg.diffusion  # the pixel range and the resolution shift of the UL decoder (UL_SPEC 1)
    assert (model.sched.lam_min, model.sched.lam_max, model.sched.shift) == (
        d.lam_x_min,
        d.lam_x_max,
        cfg.pixel_shift(),
    )
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.equal(model.stage1.encode(x), x) and torch.equal(model.stage1.decode(x * 3), (x * 3).clamp(-1, 1))
    out = model.generate([0, 1], torch.tensor([0, 1]), steps=2)
    assert out.shape == (2, 1, 32, 32) and out.abs().max() <= 1
    with pytest.raises(ConfigError, match="baseline"):
        baseline_overrides("sd")


def test_latent_scale_multiplies_latents_before_the_base_model():
    s1 = UnifiedLatents(get_preset("tiny")).eval()
    torch.manual_seed(0)
    a = BaseModel(get_preset("tiny", "base"), s1)
    torch.manual_seed(0)
    b = BaseModel(get_preset("tiny", "base"), s1)
    for p in a.net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    b.net.load_state_dict(a.net.state_dict())
    a.latent_scale.fill_(2.5)
    z = torch.randn(4, *a.z_shape)
    noise = a.draw_noise(BatchNoise(1, 4))
    torch.testing.assert_close(a(z, None, noise).total, b(2.5 * z, None, noise).total)
    # generation undoes the scale before decoding: the base model's z0 / scale reaches the decoder
    seen = {}
    s1.decode = lambda z0, *args, **kw: seen.setdefault("z0", z0)
    a.generate([0, 1], steps=2)
    torch.testing.assert_close(seen["z0"] * 2.5, a.sample_latents([0, 1], steps=2))
    # weights saved before the scale existed still load (as scale 1)
    state = {k: v for k, v in b.state_dict().items() if k != "latent_scale"}
    b.latent_scale.fill_(7.0)
    b.load_state_dict(state)
    assert float(b.latent_scale) == 1.0


def test_kl_vae_baseline_config():
    cfg = apply_overrides(get_preset("fmnist"), baseline_overrides("kl-vae"))
    d = cfg.diffusion
    assert (d.prior_kind, d.decoder_kind, d.learned_variance, d.target_bits) == ("gaussian", "mse", True, 0.0)
    a, s = alpha_sigma(torch.tensor(d.lam0, dtype=torch.float64))
    assert float(s) < 1e-3  # no fixed encoder noise to speak of
    assert cfg.base.scale_latents


def test_baselines_train_and_sample_cli(tmp_path):
    data = make_npz(tmp_path / "d.npz", n=40)
    held = make_npz(tmp_path / "h.npz", n=12, seed=1)
    fast = [
        "--preset",
        "tiny",
        "--no-progress",
        "--set",
        "train.total_samples=16",
        "--data",
        str(data),
        "--eval-data",
        str(held),
    ]
    r = run_ul("train", "--stage", "pixel", *fast, "--outdir", str(tmp_path / "px"))
    assert r.returncode == 0 and "done: 16 samples" in r.stdout, r.stderr
    r = run_ul(
        "sample",
        "--artifact",
        str(tmp_path / "px" / "artifact.safetensors"),
        "--seeds",
        "0-3",
        "--outdir",
        str(tmp_path / "px-out"),
        "--base-steps",
        "3",
    )
    assert r.returncode == 0 and (tmp_path / "px-out" / "grid.png").exists(), r.stderr
    r = run_ul("train", "--baseline", "kl-vae", *fast, "--outdir", str(tmp_path / "kv1"))
    assert r.returncode == 0, r.stderr
    art1 = tmp_path / "kv1" / "artifact.safetensors"
    r = run_ul(
        "train",
        "--stage",
        "base",
        "--baseline",
        "kl-vae",
        *fast,
        "--artifact",
        str(art1),
        "--outdir",
        str(tmp_path / "kv2"),
    )
    assert r.returncode == 0 and "latent scale factor" in r.stdout, r.stderr
    from unified_latents.objectives.registry import load_model
    from unified_latents.stages import latents_for

    base, cfg = load_model(tmp_path / "kv2" / "artifact.safetensors")
    lat = latents_for(base.stage1, cfg, tmp_path / "kv2" / "latents", "cpu")  # the cache stage 2 wrote
    assert float(base.latent_scale) == pytest.approx(1 / lat.std(), rel=1e-5)
    cfg_saved = json.loads((tmp_path / "kv2" / "config.json").read_text())
    assert cfg_saved["base"]["scale_latents"] is True
