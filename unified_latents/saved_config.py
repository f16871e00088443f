"""Configs saved by runs and artifacts: what a resumed run may change, and how a config written by
an earlier version (lacking newer fields) is read as it was trained."""

from __future__ import annotations

import copy

from .config import RunConfig, flatten, from_dict, to_dict
from .errors import ConfigError

# What a resumed run may change: how long it trains, how it logs, checkpoints and is laid out on
# devices, how it samples and evaluates, and where its inputs are (their contents are fingerprinted
# in the training state: data/fingerprint.py, and the stage-1 encoder for stage 2). Every other
# field changes the optimisation that the state belongs to and is refused.
CHANGEABLE = (
    "data.source",
    "data.eval_source",
    "data.skip_bad",
    "data.workers",
    "base.stage1_artifact",
    "base.latents",
    "train.total_samples",
    "train.posthoc_every",
    "train.log_every",
    "train.log",
    "train.image_every",
    "train.ckpt_every",
    "train.ckpt_minutes",
    "train.keep",
    "train.async_checkpoint",
    "train.max_bad_steps",
    "train.micro_batch",
    "train.shard",
    "train.compile",
    "train.activation_checkpointing",
    "train.amp",
    "sample",
    "eval",
    "accel",
)


# Fields added later whose earlier behaviour is not their default: a saved config (a run's
# config.json, an artifact's) without them was trained with these values (the KL weight only
# matters, and is only filled in, for a stop-grad run).
EARLIER_BEHAVIOUR = {"diffusion": {"controller_hold_samples": 0, "controller_smoothing": 0.0}}
# Stage-1 objective fields that a stage-2 (or pixel) run carries but never uses.
# The bitrate controller's settings, unused while it is off (target_bits 0: c_lf fixed).
CONTROLLER = (
    "diffusion.controller_rate",
    "diffusion.controller_hold_samples",
    "diffusion.controller_smoothing",
    "diffusion.controller_min",
    "diffusion.controller_max",
)
# Stage-2 fields that a stage-1 run carries but never uses: a pipeline can try another base model
# on a finished stage 1.
STAGE2_ONLY = ("base", "model.base")
STAGE1_ONLY = ("diffusion.loss_factor", "diffusion.target_bits", *CONTROLLER, "diffusion.stop_grad_kl_weight")


def from_saved(d: dict) -> RunConfig:
    """from_dict for a config saved by any version: newer fields it lacks take the value that
    reproduces how it was trained (EARLIER_BEHAVIOUR), the rest their defaults."""
    d = copy.deepcopy(d)
    for section, fields in EARLIER_BEHAVIOUR.items():
        if isinstance(d.get(section), dict):
            for k, v in fields.items():
                d[section].setdefault(k, v)
    if isinstance(d.get("diffusion"), dict) and d["diffusion"].get("prior_stop_grad"):
        d["diffusion"].setdefault("stop_grad_kl_weight", 0.0)
    return from_dict(d)


def incompatible_changes(old: dict, new: dict) -> list[str]:
    """The fields of `new` that differ from a saved run's `old` and may not change on resume."""
    try:  # a config saved by an older version lacks newer fields: read them as it was trained
        old = to_dict(from_saved(old))
    except ConfigError:
        pass
    fo, fn = flatten(old), flatten(new)
    ignored = (*CHANGEABLE, *(STAGE1_ONLY if new.get("stage") != "latents" else STAGE2_ONLY))
    if not fo.get("diffusion.target_bits") and not fn.get("diffusion.target_bits"):
        ignored += CONTROLLER  # a fixed c_lf before and after: the controller never acts
    if not fo.get("diffusion.prior_stop_grad") and not fn.get("diffusion.prior_stop_grad"):
        ignored += ("diffusion.stop_grad_kl_weight",)  # the KL weight only acts with the stop-grad
    diffs = []
    for key in sorted(set(fo) | set(fn)):
        if fo.get(key) != fn.get(key) and not any(key == p or key.startswith(p + ".") for p in ignored):
            diffs.append(f"{key}: {fo.get(key)!r} -> {fn.get(key)!r}")
    return diffs
