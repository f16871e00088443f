"""Quality levers (issue: quality per CPU-minute): each is a setting with an analytic check here;
their measured effect is in docs/results.md (benchmarks/levers.py)."""

import copy
import math

import pytest
import torch

from unified_latents.config import apply_overrides
from unified_latents.errors import ConfigError
from unified_latents.nn import build_denoiser
from unified_latents.nn.layers import norm
from unified_latents.objectives import UnifiedLatents
from unified_latents.objectives.noise import BatchNoise


@pytest.mark.parametrize(
    ("kind", "groups"),
    [("group", [16, 32, 32, 1]), ("group8", [2, 4, 8, 1]), ("group4", [4, 8, 16, 1]), ("layer", [1, 1, 1, 1])],
)
def test_norm_kinds_give_their_groups(kind, groups):
    assert [norm(c, kind).num_groups for c in (16, 32, 64, 4)] == groups


def test_group8_keeps_a_per_channel_offset_that_the_instance_like_norm_erases():
    """Two channels of a group of eight: a constant offset of one channel survives the norm (its
    mean is shared with the group), while one channel per group removes it entirely."""
    x = torch.randn(2, 16, 8, 8)
    x[:, 0] += 3.0
    inst, grouped = norm(16, "group")(x), norm(16, "group8")(x)
    assert inst[:, 0].mean().abs() < 1e-5
    assert grouped[:, 0].mean() - grouped[:, 1:8].mean() > 1.0


def test_a_norm_kind_that_does_not_exist_is_refused(tiny_cfg):
    for bad in ("group0", "groups8", "batch"):
        cfg = apply_overrides(copy.deepcopy(tiny_cfg), [f"model.decoder.norm={bad}"])
        with pytest.raises(ConfigError, match="norm"):
            build_denoiser(cfg.model.decoder, 2, 1, 1, cond_ch=2)


def test_conditioning_augmentation_is_the_forward_process_from_lam0(tiny_cfg):
    """z0 = alpha0 z + sigma0 eps noised further to lam: mean alpha(lam) z and variance sigma(lam)^2
    (the forward process from z_clean, variance preserving); u = 0 leaves z0 as it was."""
    cfg = apply_overrides(copy.deepcopy(tiny_cfg), ["diffusion.cond_aug=3.0"])
    model = UnifiedLatents(cfg)
    n = 200_000
    z = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    z0 = model.noisy_latent(z, torch.randn_like(z))
    u = torch.full((n,), 0.5, dtype=torch.float64)
    out = model.augmented_cond(z0, u, torch.randn_like(z))
    lam = torch.tensor(5.0 - 1.5, dtype=torch.float64)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    assert abs(out.mean() - alpha * 0.7) < 4 * sigma / math.sqrt(n)
    assert abs(out.var() / sigma**2 - 1) < 0.02
    torch.testing.assert_close(model.augmented_cond(z0, torch.zeros(n, dtype=torch.float64), torch.randn_like(z)), z0)


def test_conditioning_augmentation_reaches_the_decoder_only_and_leaves_the_bitrate(tiny_cfg):
    """The prior's nats (the bitrate) are those of the same draw without augmentation; the
    decoder's loss changes; with cond_aug 0 nothing extra is drawn (the random stream is as before)."""
    torch.manual_seed(0)
    plain = UnifiedLatents(tiny_cfg)
    aug = UnifiedLatents(apply_overrides(copy.deepcopy(tiny_cfg), ["diffusion.cond_aug=4.0"]))
    aug.load_state_dict(plain.state_dict())
    torch.nn.init.normal_(plain.decoder.patch_out.weight, std=0.1)  # so z0 reaches the decoder's output
    aug.decoder.patch_out.weight.data.copy_(plain.decoder.patch_out.weight)
    x = torch.rand(4, *plain.x_shape) * 2 - 1
    n_plain, n_aug = plain.draw_noise(BatchNoise(3, 4)), aug.draw_noise(BatchNoise(3, 4))
    assert set(n_aug) - set(n_plain) == {"u_aug", "eps_aug"}
    for k in n_plain:
        torch.testing.assert_close(n_plain[k], n_aug[k])
    with torch.no_grad():
        a, b = plain(x, None, n_plain), aug(x, None, n_aug)
    torch.testing.assert_close(a.terms["prior_nats"], b.terms["prior_nats"])
    assert not torch.allclose(a.terms["decoder_nats"], b.terms["decoder_nats"])


def test_base_shift_auto_places_the_schedule_by_the_latents_std_and_resumes(tiny_cfg, tmp_path):
    """shift_auto: base.shift = -2 ln(std of the training latents), recorded in the artifact's config
    (so sampling uses it) and in the run's; the same command again finds the run finished."""
    from helpers import make_npz

    from unified_latents.data import load_images
    from unified_latents.objectives.registry import load_model
    from unified_latents.stages import train_stage

    data = make_npz(tmp_path / "d.npz", n=32)
    s1cfg = apply_overrides(copy.deepcopy(tiny_cfg), [f"data.source={data}", "train.total_samples=16"])
    s1 = train_stage(s1cfg, tmp_path / "s1", torch.device("cpu"), progress=False).artifact
    base = apply_overrides(
        copy.deepcopy(s1cfg), ["stage=base", f"base.stage1_artifact={s1}", "base.shift_auto=true", "base.shift=0.5"]
    )
    done = train_stage(base, tmp_path / "b", torch.device("cpu"), progress=False)
    stage1, _ = load_model(s1, "cpu", stage="latents")
    with torch.no_grad():
        std = stage1.encode(load_images(s1cfg.data).images.float() / 127.5 - 1).std().item()
    model, cfg = load_model(done.artifact, "cpu", stage="base")
    assert not cfg.base.shift_auto and cfg.base.shift == pytest.approx(0.5 - 2 * math.log(std), rel=1e-4)
    assert model.sched.shift == cfg.base.shift
    again = train_stage(base, tmp_path / "b", torch.device("cpu"), progress=False)
    assert again.samples == done.samples and again.artifact.read_bytes() == done.artifact.read_bytes()
