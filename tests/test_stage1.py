"""Stage-1 objective: gradient paths, units, the loss factor and its controller."""

import math

import torch

from unified_latents.objectives import UnifiedLatents
from unified_latents.objectives.base import seeded_noise
from unified_latents.objectives.noise import BatchNoise


def _batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *model.x_shape, generator=g) * 2 - 1
    return x, model.draw_noise(BatchNoise(int(torch.randint(0, 2**31, (), generator=g)), n))


def _enc_grad(model, loss):
    model.zero_grad()
    loss.sum().backward(retain_graph=True)
    return sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)


def test_encoder_gets_gradient_from_each_term_alone(tiny_cfg):
    torch.manual_seed(0)
    model = UnifiedLatents(tiny_cfg)
    x, noise = _batch(model)
    z = model.encode(x)
    z0 = model.noisy_latent(z, noise["eps_z0"])
    assert _enc_grad(model, model.prior_loss(z, noise["t_z"], noise["eps_z"])) > 0
    # the decoder's last layer is zero-initialised; break that so z0 matters to its output
    torch.nn.init.normal_(model.decoder.patch_out.weight, std=0.1)
    z = model.encode(x)
    z0 = model.noisy_latent(z, noise["eps_z0"])
    assert _enc_grad(model, model.decoder_loss(x, z0, noise["t_x"], noise["eps_x"])) > 0


class ZeroV(torch.nn.Module):
    def forward(self, z_t, lam, cond=None, labels=None):
        return torch.zeros_like(z_t)


def test_prior_gradient_flows_through_target_and_noisy_input(tiny_cfg):
    """With a zero v-prediction, z_hat = alpha^2 z + alpha sigma eps, so dL/dz has the factor
    (1 - alpha^2) = sigma^2 only when BOTH paths carry gradient (target alone: 1; input alone: -alpha^2)."""
    model = UnifiedLatents(tiny_cfg)
    model.prior = ZeroV()
    z = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    t, eps = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    model.prior_loss(z, t, eps).sum().backward()
    lam = model.sched_z.lam(t)
    a, s = (v.view(-1, 1, 1, 1) for v in torch.sqrt(torch.sigmoid(torch.stack([lam, -lam]))))
    w = (0.5 * model.sched_z.neg_dlam_dt(t) * torch.exp(lam)).view(-1, 1, 1, 1)
    resid = s**2 * z.detach() - a * s * eps
    kl_grad = torch.sigmoid(torch.tensor(-15.0, dtype=torch.float64)) * z.detach()
    torch.testing.assert_close(z.grad, 2 * w * resid * s**2 + kl_grad, rtol=1e-4, atol=1e-6)  # losses run in fp32


def test_loss_factor_scales_decoder_term_only(tiny_cfg):
    model = UnifiedLatents(tiny_cfg)
    x, noise = _batch(model)
    with torch.no_grad():
        a = model(x, None, noise)
        model.log_loss_factor.fill_(math.log(3.0))
        b = model(x, None, noise)
    torch.testing.assert_close(a.terms["prior_nats"], b.terms["prior_nats"])
    torch.testing.assert_close(b.total - b.terms["prior_nats"], 3.0 * b.terms["decoder_nats"])
    torch.testing.assert_close(a.total - a.terms["prior_nats"], 1.5 * a.terms["decoder_nats"])
    # both terms in the same unit: bits per pixel divide nats by the same ln2 * H * W
    hw = model.x_shape[1] * model.x_shape[2]
    torch.testing.assert_close(b.terms["bpp"], b.terms["prior_nats"] / (math.log(2) * hw))
    torch.testing.assert_close(b.terms["decoder_weighted_bpp"], b.terms["decoder_nats"] / (math.log(2) * hw))


def test_encoder_noise_is_log_snr_5(tiny_cfg):
    model = UnifiedLatents(tiny_cfg)
    z = torch.zeros(1, 2, 4, 4)
    eps = torch.ones(1, 2, 4, 4)
    sigma = model.noisy_latent(z, eps)[0, 0, 0, 0].item()
    alpha = model.noisy_latent(torch.ones_like(z), torch.zeros_like(eps))[0, 0, 0, 0].item()
    assert abs(math.log(alpha**2 / sigma**2) - 5.0) < 1e-5


def test_controller_holds_smooths_and_bounds_its_step(tiny_cfg):
    d = tiny_cfg.diffusion
    d.target_bits, d.controller_hold_samples, d.controller_smoothing, d.controller_rate = 100.0, 1000, 0.5, 0.02
    model = UnifiedLatents(tiny_cfg)
    c0 = model.loss_factor
    out = model.after_step({"bits_per_image": 720.0, "samples": 1000})  # an untrained prior's estimate: held
    assert model.loss_factor == c0 and "controlled_bits" not in out
    model.after_step({"bits_per_image": 1e6, "samples": 1008})  # far too many bits: one bounded step down
    assert math.isclose(math.log(model.loss_factor), math.log(c0) - 0.02, rel_tol=1e-9)
    model.after_step({"bits_per_image": 50.0, "samples": 1016})  # the EMA, not the batch, is what it follows
    assert math.isclose(float(model.controlled_bits), 0.5 * (0.5 * 100 + 0.5 * 1e6) + 0.5 * 50.0)  # from the target
    assert math.log(model.loss_factor) < math.log(c0) - 0.039
    for k in range(40):
        model.after_step({"bits_per_image": 50.0, "samples": 1024 + 8 * k})
    c_low = model.loss_factor
    model.after_step({"bits_per_image": 50.0, "samples": 2000})
    assert float(model.controlled_bits) < 100 and model.loss_factor > c_low  # too few bits: c_lf rises
    c1 = model.loss_factor
    d.target_bits = 0.0  # off: untouched
    model.after_step({"bits_per_image": 1e6, "samples": 9999})
    assert model.loss_factor == c1


def test_controller_settles_within_5_percent_of_target_on_a_lagged_plant(tiny_cfg):
    """A stand-in for training: bits follow 10 c_lf with a lag of ~30 steps, batch noise of
    +-15%, and an untrained prior's 720 bits for the first 80 steps. The held, smoothed
    controller ends within 5% of its target and c_lf never drops below a third of its start."""
    d = tiny_cfg.diffusion
    d.target_bits, d.loss_factor, d.controller_hold_samples = 180.0, 3.0, 80 * 8
    model = UnifiedLatents(tiny_cfg)
    g = torch.Generator().manual_seed(0)
    level, lows = 30.0, []
    for step in range(2500):
        level += (10 * model.loss_factor - level) / 30
        bits = 720.0 if step < 80 else level * (1 + 0.15 * float(torch.randn((), generator=g)))
        model.after_step({"bits_per_image": bits, "samples": 8 * (step + 1)})
        lows.append(model.loss_factor)
    assert min(lows) > 1.0
    assert abs(level - 180.0) < 0.05 * 180.0 and abs(float(model.controlled_bits) - 180.0) < 0.05 * 180.0


def test_loss_decreases_on_fixed_batch(tiny_cfg):
    torch.manual_seed(0)
    model = UnifiedLatents(tiny_cfg)
    x, noise = _batch(model, n=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(x, None, noise).total.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_reconstruction_is_reproducible_per_seed(tiny_cfg):
    torch.manual_seed(0)
    model = UnifiedLatents(tiny_cfg).eval()
    x, _ = _batch(model, n=4)
    full = model.reconstruct(x, [10, 11, 12, 13], steps=3)
    part = model.reconstruct(x[2:], [12, 13], steps=3)
    torch.testing.assert_close(full[2:], part)
    assert full.min() >= -1 and full.max() <= 1


def test_mean_of_k_reconstruction_averages_k_samples_of_one_latent(tiny_cfg):
    from unified_latents.objectives.stage1 import MEAN_SEED_OFFSET

    torch.manual_seed(0)
    model = UnifiedLatents(tiny_cfg).eval()
    x, _ = _batch(model, n=4)
    seeds = [10, 11, 12, 13]
    one = model.reconstruct(x, seeds, steps=3)
    torch.testing.assert_close(model.reconstruct(x, seeds, steps=3, mean_of=1), one)
    mean = model.reconstruct(x, seeds, steps=3, mean_of=3)
    # the j-th sample decodes the same z0 (encoder noise from the seed) with decoder seeds offset by j
    z0 = model.noisy_latent(model.encode(x), seeded_noise([s + 1_000_003 for s in seeds], "cpu").normal(model.z_shape))
    samples = [model.decode(z0, [s + j * MEAN_SEED_OFFSET for s in seeds], steps=3) for j in range(3)]
    torch.testing.assert_close(samples[0], one)
    torch.testing.assert_close(mean, sum(samples) / 3)

    # squared error is convex: the mean's error is at most the samples' mean error (per example)
    def err(r):
        return ((r - x) ** 2).flatten(1).mean(1)

    assert torch.all(err(mean) <= sum(err(s) for s in samples) / 3 + 1e-6)
    assert not torch.allclose(samples[0], samples[1])  # different decoder noise
