"""Quality levers (issue: quality per CPU-minute): each is a setting with an analytic check here;
their measured effect is in docs/results.md (benchmarks/levers.py)."""

import copy
import math

import pytest
import torch
from helpers import load_script

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
    s1cfg = apply_overrides(copy.deepcopy(tiny_cfg), [f"data.source={data}", "train.total_samples=8"])
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


# --------------------------------------------------------------------------- magnitude-preserving U-Net


def _mp_net(dims=2, **kw):
    from unified_latents.config import NetConfig
    from unified_latents.nn.mp import MPUNet

    cfg = NetConfig(arch="unet_mp", channels=[16, 32], blocks=[1, 1], emb_dim=32, **kw)
    return MPUNet(cfg, dims, 1, 1, cond_ch=4, num_classes=10)


@pytest.mark.parametrize(("shape", "f"), [((2, 3, 8, 12), (2, 4)), ((2, 3, 4, 8, 12), (1, 2, 4))])
def test_patches_to_channels_and_back_is_the_identity(shape, f):
    from unified_latents.nn.mp import depth_to_space, space_to_depth

    x = torch.randn(shape)
    y = space_to_depth(x, f)
    assert y.shape == (shape[0], shape[1] * math.prod(f), *(s // k for s, k in zip(shape[2:], f, strict=True)))
    first = x[0, 0][tuple(slice(0, k) for k in f)].flatten()  # the first patch of the first channel...
    torch.testing.assert_close(y[0, : math.prod(f)][(slice(None), *(0,) * len(f))], first)  # ...is its position 0
    assert torch.equal(depth_to_space(y, f), x)


def test_mp_layers_preserve_unit_magnitude():
    """Unit-variance inputs give unit-variance outputs: each piece, and the whole network once its
    zero-initialised gains are set to 1 (at initialisation its output is exactly zero)."""
    from unified_latents.nn.mp import GAIN_SCALE, MPConv, mp_cat, mp_silu, mp_sum

    torch.manual_seed(0)
    a, b = torch.randn(64, 16, 16, 16), torch.randn(64, 48, 16, 16)
    assert abs(mp_silu(a).pow(2).mean().sqrt() - 1) < 0.2  # SiLU rescaled (its second moment is ~1)
    assert abs(mp_sum(a, b[:, :16], 0.3).std() - 1) < 0.02
    assert abs(mp_cat(a, b, 0.5).std() - 1) < 0.02
    assert abs(MPConv(16, 32, 3, 2)(a).std() - 1) < 0.1
    net = _mp_net()
    x, lam, cond, labels = torch.randn(16, 1, 16, 16), torch.linspace(-8, 8, 16), torch.randn(16, 4, 4, 4), None
    assert net(x, lam, cond, labels).abs().max() == 0
    for name, p in net.named_parameters():
        if name.endswith("gain"):
            p.data.fill_(1.0 / GAIN_SCALE)  # a gain of 1 as used
    assert 0.5 < net(x, lam, cond, labels).std() < 2.0


def test_mp_gains_move_at_edm2s_rate_like_the_weights():
    """The presets' Adam rate (2e-3) moves stored weights by 1% of their size per step (stored at rms 0.2), EDM2's
    1e-2 on unit weights; the zero-initialised gains must move at the same 1e-2 per step as used, or the output
    gain needs ~500 steps to reach 1 (what the first measured unet_mp run suffered)."""
    from unified_latents.nn.mp import GAIN_SCALE

    net, lr = _mp_net(), 2e-3
    x, lam, cond = torch.randn(4, 1, 16, 16), torch.zeros(4), torch.randn(4, 4, 4, 4)
    opt = torch.optim.Adam([net.out_gain], lr=lr)
    (net(x, lam, cond) * torch.randn(4, 1, 16, 16)).sum().backward()
    opt.step()  # Adam's first step is the learning rate times the gradient's sign
    assert math.isclose(abs(net.out_gain.item()) * GAIN_SCALE, 1e-2, rel_tol=1e-3)


def test_mp_weights_are_forced_to_their_norm_in_training_and_not_in_eval():
    from unified_latents.nn.mp import STORE_RMS, MPConv

    conv = MPConv(8, 4, 3, 2)
    conv.weight.data.mul_(3.0)
    x = torch.randn(2, 8, 6, 6)
    out_scaled = conv.eval()(x)
    assert torch.allclose(conv.weight.flatten(1).pow(2).mean(1).sqrt(), torch.full((4,), 3 * STORE_RMS), rtol=0.3)
    conv.train()(x)
    rms = conv.weight.flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full((4,), STORE_RMS), rtol=1e-3, atol=0)
    torch.testing.assert_close(conv.eval()(x), out_scaled, rtol=1e-3, atol=1e-5)  # the stored scale: no effect


def test_a_model_with_mp_denoisers_trains_a_step_for_images_and_video(tiny_cfg):
    """unet_mp as prior, decoder and base (2-D and 3-D with patches): a forward and backward pass
    of the stage-1 objective, every parameter of the denoisers reached by the gradient."""
    from unified_latents.presets import get_preset

    for cfg in (copy.deepcopy(tiny_cfg), get_preset("tiny-video")):
        cfg = apply_overrides(cfg, [f"model.{n}.arch=unet_mp" for n in ("prior", "decoder")])
        model = UnifiedLatents(cfg)
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.data.fill_(0.5)  # past the zero start, so every weight gets a gradient
        x = torch.rand(2, *model.x_shape) * 2 - 1
        model(x, None, model.draw_noise(BatchNoise(0, 2))).total.sum().backward()
        dead = [n for n, p in model.named_parameters() if n.startswith(("prior", "decoder")) and p.grad is None]
        assert not dead, dead


def test_a_finished_stage_1_is_kept_when_only_stage_2_settings_change(tiny_cfg):
    """A pipeline trying another base model (its schedule, its network) reuses the finished stage 1;
    the same changes to a stage-2 run are refused on resume."""
    from unified_latents.config import to_dict
    from unified_latents.saved_config import incompatible_changes

    over = ["base.shift_auto=true", "base.shift=1.0", "model.base.channels=[8, 16]"]
    s1 = to_dict(tiny_cfg)
    assert incompatible_changes(s1, to_dict(apply_overrides(copy.deepcopy(tiny_cfg), over))) == []
    assert incompatible_changes(s1, to_dict(apply_overrides(copy.deepcopy(tiny_cfg), ["model.decoder.norm=group8"])))
    s2 = apply_overrides(copy.deepcopy(tiny_cfg), ["stage=base"])
    assert len(incompatible_changes(to_dict(s2), to_dict(apply_overrides(copy.deepcopy(s2), over)))) == 3


def test_up_extra_adds_one_block_per_up_level_and_is_refused_off_a_unet(tiny_cfg):
    """model.<net>.up_extra=1: ADM's and EDM2's up path (blocks + 1 per level) in both U-Nets."""
    from unified_latents.nn.layers import ResBlock
    from unified_latents.nn.mp import MPBlock

    for arch, block in (("unet", ResBlock), ("unet_mp", MPBlock)):
        cfg = apply_overrides(copy.deepcopy(tiny_cfg), [f"model.decoder.arch={arch}"]).model.decoder
        counts = []
        for extra in (0, 1):
            cfg.up_extra = extra
            net = build_denoiser(cfg, 2, 3, 3, cond_ch=2)
            counts.append([sum(isinstance(m, block) for m in level.modules()) for level in net.up])
        assert counts[1] == [n + 1 for n in counts[0]] == [b + 1 for b in reversed(cfg.blocks)], (arch, counts)
        x = torch.randn(2, 3, 16, 16)
        assert net(x, torch.zeros(2), cond=torch.randn(2, 2, 8, 8)).shape == x.shape
    vit = apply_overrides(copy.deepcopy(tiny_cfg), ["model.prior.arch=vit", "model.prior.up_extra=1"]).model.prior
    with pytest.raises(ConfigError, match="up_extra applies only to U-Nets"):
        build_denoiser(vit, 2, 2, 2)
    with pytest.raises(ConfigError, match="up_extra"):
        apply_overrides(copy.deepcopy(tiny_cfg), ["model.decoder.up_extra=-1"])


def test_mid_zero_init_makes_the_u_vit_middle_the_identity_at_the_start(tiny_cfg):
    cfg = apply_overrides(copy.deepcopy(tiny_cfg), ["model.base.transformer_blocks=1", "model.base.width=16"])
    x = torch.randn(2, 32, 4, 4)
    for zero in (False, True):
        cfg.model.base.mid_zero_init = zero
        net = build_denoiser(cfg.model.base, 2, 2, 2)
        assert net.mid is not None
        moved = net.mid(x, torch.randn(2, cfg.model.base.emb_dim)).abs().max()
        assert bool(moved == 0) is zero, (zero, moved)
    cfg.model.base.transformer_blocks = 0
    with pytest.raises(ConfigError, match="mid_zero_init applies only to a U-ViT"):
        build_denoiser(cfg.model.base, 2, 2, 2)


def test_rsqrt_learning_rate_is_edm2s_and_needs_its_reference(tiny_cfg):
    from unified_latents.training import lr_at

    cfg = apply_overrides(copy.deepcopy(tiny_cfg), ["train.lr_decay=rsqrt", "train.lr_ref_samples=32"])
    t = cfg.train
    assert lr_at(cfg, t.warmup_samples) == t.lr == lr_at(cfg, 32)  # flat until the reference
    assert math.isclose(lr_at(cfg, 128), t.lr / 2)  # 4x the reference: half the rate
    assert math.isclose(lr_at(cfg, 32 * 100), t.lr / 10)
    with pytest.raises(ConfigError, match="train.lr_ref_samples"):
        apply_overrides(copy.deepcopy(tiny_cfg), ["train.lr_decay=rsqrt"])
    with pytest.raises(ConfigError, match="train.lr_decay"):
        apply_overrides(copy.deepcopy(tiny_cfg), ["train.lr_decay=linear"])


def test_every_lever_variant_is_a_valid_config_of_the_cpu_presets():
    from unified_latents.presets import get_preset

    variants = load_script("benchmarks/levers.py").VARIANTS
    for preset in ("fmnist", "rgb32", "video-fmnist"):
        for _, over in variants.values():
            apply_overrides(get_preset(preset), over)  # raises on an unknown key or a value out of range
    # the U-ViT pair differs in mid_zero_init alone, and only it starts the middle at zero
    (_, plain), (_, zeroed) = variants["uvit"], variants["uvit-midzero"]
    assert set(zeroed) - set(plain) == {"model.base.mid_zero_init=true"} and set(plain) < set(zeroed)
    outs = []
    for over in (plain, zeroed):
        cfg = apply_overrides(get_preset("fmnist"), over)
        torch.manual_seed(0)
        net = build_denoiser(cfg.model.base, 2, cfg.model.latent_channels, cfg.model.latent_channels, num_classes=10)
        outs.append(float(net.mid.proj_out.weight.detach().abs().sum()))
    assert outs[0] > 0 and outs[1] == 0
