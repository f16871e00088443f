"""Ablation switches (paper Tables 5-6, UL_SPEC 8): each changes the loss as its equation says."""

import math

import pytest
import torch
from test_diffusion import GaussianOracle

from unified_latents.config import apply_overrides
from unified_latents.diffusion import prior_terminal_kl
from unified_latents.errors import ConfigError
from unified_latents.objectives import UnifiedLatents
from unified_latents.objectives.noise import BatchNoise
from unified_latents.presets import get_preset


def _model(*over):
    torch.manual_seed(0)
    return UnifiedLatents(apply_overrides(get_preset("tiny"), list(over)))


def _batch(model, n=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *model.x_shape, generator=g) * 2 - 1, model.draw_noise(
        BatchNoise(int(torch.randint(0, 2**31, (), generator=g)), n)
    )


def _encoder_grad(model, loss):
    model.zero_grad()
    loss.sum().backward()
    return sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)


def test_stop_grad_removes_prior_gradient_on_encoder():
    for stop, expect_zero in ((False, False), (True, True)):
        m = _model(f"diffusion.prior_stop_grad={str(stop).lower()}", "diffusion.stop_grad_kl_weight=0")
        torch.nn.init.normal_(m.decoder.patch_out.weight, std=0.1)  # the decoder path is live...
        m.log_loss_factor.fill_(-float("inf"))  # ...but weighted 0, so only the prior term remains
        x, noise = _batch(m)
        g = _encoder_grad(m, m(x, None, noise).total)
        assert (g == 0) == expect_zero


def test_stop_grad_regularises_the_latent_with_a_discounted_kl_only():
    """Paper Table 6 row A: with stop-grad the encoder's only prior-side gradient is that of
    w * KL(N(alpha0 z, sigma0^2) || N(0, I)); w = 0 is the bare detach (no regulariser)."""
    grads = {}
    for w in (0.0, 0.05):
        m = _model("diffusion.prior_stop_grad=true", f"diffusion.stop_grad_kl_weight={w}")
        m.log_loss_factor.fill_(-float("inf"))  # decoder weighted 0: only the prior side remains
        x, noise = _batch(m)
        out = m(x, None, noise)
        m.zero_grad()
        out.total.sum().backward()
        grads[w] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.encoder.parameters()]
        m.zero_grad()
        kl = prior_terminal_kl(m.encode(x), m.cfg.diffusion.lam0)
        (w * kl).sum().backward()
        want = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.encoder.parameters()]
        for g, e in zip(grads[w], want, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
        # the logged bitrate is still the prior's ELBO of z0 alone, not the regulariser
        assert torch.allclose(out.terms["prior_nats"], m.prior_loss(m.encode(x), noise["t_z"], noise["eps_z"]))
    assert all(float(g.abs().sum()) == 0 for g in grads[0.0]) and any(float(g.abs().sum()) > 0 for g in grads[0.05])


def test_higher_encoder_log_snr_raises_prior_term_for_same_latents():
    """Same latents, less encoder noise: more information in z0, a larger rate
    (0.5 ln(1 + s^2 e^lam0) per dimension). Training then shrinks the latents to collapse."""
    z = torch.randn(50_000, 1, 1, 1, dtype=torch.float64)
    t = torch.remainder(0.37 + torch.arange(50_000) / 50_000, 1.0).double()
    eps = torch.randn(50_000, 1, 1, 1, dtype=torch.float64)
    rates = {}
    for lam0 in (5.0, 10.0):
        m = _model(f"diffusion.lam0={lam0}")
        m.prior = GaussianOracle(1.0)
        with torch.no_grad():
            rates[lam0] = m.prior_loss(z, t, eps).mean().item()
        assert abs(rates[lam0] - 0.5 * math.log(1 + math.exp(lam0))) < 0.03 * rates[lam0]
    assert rates[10.0] > rates[5.0]


def test_gaussian_prior_is_weighted_kl():
    m = _model("diffusion.prior_kind=gaussian", "diffusion.kl_weight=0.25")
    z = torch.randn(3, *m.z_shape)
    a2 = 1 / (1 + math.exp(-5.0))
    s2 = 1 - a2
    kl = 0.5 * (a2 * z**2 + s2 - 1 - math.log(s2)).flatten(1).sum(1)
    torch.testing.assert_close(m.prior_loss(z, torch.rand(3), torch.randn_like(z)), kl, rtol=1e-5, atol=1e-5)
    assert m.has_unused_parameters
    # the weight scales the KL in the objective (the logged bitrate stays the unweighted KL)
    x, noise = _batch(m, 3)
    out = m(x, None, noise)
    l_x = out.terms["decoder_nats"]
    torch.testing.assert_close(out.total, 0.25 * out.terms["prior_nats"] + m.loss_factor * l_x, rtol=1e-5, atol=1e-3)
    z0, _ = m.sample_latent(x, None)
    torch.testing.assert_close(
        out.terms["prior_nats"], m.prior_loss(z0, noise["t_z"], noise["eps_z"]), rtol=1e-5, atol=1e-4
    )


def test_learned_variance_term_matches_formula():
    m = _model("diffusion.learned_variance=true")
    x, noise = _batch(m)
    mean, logvar = m.encode_stats(x)
    assert mean.shape == logvar.shape == (4, *m.z_shape)
    z, extra = m.sample_latent(x, noise["eps_var"])
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * noise["eps_var"])
    expected = -0.5 * torch.log(torch.exp(logvar) * math.exp(5.0) + 1).flatten(1).sum(1)
    torch.testing.assert_close(extra, expected, rtol=1e-5, atol=1e-5)
    out = m(x, None, noise)
    assert torch.isfinite(out.total).all()


def test_mse_decoder_is_scaled_l2():
    m = _model("diffusion.decoder_kind=mse", "diffusion.mse_sigma=0.5")
    torch.nn.init.normal_(m.decoder.patch_out.weight, std=0.1)
    x, noise = _batch(m)
    z0 = torch.randn(4, *m.z_shape)
    expected = ((x - m.regress(z0)) ** 2).flatten(1).sum(1) / (2 * 0.25)
    torch.testing.assert_close(m.decoder_loss(x, z0, noise["t_x"], noise["eps_x"]), expected)
    rec = m.reconstruct(x, [0, 1, 2, 3])
    assert rec.shape == x.shape and torch.equal(rec, m.reconstruct(x, [0, 1, 2, 3]))


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ConfigError, match="prior_kind"):
        _model("diffusion.prior_kind=flow")


def test_sweep_writes_table_and_resumes_without_retraining(tmp_path):
    from helpers import make_npz, run_ul
    from test_stage2 import _stand_in_inception

    inc = _stand_in_inception(tmp_path / "inc.pt")
    args = [
        "sweep",
        "--preset",
        "tiny",
        "--loss-factors",
        "1.3,2.1",
        "--outdir",
        str(tmp_path / "sw"),
        "--data",
        str(make_npz(tmp_path / "d.npz", n=24)),
        "--eval-data",
        str(make_npz(tmp_path / "h.npz", n=8, seed=1)),
        "--samples",
        "8",
        "--recon",
        "8",
        "--ref-count",
        "8",
        "--inception",
        str(inc),
        "--trust-torchscript",
        "--no-progress",
        "--set",
        "train.total_samples=16",
    ]
    r = run_ul(*args)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| 1.3 |" in table and "| 2.1 |" in table and (tmp_path / "sw" / "rate-distortion.png").exists()
    import json

    cfg = json.loads((tmp_path / "sw" / "lf-2.1" / "latents" / "config.json").read_text())
    assert cfg["diffusion"]["loss_factor"] == 2.1 and cfg["diffusion"]["target_bits"] == 0
    state = sorted((tmp_path / "sw" / "lf-1.3" / "latents").glob("state-*"))[-1]
    before = state.stat().st_mtime_ns
    r = run_ul(*args)  # rerun: finished values are skipped, nothing retrained or re-evaluated
    assert r.returncode == 0 and "evaluating" not in r.stdout and state.stat().st_mtime_ns == before, r.stdout


def test_learned_variance_latents_are_seeded_samples_and_the_base_model_counts_their_entropy():
    """Stage 2 trains on what the decoder saw (mean + sigma eps, eps seeded per example, the
    same whatever the batching), and its bits include the entropy credit: a base model whose
    network is the stage-1 prior measures exactly the stage-1 prior's bits."""
    import copy

    from unified_latents.data import encode_images
    from unified_latents.objectives import BaseModel

    m = _model("diffusion.learned_variance=true").eval()
    with torch.no_grad():
        m.encoder.out[-1].bias[m.cfg.model.latent_channels :] = math.log(0.3)  # sigma_z^2 0.3: visible noise
    images = (torch.rand(5, *m.x_shape, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    z = encode_images(m, images, batch=2, first=10)
    z_all = encode_images(m, images[1:], batch=4, first=11)
    torch.testing.assert_close(z[1:], z_all)  # seeded per example, not per batch
    x = images.float() / 127.5 - 1
    with torch.no_grad():
        mean, logvar = m.encode_stats(x)
    eps = (z - mean) / torch.exp(0.5 * logvar)
    assert 0.6 < float(eps.std()) < 1.4 and float((z - mean).abs().mean()) > 0.1
    extra = m.encode_sample(x, list(range(10, 15)))[1]
    torch.testing.assert_close(extra, -0.5 * torch.log1p(torch.exp(logvar + m.cfg.diffusion.lam0)).flatten(1).sum(1))

    cfg = copy.deepcopy(m.cfg)
    cfg.data.num_classes = 0
    cfg.model.base = copy.deepcopy(cfg.model.prior)
    base = BaseModel(cfg, m)
    base.net.load_state_dict(m.prior.state_dict())
    seeds = list(range(10, 15))
    torch.testing.assert_close(base.image_bits(x, None, seeds), m.bits(x, seeds), rtol=1e-5, atol=1e-4)
    assert float((base.image_bits(x, None, seeds) - base.bits(z, None, seeds)).abs().min()) > 1.0  # the credit counts
