import pytest

from unified_latents.config import apply_overrides, flatten, from_dict, to_dict
from unified_latents.errors import ConfigError
from unified_latents.presets import PRESETS, get_preset
from unified_latents.saved_config import from_saved, incompatible_changes


def test_round_trip_all_presets():
    for name in PRESETS:
        for stage in ("latents", "base"):
            cfg = get_preset(name, stage)
            assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_overrides_typed():
    cfg = apply_overrides(
        get_preset("tiny"),
        ["train.lr=3e-4", "model.encoder.channels=[4, 8]", "diffusion.pixel_shift=null", "diffusion.bias=1"],
    )
    assert cfg.train.lr == 3e-4 and cfg.model.encoder.channels == [4, 8] and cfg.diffusion.bias == 1.0
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(cfg, ["train.batch=true"])
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(cfg, ["model.encoder=3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])


def test_config_file_cannot_run_code():
    with pytest.raises(ConfigError):
        apply_overrides(get_preset("tiny"), ["data.source=!!python/object/apply:os.system ['echo hi']"])


@pytest.mark.parametrize(
    "change",
    [
        "model.prior.blocks=[2]",
        "train.seed=1",
        "diffusion.prior_kind=gaussian",
        "diffusion.decoder_kind=mse",
        "diffusion.bias=1.0",
        "diffusion.lam_x_min=-12",
        "diffusion.lam_x_max=12",
        "data.pad=1",
        "train.lr=1e-4",
        "train.batch=16",
        "diffusion.target_bits=50",
        "data.image_column=img",
        "train.ema_decay=0.99",
    ],
)
def test_a_resumed_run_refuses_every_field_that_changes_its_optimisation(change):
    a = to_dict(get_preset("tiny"))
    b = to_dict(apply_overrides(get_preset("tiny"), ["train.total_samples=128", change]))
    diffs = incompatible_changes(a, b)
    assert len(diffs) == 1 and diffs[0].startswith(change.split("=")[0] + ":"), diffs


def test_a_resumed_run_may_change_length_logging_layout_sampling_and_paths():
    a = to_dict(get_preset("tiny"))
    b = to_dict(
        apply_overrides(
            get_preset("tiny"),
            [
                "train.total_samples=128",
                "train.log_every=5",
                "train.ckpt_every=16",
                "train.keep=5",
                "train.shard=fsdp",
                "train.micro_batch=4",
                "data.workers=2",
                "sample.guidance=2.0",
                "eval.batch=8",
                "data.source=/moved/data.npz",
            ],
        )
    )
    assert incompatible_changes(a, b) == []  # a moved source is checked by content (the state's data fingerprint)


def test_config_saved_before_video_fields_still_resumes():
    new = to_dict(get_preset("fmnist"))
    old = to_dict(get_preset("fmnist"))
    for key in ("frames", "frame_stride", "clips"):  # fields a config from an older version lacks
        del old["data"][key]
    for net in old["model"].values():
        if isinstance(net, dict):
            del net["patch_t"], net["time_down"]
    del old["base"]["context"]
    assert incompatible_changes(old, new) == []
    video = apply_overrides(get_preset("fmnist"), ["data.frames=8"])
    assert incompatible_changes(old, to_dict(video)) == ["data.frames: 0 -> 8"]


def test_a_config_saved_before_the_controller_hold_reads_as_it_was_trained():
    """Fields added later read, when a saved config lacks them, as the behaviour it was trained
    with (no hold, no smoothing, a bare stop-grad), not as today's defaults."""
    old = to_dict(get_preset("rgb32", "latents"))
    for key in ("controller_hold_samples", "controller_smoothing", "stop_grad_kl_weight"):
        del old["diffusion"][key]
    assert incompatible_changes(old, to_dict(get_preset("rgb32", "latents"))) == []  # rgb32 keeps that controller
    d = from_saved(old).diffusion
    assert (d.controller_hold_samples, d.controller_smoothing) == (0, 0.0)
    old["diffusion"]["prior_stop_grad"] = True  # a stop-grad run of then had no KL regulariser
    assert from_saved(old).diffusion.stop_grad_kl_weight == 0.0
    # the fmnist preset's new controller is a change to a stage-1 run, but not to a stage-2 one
    old_fm = to_dict(get_preset("fmnist", "latents"))
    del old_fm["diffusion"]["controller_hold_samples"]
    assert incompatible_changes(old_fm, to_dict(get_preset("fmnist", "latents"))) == [
        "diffusion.controller_hold_samples: 0 -> 10000"
    ]
    old_base = to_dict(get_preset("fmnist", "base"))
    del old_base["diffusion"]["controller_hold_samples"]
    old_base["diffusion"]["loss_factor"] = 3.0
    assert incompatible_changes(old_base, to_dict(get_preset("fmnist", "base"))) == []


def test_controller_and_stop_grad_settings_are_ignored_on_resume_while_they_cannot_act():
    """A fixed-c_lf run (target_bits 0) resumes whatever the controller's settings; a run without
    the stop-grad whatever its KL weight; either refuses as soon as the setting acts."""
    old = to_dict(get_preset("fmnist", "latents"))
    old["diffusion"].update(
        target_bits=0.0,
        controller_hold_samples=0,
        controller_smoothing=0.0,
        controller_rate=0.1,
        stop_grad_kl_weight=0.5,
    )
    new = get_preset("fmnist", "latents")
    new.diffusion.target_bits, new.diffusion.loss_factor = 0.0, old["diffusion"]["loss_factor"]
    assert incompatible_changes(old, to_dict(new)) == []
    new.diffusion.target_bits = 180.0  # the controller switched on: its settings now matter
    assert {d.split(":")[0] for d in incompatible_changes(old, to_dict(new))} == {
        "diffusion.target_bits",
        "diffusion.controller_hold_samples",
        "diffusion.controller_smoothing",
        "diffusion.controller_rate",
    }
    new.diffusion.target_bits, new.diffusion.prior_stop_grad = 0.0, True
    assert {d.split(":")[0] for d in incompatible_changes(old, to_dict(new))} == {
        "diffusion.prior_stop_grad",
        "diffusion.stop_grad_kl_weight",
    }


def test_fmnist_stage2_samples_with_ddim_and_stage1_keeps_ancestral():
    from unified_latents.presets import get_preset

    base = get_preset("fmnist", "base")
    assert base.sample.sampler == "ddim" and base.sample.base_steps == 12 and base.sample.decoder_steps == 16
    assert get_preset("fmnist").sample.sampler == "ancestral"
    assert get_preset("tiny", "base").sample.sampler == "ancestral"


@pytest.mark.parametrize("stage", ["latents", "base"])
def test_fmnist_long_is_the_main_job_with_only_its_stated_changes(stage):
    # a retuned fmnist preset carries over to fmnist-long; only the decoder width, the lengths,
    # the stage-1 preview/checkpoint spacing and stage 2's EMA settings differ
    short, long = (flatten(to_dict(get_preset(name, stage))) for name in ("fmnist", "fmnist-long"))
    differ = {k for k in short if short[k] != long[k]}
    expected = {"model.decoder.channels", "train.total_samples"} | (
        {"train.image_every", "train.ckpt_every"}
        if stage == "latents"
        else {"train.image_every", "train.posthoc_ema", "train.posthoc_every"}
    )
    assert differ == expected
    assert (
        long["model.decoder.channels"] == [32, 64, 128]
        and long["train.total_samples"] == 2 * short["train.total_samples"]
    )


def test_a_network_needs_one_block_count_per_level():
    with pytest.raises(ConfigError, match="model.decoder.blocks.*one block count per level of model.decoder.channels"):
        apply_overrides(get_preset("tiny"), ["model.decoder.channels=[8,16,32]"])
