"""Contract tests: every registered network maps shapes, in 2-D and 3-D."""

import pytest
import torch

from unified_latents.config import NetConfig
from unified_latents.nn import DENOISERS, ENCODERS, build_denoiser, build_encoder
from unified_latents.presets import get_preset

SMALL = {
    "resnet_encoder": NetConfig(arch="resnet_encoder", channels=[8, 16], blocks=[1, 1], patch=2),
    "unet": NetConfig(arch="unet", channels=[8, 16], blocks=[1, 1], patch=2, emb_dim=16),
    "uvit": NetConfig(
        arch="unet", channels=[8, 16], blocks=[1, 1], patch=1, transformer_blocks=1, width=16, heads=2, emb_dim=16
    ),
    "vit": NetConfig(arch="vit", transformer_blocks=2, width=16, heads=2, patch=2, emb_dim=16),
    "unet_mp": NetConfig(arch="unet_mp", channels=[8, 16], blocks=[1, 1], patch=2, emb_dim=16),
}


def test_registries_are_covered():
    assert set(ENCODERS) | set(DENOISERS) <= {c.arch for c in SMALL.values()}


@pytest.mark.parametrize("dims,spatial", [(2, (16, 16)), (3, (4, 8, 8)), (3, (8, 8, 8))])
def test_encoder_shapes(dims, spatial):
    enc = build_encoder(SMALL["resnet_encoder"], dims, 3, 5)
    z = enc(torch.randn(2, 3, *spatial))
    # 2x2 patches, then one stride-2 level; video patches only space (patch_t = 1 by default)
    want = [s // 4 for s in spatial] if dims == 2 else [spatial[0] // 2, *[s // 4 for s in spatial[1:]]]
    assert z.shape == (2, 5, *want)


@pytest.mark.parametrize("name", ["unet", "uvit", "vit", "unet_mp"])
@pytest.mark.parametrize("dims,spatial", [(2, (16, 16)), (3, (4, 8, 8))])
@pytest.mark.parametrize("cond", [False, True])
@pytest.mark.parametrize("classes", [0, 10])
def test_denoiser_shapes(name, dims, spatial, cond, classes):
    net = build_denoiser(SMALL[name], dims, 3, 3, cond_ch=4 if cond else 0, num_classes=classes)
    x = torch.randn(2, 3, *spatial)
    c = torch.randn(2, 4, *[max(1, s // 4) for s in spatial]) if cond else None
    labels = torch.tensor([1, classes]) if classes else None
    out = net(x, torch.tensor([-3.0, 4.0]), cond=c, labels=labels)
    assert out.shape == x.shape
    out.square().mean().backward()  # differentiable end to end


def test_denoiser_depends_on_conditioning():
    net = build_denoiser(SMALL["unet"], 2, 1, 1, cond_ch=2)
    for p in net.parameters():  # break zero-init so outputs respond to inputs
        torch.nn.init.normal_(p, std=0.1)
    x, lam = torch.randn(2, 1, 8, 8), torch.zeros(2)
    a = net(x, lam, cond=torch.zeros(2, 2, 2, 2))
    b = net(x, lam, cond=torch.ones(2, 2, 2, 2))
    c = net(x, lam + 3, cond=torch.zeros(2, 2, 2, 2))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(
    "dims, x_shape, cond_shape", [(2, (2, 3, 16, 16), (2, 4, 8, 8)), (3, (2, 1, 8, 16, 16), (2, 4, 2, 4, 4))]
)
def test_cond_all_levels_starts_as_first_level_conditioning(dims, x_shape, cond_shape):
    """z0 at every level: zero-initialised extras, so the same weights give the first-level-only
    output at the start; after a step of training the deeper levels respond to z0."""
    one = NetConfig(arch="unet", channels=[8, 16, 16], blocks=[1, 1, 1], emb_dim=16)
    every = NetConfig(**{**one.__dict__, "cond_all_levels": True})
    ch = x_shape[1]
    a, b = (build_denoiser(cfg, dims, ch, ch, cond_ch=4) for cfg in (one, every))
    missing = b.load_state_dict(a.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"cond_deep.{i}.{w}" for i in (0, 1) for w in ("bias", "weight")]
    x, lam, c = torch.randn(x_shape), torch.zeros(2), torch.randn(cond_shape)
    assert torch.equal(a(x, lam, cond=c), b(x, lam, cond=c))
    torch.nn.init.normal_(b.patch_out.weight, std=0.1)  # the zero-initialised output layer passes no gradient
    b(x, lam, cond=c).square().mean().backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in b.cond_deep)  # they learn from the first step


def test_cond_on_a_level_grid_and_where_it_does_not_apply():
    from unified_latents.errors import ConfigError
    from unified_latents.nn.networks import _resized

    z = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(_resized(z, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 means
    assert torch.equal(_resized(z, (8, 8))[0, 0, ::2, ::2], z[0, 0])  # each value repeated
    every = NetConfig(arch="unet", channels=[8], blocks=[1], cond_all_levels=True)
    with pytest.raises(ConfigError, match="model.decoder.cond_all_levels"):
        build_denoiser(every, 2, 1, 1)  # a U-Net without z0 (prior, base)
    with pytest.raises(ConfigError, match="model.decoder.cond_all_levels"):
        build_denoiser(NetConfig(arch="vit", width=16, heads=2, cond_all_levels=True), 2, 1, 1, cond_ch=4)


def test_per_frame_decoder_draws_each_frame_from_its_own_noise_the_whole_latent_and_its_time():
    from unified_latents.nn.networks import PerFrame

    cfg = NetConfig(arch="unet", channels=[8, 16], blocks=[1, 1], emb_dim=16, per_frame=True)
    net = build_denoiser(cfg, 3, 1, 1, cond_ch=2, cond_frames=2)
    assert isinstance(net, PerFrame) and net.inner.patch_in.weight.dim() == 4  # a 2-D network inside
    assert net.inner.cond_in.in_channels == 2 + 2 * 2 + 2 * len(PerFrame.FREQS)
    for p in net.parameters():  # break zero-init so outputs respond to inputs
        torch.nn.init.normal_(p, std=0.1)
    x, lam, z = torch.randn(2, 1, 4, 8, 8), torch.tensor([-1.0, 2.0]), torch.randn(2, 2, 2, 4, 4)
    out = net(x, lam, cond=z)
    assert out.shape == x.shape
    # frame 2 alone through the inner network, given z0 at its time (frame 2 of 4 sits three quarters of
    # the way from latent frame 0's centre to latent frame 1's), the stacked latent and its time signals
    when = torch.tensor((2 + 0.5) / 4)
    waves = torch.stack([f(torch.pi * k * when) for k in PerFrame.FREQS for f in (torch.sin, torch.cos)])
    at_time = 0.25 * z[:, :, 0] + 0.75 * z[:, :, 1]
    cond2 = torch.cat([at_time, z.flatten(1, 2), waves.view(1, -1, 1, 1).expand(2, -1, 4, 4)], dim=1)
    assert torch.allclose(out[:, :, 2], net.inner(x[:, :, 2], lam, cond=cond2), atol=1e-5)
    x2 = x.clone()
    x2[:, :, 1] += 1.0  # another frame's noise leaves frame 2 alone
    assert torch.equal(net(x2, lam, cond=z)[:, :, 2], out[:, :, 2])
    z2 = z.clone()
    z2[:, :, 1] += 1.0  # but every latent frame reaches every frame
    assert not torch.allclose(net(x, lam, cond=z2)[:, :, 0], out[:, :, 0])
    same = x[:, :, :1].expand(-1, -1, 4, -1, -1)  # identical noisy frames still differ by their time
    drawn = net(same, lam, cond=z)
    assert not torch.allclose(drawn[:, :, 0], drawn[:, :, 3])


def test_per_frame_only_for_a_video_decoder():
    from unified_latents.config import apply_overrides
    from unified_latents.errors import ConfigError
    from unified_latents.objectives.stage1 import check_grids

    cfg = NetConfig(arch="unet", channels=[8], blocks=[1], per_frame=True)
    for dims, cond_ch, frames in [(2, 4, 0), (3, 0, 0), (3, 4, 0)]:  # images; the prior or base model; no latent frames
        with pytest.raises(ConfigError, match="model.decoder.per_frame"):
            build_denoiser(cfg, dims, 1, 1, cond_ch=cond_ch, cond_frames=frames)
    with pytest.raises(ConfigError, match="model.decoder.per_frame"):  # the encoder: refused, not ignored
        build_encoder(NetConfig(arch="resnet_encoder", channels=[8], blocks=[1], per_frame=True), 3, 1, 4)
    with pytest.raises(ConfigError, match="model.decoder.per_frame"):
        from unified_latents.objectives.registry import build_model

        build_model(apply_overrides(get_preset("tiny"), ["model.decoder.per_frame=true"]))
    # the grid check sees one frame: three stride-2 levels need 8 frames in 3-D, not per frame
    deep = [
        "data.frames=4",
        "model.decoder.patch=2",
        "model.decoder.channels=[8,8,8,8]",
        "model.decoder.blocks=[1,1,1,1]",
    ]
    with pytest.raises(ConfigError, match="smaller than its downsampling"):
        check_grids(apply_overrides(get_preset("tiny-video"), deep))
    check_grids(apply_overrides(get_preset("tiny-video"), deep + ["model.decoder.per_frame=true"]))


def test_imagenet512_preset_on_meta_device():
    from unified_latents.eval import stage1_report
    from unified_latents.objectives.registry import build_model

    with torch.device("meta"):
        model = build_model(get_preset("imagenet512"))
    assert model.z_shape == (32, 32, 32)  # UL_SPEC 6: 32x32x32 latent at 512^2
    rep = stage1_report(model)
    assert 1e8 < rep["total"]["params"] < 1e9
    assert rep["total"]["train_flops"] == 3 * rep["total"]["forward_flops"] > 1e12
