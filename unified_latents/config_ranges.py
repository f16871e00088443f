"""The allowed range of every config value: `check_ranges` refuses a value outside its meaning
(a batch of 0, a negative learning rate, NaN, ...) with one error naming the key, the rule and the
default (config.from_dict calls it on every config it builds)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ConfigError

NOISE = ("auto", "host", "device")  # accel.noise
LR_DECAYS = ("cosine", "constant", "rsqrt")  # train.lr_decay: training/loop.py lr_at


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys that `--set` takes."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


_NETS = ("encoder", "prior", "decoder", "base")
_POSITIVE = (
    "data.resolution",
    "data.channels",
    "data.frame_stride",
    "data.clips",
    "model.latent_channels",
    "train.total_samples",
    "train.batch",
    "train.lr",
    "train.log_every",
    "train.keep",
    "train.max_bad_steps",
    "sample.decoder_steps",
    "sample.base_steps",
    "diffusion.loss_factor",
    "diffusion.mse_sigma",
    "diffusion.controller_min",
    "diffusion.controller_max",
    *(f"model.{n}.{k}" for n in _NETS for k in ("patch", "patch_t", "width", "heads", "emb_dim")),
)
_NON_NEGATIVE = (
    "data.pad",
    "data.num_classes",
    "data.frames",
    "train.micro_batch",
    "train.warmup_samples",
    "train.image_every",
    "train.ckpt_every",
    "train.ckpt_minutes",
    "train.posthoc_every",  # 0 = a preview / checkpoint only at the end
    "train.weight_decay",
    "train.grad_clip",
    "sample.batch",
    "eval.batch",
    "sample.guidance",
    "diffusion.target_bits",
    "diffusion.kl_weight",
    "diffusion.stop_grad_kl_weight",
    "diffusion.controller_rate",
    "diffusion.controller_hold_samples",
    "diffusion.cond_aug",
    "train.lr_ref_samples",
    *(f"model.{n}.{k}" for n in _NETS for k in ("transformer_blocks", "up_extra")),
)
_UNIT = {
    "train.ema_decay": False,
    "diffusion.controller_smoothing": False,
    "train.lr_final_frac": True,
    "base.label_dropout": True,  # [0, 1) or [0, 1]
    **{f"model.{n}.dropout": False for n in _NETS},
}


def check_ranges(cfg: Any) -> Any:
    """Refuse values outside their meaning (a batch of 0, a negative learning rate, NaN, ...)
    with one error naming the key, the rule and the default; returns cfg unchanged."""
    flat, default = flatten(dataclasses.asdict(cfg)), flatten(dataclasses.asdict(type(cfg)()))

    def bad(key: str, rule: str):
        return ConfigError(
            f"{key}={flat[key]!r}: must be {rule} (default {default.get(key)!r}; set it with --set {key}=VALUE)"
        )

    for key, v in flat.items():
        items = v if isinstance(v, list) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in items):
            raise bad(key, "a finite number")
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise bad(key, "greater than 0")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise bad(key, "0 or more")
    for key, closed in _UNIT.items():
        if not (0 <= flat[key] <= 1 if closed else 0 <= flat[key] < 1):
            raise bad(key, "in [0, 1]" if closed else "in [0, 1)")
    if flat["data.workers"] < -1:
        raise bad("data.workers", "-1 (auto), 0 or more")
    if flat["train.lr_decay"] not in LR_DECAYS:
        raise bad("train.lr_decay", "one of " + ", ".join(LR_DECAYS))
    if flat["train.lr_decay"] == "rsqrt" and not flat["train.lr_ref_samples"]:
        raise bad("train.lr_ref_samples", "greater than 0 with train.lr_decay=rsqrt (where the decay starts)")
    if flat["accel.noise"] not in NOISE:
        raise bad("accel.noise", "one of " + ", ".join(NOISE))
    lengths = flat["train.posthoc_ema"]  # 0.28: training/posthoc_ema.py's MAX_SIGMA_REL
    if any(not 0 < x <= 0.28 for x in lengths) or len({round(x, 4) for x in lengths}) != len(lengths):
        raise bad("train.posthoc_ema", "a list of distinct relative EMA lengths, each in (0, 0.28]")
    if len(flat["train.betas"]) != 2 or any(not 0 <= b < 1 for b in flat["train.betas"]):
        raise bad("train.betas", "two numbers in [0, 1)")
    for n in _NETS:
        if any(c <= 0 for c in flat[f"model.{n}.channels"]):
            raise bad(f"model.{n}.channels", "a list of widths, each greater than 0")
        if any(b < 0 for b in flat[f"model.{n}.blocks"]):
            raise bad(f"model.{n}.blocks", "a list of block counts, each 0 or more")
        if len(flat[f"model.{n}.blocks"]) != len(flat[f"model.{n}.channels"]):
            raise bad(f"model.{n}.blocks", f"one block count per level of model.{n}.channels")
    for lo, hi in (
        ("diffusion.lam_z_min", "diffusion.lam0"),
        ("diffusion.lam_x_min", "diffusion.lam_x_max"),
        ("diffusion.controller_min", "diffusion.controller_max"),
    ):
        if flat[lo] >= flat[hi]:
            raise bad(lo, f"below {hi}={flat[hi]!r}")
    return cfg
