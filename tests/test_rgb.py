"""RGB photos: the photo benchmark's data split, the PCA codec, the colour-sensitivity metric."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from unified_latents.data import photos
from unified_latents.errors import DataError
from unified_latents.eval.codec import PCACodec, _entropy_bits
from unified_latents.eval.colour import colour_report, sensitivity, swap_red_blue


@pytest.fixture
def photo_dir(tmp_path, monkeypatch):
    """Every listed photo as a small file: training scenes blue, test scenes red."""
    rng = np.random.default_rng(0)
    for split, colour in (("train", 2), ("test", 0)):
        for _, names in {"train": photos.TRAIN_PHOTOS, "test": photos.TEST_PHOTOS}[split]:
            for name in names:
                arr = np.zeros((80, 96, 3), np.uint8)
                arr[..., colour] = rng.integers(100, 256, (80, 96), dtype=np.uint8)
                (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)  # wallpapers sit in sub-folders
                Image.fromarray(arr).save(tmp_path / name, quality=95)
    monkeypatch.setenv("UL_PHOTOS_DIR", str(tmp_path))
    return tmp_path


def test_photo_crops_hold_out_whole_photos_and_are_deterministic(photo_dir):
    train = photos.photo_crops("train", 16, count=60)
    test = photos.photo_crops("test", 16, count=30)
    assert train.shape == (60, 3, 16, 16) and train.dtype == torch.uint8
    # training crops come only from the (blue) training photos, test crops only from the red ones
    assert train[:, 2].float().mean() > 90 and train[:, :2].float().mean() < 8
    assert test[:, 0].float().mean() > 90 and test[:, 1:].float().mean() < 8
    assert torch.equal(train, photos.photo_crops("train", 16, count=60))
    assert not torch.equal(train[:30], photos.photo_crops("train", 16, count=30, seed=1))


def test_photo_source_through_load_images(photo_dir):
    from unified_latents.data import eval_source, load_images
    from unified_latents.presets import get_preset

    cfg = get_preset("rgb32").data
    assert eval_source(cfg) == ("photos", "test")
    cfg.resolution = 8
    gray = load_images(cfg.__class__(**{**cfg.__dict__, "channels": 1}), split="test")
    assert gray.images.shape == (photos.TEST_CROPS, 1, 8, 8) and gray.labels is None


def test_missing_photos_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("UL_PHOTOS_DIR", str(tmp_path))
    monkeypatch.setenv("UL_PHOTOS_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setattr(photos, "WALLPAPERS", {k: f"nowhere/{k}" for k in photos.WALLPAPERS})
    monkeypatch.setattr(photos, "OPENCV_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(photos, "_package_dir", lambda module, sub: None)
    with pytest.raises(DataError, match="setup.sh photos"):
        photos.photo_files("test")


def test_entropy_bits_sums_columns():
    q = torch.tensor([[0, 5], [0, 6], [1, 7], [1, 8]])
    assert _entropy_bits(q) == pytest.approx(1.0 + 2.0)


def test_pca_codec_rate_distortion():
    """Low-rank Gaussian images: bits rise and PSNR rises as the step shrinks; a huge step
    sends nothing (0 bits, the mean image); a fine step is close to lossless."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 3 * 8 * 8, generator=g)

    def sample(n):
        x = 127.5 + 25 * torch.randn(n, 4, generator=g) @ basis / 8
        return x.clamp(0, 255).round().to(torch.uint8).reshape(n, 3, 8, 8)

    codec = PCACodec(sample(2000), max_components=16)
    test = sample(500)
    curve = codec.curve(test, [100.0, 1.0, 0.3, 0.1, 0.03, 0.01])
    bits, ps = zip(*curve, strict=True)
    assert bits[0] == 0.0 and all(b2 > b1 for b1, b2 in pairwise(bits))
    assert all(p2 > p1 for p1, p2 in pairwise(ps))
    assert ps[-1] > 45  # 4 real components at step 0.01: only uint8 rounding is left
    # the quantised Gaussian's entropy at a fine step: h(N(0, var)) - log2(step) per component
    c = codec.coefficients(test)
    expect = sum(0.5 * math.log2(2 * math.pi * math.e * float(c[:, j].var())) - math.log2(0.1) for j in range(4))
    assert codec.code(test, 0.1)[1][0] == pytest.approx(expect, abs=0.3)
    bits, ps = zip(*codec.curve(test), strict=True)  # the default sweep, which psnr_at_bits reads
    assert codec.psnr_at_bits(test, (bits[5] + bits[6]) / 2) == pytest.approx((ps[5] + ps[6]) / 2)
    with pytest.raises(ValueError, match="outside"):
        codec.psnr_at_bits(test, 1e6)


def test_colour_sensitivity_of_identity_and_colour_blind_encoders():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s, _ = sensitivity(lambda v: v, x, swap_red_blue(x))
    assert s == pytest.approx(1.0)
    blind = colour_report(lambda v: v.mean(1, keepdim=True), x, lam0=5.0)
    assert blind["colour_sensitivity"] == pytest.approx(0.0, abs=1e-6) and blind["noise_margin"] < 1e-5
    assert blind["shift_sensitivity"] > 0.5  # it still sees where things are
    ident = colour_report(lambda v: v, x, lam0=5.0)
    # noise margin: alpha(5) * rms change / sigma(5)
    dz = float((swap_red_blue(x) - x).pow(2).mean().sqrt())
    assert ident["noise_margin"] == pytest.approx(math.sqrt(math.exp(5)) * dz, rel=1e-6)


def test_layer_norm_keeps_a_colour_cast_that_group_norm_erases():
    """A per-channel constant offset (what a colour cast becomes in a conv's features) is removed
    entirely by the 'group' norm of a narrow network (one channel per group: an instance norm),
    so nothing after it can tell the two images apart; the 'layer' norm keeps the difference."""
    from unified_latents.nn.layers import norm

    h = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    cast = h + torch.linspace(-1, 1, 16).view(1, 16, 1, 1)
    group, layer = norm(16, "group"), norm(16, "layer")
    torch.testing.assert_close(group(cast), group(h), atol=1e-5, rtol=0)
    assert (layer(cast) - layer(h)).abs().mean() > 0.3


def _colour_blobs(path, n=256, size=16):
    """Discs of a random colour on a background of another random colour: colour is most of
    what tells two images apart."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    imgs = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        cy, cx, r = *rng.uniform(3, size - 3, 2), rng.uniform(2, size / 3)
        imgs[i] = np.where((((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)[..., None], fg, bg)
    np.savez(path, images=imgs)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2)


def _tiny_rgb_run(tmp_path, data, norm):
    from helpers import run_ul

    from unified_latents.objectives.registry import load_model

    out = tmp_path / norm
    r = run_ul(
        "train",
        "--preset",
        "tiny",
        "--no-progress",
        "--data",
        str(data),
        "--outdir",
        str(out),
        "--set",
        "data.channels=3",
        "--set",
        "train.total_samples=1600",
        "--set",
        "train.log_every=50",
        "--set",
        "train.image_every=0",
        "--set",
        "train.ckpt_every=0",
        "--set",
        "diffusion.target_bits=0",
        "--set",
        "diffusion.loss_factor=17",
        *[a for net in ("encoder", "prior", "decoder") for a in ("--set", f"model.{net}.norm={norm}")],
    )
    assert r.returncode == 0, r.stderr
    return load_model(out / "artifact.safetensors", stage="latents")[0]


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_tiny_rgb_run_latents_see_colour(tmp_path):
    """Red and blue swapped must move the latent by a clear margin over the encoder noise at
    log-SNR 5 after a short 3-channel run with the RGB presets' norm; the narrow networks'
    'group' norm (an instance norm) leaves the latent nearly colour-blind in the same run."""
    from unified_latents.data import to_float

    images = _colour_blobs(tmp_path / "blobs.npz")
    x = to_float(images[:64])
    layer = colour_report(_tiny_rgb_run(tmp_path, tmp_path / "blobs.npz", "layer").encode, x, 5.0)
    group = colour_report(_tiny_rgb_run(tmp_path, tmp_path / "blobs.npz", "group").encode, x, 5.0)
    assert layer["noise_margin"] > 2.0, layer
    assert group["noise_margin"] < 0.5 * layer["noise_margin"], (group, layer)


def test_the_benchmark_holds_out_whole_scenes_of_every_package_and_its_fingerprint_names_them():
    """No file is both a training and a test photo; each wallpaper package gives photos to both
    splits; the source's fingerprint changes with the list (so caches of another list are rebuilt)."""
    from unified_latents.config import DataConfig
    from unified_latents.data.fingerprint import data_fingerprint

    files = {
        s: {(w, n) for w, names in lst for n in names}
        for s, lst in (("train", photos.TRAIN_PHOTOS), ("test", photos.TEST_PHOTOS))
    }
    assert not files["train"] & files["test"]
    for where in photos.WALLPAPERS:
        assert all(any(w == where for w, _ in files[s]) for s in files), where
    before = data_fingerprint(DataConfig(source="photos"), "photos")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(photos, "TEST_PHOTOS", photos.TEST_PHOTOS[:-1])
        assert data_fingerprint(DataConfig(source="photos"), "photos") != before
