"""Typed run configuration: dataclasses, named presets, `--set a.b=v` overrides.

Defaults live here and nowhere else. A resolved config is a plain nested dict
(`to_dict`) that is saved beside every run and inside every artifact; `from_dict`
rebuilds it with full type checking, so a config file can never run code.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field

import yaml

from .config_ranges import check_ranges
from .config_ranges import flatten as flatten  # re-exported: callers import it from here
from .errors import ConfigError


@dataclass
class DataConfig:
    source: str = "fmnist"  # "fmnist", a folder of images, or an .npz file
    eval_source: str = ""  # held-out data; "" = the matching test split ("fmnist" -> test)
    resolution: int = 32  # square side the networks see
    channels: int = 1  # 1 (gray) or 3 (RGB); inputs of any mode are converted
    pad: int = 2  # border added around the stored images (Fashion-MNIST 28 -> 32); metrics crop it off
    skip_bad: bool = False  # skip unreadable image files instead of stopping
    workers: int = -1  # DataLoader processes decoding training batches ahead of the step (0 = in the training
    #                    process; -1 = auto: 4 per process on CUDA, fewer if the CPUs are fewer; 0 elsewhere)
    image_column: str = "image"  # `ul data prepare hf:NAME`: the dataset's image column
    label_column: str = "label"  # ... and its label column (none: unlabelled)
    num_classes: int = 10  # labels kept for later stages; 0 = unconditional data
    # Video (UL_SPEC 6): frames > 0 makes every example a clip [C, T, H, W] and every network 3-D.
    frames: int = 0  # clip length T; 0 = images
    frame_stride: int = 1  # keep every k-th decoded frame when cutting clips from video files
    clips: int = 10_000  # moving-fmnist: training clips generated (held-out split: clips // 10)


@dataclass
class NetConfig:
    arch: str = "unet"  # registry name: "resnet_encoder", "unet", "vit"
    channels: list[int] = field(default_factory=lambda: [64])  # per resolution level
    blocks: list[int] = field(default_factory=lambda: [2])  # residual blocks per level
    patch: int = 1  # non-overlapping patch size at the input
    patch_t: int = 1  # video only: temporal patch size at the input
    time_down: int = -1  # video only: how many stride-2 levels also halve time; -1 = every level
    transformer_blocks: int = 0  # transformer blocks at the coarsest level (U-ViT) or in a ViT
    width: int = 256  # transformer width
    heads: int = 4
    dropout: float = 0.0
    emb_dim: int = 128  # width of the log-SNR embedding
    norm: str = "group"  # conv normalisation: "group" (<= 32 groups), "group<k>" (k channels per group, e.g.
    #                      "group8") or "layer" (1 group); nn/layers.py norm
    cond_all_levels: bool = False  # U-Net with a cond (the decoder): z0 enters every down level, not only the first
    per_frame: bool = (
        False  # video decoder: a 2-D network on each frame alone, given z0 at its time, the whole z0, the time
    )
    up_extra: int = 0  # U-Nets: residual blocks added to each up-path level beyond `blocks` (ADM and EDM2 use 1)
    mid_zero_init: bool = False  # U-ViT: the middle transformer's output projection starts at zero (U-ViT, DiT)


@dataclass
class ModelConfig:
    latent_channels: int = 4
    encoder: NetConfig = field(
        default_factory=lambda: NetConfig(arch="resnet_encoder", channels=[32, 64], blocks=[1, 1], patch=2)
    )
    prior: NetConfig = field(default_factory=lambda: NetConfig(arch="unet", channels=[64], blocks=[2]))
    decoder: NetConfig = field(
        default_factory=lambda: NetConfig(arch="unet", channels=[32, 64], blocks=[1, 1], patch=2)
    )
    base: NetConfig = field(  # stage-2 base model on the latents (larger than the prior)
        default_factory=lambda: NetConfig(arch="unet", channels=[64, 128], blocks=[2, 2], emb_dim=256)
    )


@dataclass
class DiffusionConfig:
    lam0: float = 5.0  # encoder noise log-SNR; the prior's maximum log-SNR (UL_SPEC 2)
    lam_z_min: float = -15.0  # prior/base minimum log-SNR
    lam_x_min: float = -15.0
    lam_x_max: float = 15.0
    pixel_shift: float | None = None  # None = 2 ln(64 / resolution) (UL_SPEC 1)
    bias: float = 0.0  # b in sigmoid(b - lam) of the decoder weight (UL_SPEC 3)
    loss_factor: float = 1.5  # c_lf; the starting value when target_bits > 0
    target_bits: float = 0.0  # bits per image the loss-factor controller aims for; 0 = off
    controller_rate: float = 0.02  # step size of dual ascent on log c_lf (the most it moves in one step)
    controller_hold_samples: int = 10_000  # c_lf stays at loss_factor while the untrained prior's bits are meaningless
    controller_smoothing: float = 0.9  # the controller follows an EMA of the batch bitrate with this decay
    controller_min: float = 0.1  # loss-factor bounds for the controller
    controller_max: float = 100.0
    stratified: bool = True  # low-discrepancy t per batch
    # Ablation switches (paper Tables 5-6; UL_SPEC 8). Defaults are UL itself.
    prior_kind: str = "diffusion"  # "diffusion" (UL) or "gaussian": KL to N(0, I), VAE-style (Table 5)
    kl_weight: float = 1.0  # weight of the gaussian prior's KL
    decoder_kind: str = "diffusion"  # "diffusion" (UL) or "mse": L2 regression from z0 (Table 5)
    mse_sigma: float = 0.1  # the mse decoder's fixed Gaussian likelihood scale (nats = ||x - x_hat||^2 / 2 sigma^2)
    learned_variance: bool = False  # encoder also predicts log sigma_z^2 (Table 6)
    # Decoder conditioning augmentation (Cascaded Diffusion Models' noise augmentation, for the
    # gap between the encoder's z0 and the base model's samples): in training, each example's z0
    # is noised further to a log-SNR drawn uniformly from [lam0 - cond_aug, lam0] before the
    # decoder sees it. The prior and the bitrate still see z0 at lam0. 0 = off.
    cond_aug: float = 0.0
    prior_stop_grad: bool = False  # no prior gradient into the encoder (Table 6 row A)...
    stop_grad_kl_weight: float = 0.01  # ...whose latent a KL to N(0, I) at this weight regularises (0: none)


@dataclass
class BaseConfig:
    """Stage 2 (UL_SPEC 4): a base model on the frozen encoder's latents."""

    stage1_artifact: str = ""  # the frozen stage-1 artifact (EMA encoder + decoder)
    latents: str = ""  # latents cached by `ul encode`; "" = encode the data at start
    bias: float = 0.0  # b_base in sigmoid(b_base - lam)
    shift: float = 0.0  # log-SNR schedule shift of the base model
    # Add -2 ln(std of the training latents) to `shift` when stage 2 starts: the cosine schedule is
    # placed as for unit-scale data, so a latent of std s is half hidden near log-SNR -2 ln s, not 0.
    # The resolved shift is what the run's config and artifact record (shift_auto then reads false).
    shift_auto: bool = False
    label_dropout: float = 0.1  # classifier-free guidance training
    # Video: condition on a random prefix of context latent frames (0..T_latent-1, uniform) so
    # one model continues clips from context frames and also generates them from nothing.
    context: bool = False
    # Baselines only: scale latents to unit std before the base model sees them (Stable
    # Diffusion's scale factor). UL never rescales: log-SNR 5 is defined on the raw latents.
    scale_latents: bool = False


@dataclass
class TrainConfig:
    total_samples: int = 96_000  # training length in samples seen (global)
    batch: int = 64  # global batch
    micro_batch: int = 0  # per-device forward size; 0 = whole per-device batch (no accumulation)
    lr: float = 2e-3
    warmup_samples: int = 6_400
    lr_decay: str = "cosine"  # "constant", "cosine" (to lr_final_frac * lr at the end) or "rsqrt" (EDM2:
    #                          lr / sqrt(max(samples / lr_ref_samples, 1)))
    lr_ref_samples: int = 0  # rsqrt only: the samples after which the learning rate decays as 1 / sqrt
    lr_final_frac: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    posthoc_ema: list[float] = field(
        default_factory=list
    )  # sigma_rel of power EMAs tracked for post-hoc EMA, e.g. [0.05, 0.1]
    posthoc_every: int = 0  # samples between their snapshots (<outdir>/posthoc-ema/); 0 = at each checkpoint
    seed: int = 0
    log_every: int = 25  # steps between stats lines
    log: str = ""  # also log to "tensorboard" (<outdir>/tensorboard) or "wandb"; stats.jsonl is always written
    image_every: int = 32_000  # samples between reconstruction grids
    ckpt_every: int = 32_000  # samples between checkpoints
    ckpt_minutes: float = 0.0  # also checkpoint after this many minutes of wall clock since the last; 0 = off
    keep: int = 2  # training states kept
    async_checkpoint: bool = True  # under torchrun: write states in a background thread (tensors copied to CPU first)
    max_bad_steps: int = 20  # consecutive non-finite steps before stopping
    amp: bool = True  # allow bf16 mixed precision: what accel.amp=auto uses on CUDA (accel.amp forces it)
    shard: str = "ddp"  # several processes: "ddp" (a full replica each) or "fsdp" (FSDP2: parameters,
    #                     gradients, optimizer and EMA sharded per block; bf16 parameters on CUDA with amp)
    compile: bool = False  # torch.compile each network block
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass


@dataclass
class SampleConfig:
    sampler: str = "ancestral"  # "ancestral", "ddim" or "dpm++2m" (deterministic, second order)
    decoder_steps: int = 32
    base_steps: int = 64
    guidance: float = 1.0  # classifier-free guidance scale; 1 = no guidance
    guidance_interval: list[float] = field(default_factory=list)  # [lam_lo, lam_hi]; [] = everywhere
    batch: int = 0  # examples per generation call (`ul sample`); 0 = the data's default (images 250, clips 16)


@dataclass
class EvalConfig:
    # Examples per network call in evaluation (generation, reconstruction, encoding held-out
    # data for the bitrate); 0 = the data's defaults (images 250, encoding 500; clips 16).
    # Results do not depend on it beyond float rounding: each example has its own seed.
    batch: int = 0


Switch = typing.NewType("Switch", str)  # "auto", "on" or "off" (YAML's true/false are read as on/off)
SWITCH = ("auto", "on", "off")


@dataclass
class AccelConfig:
    """Every device-dependent performance choice (unified_latents/accel.py resolves them). "auto"
    picks by device (on for CUDA, off elsewhere); "on"/"off" force a choice on any device, so a
    CPU test can take the path a GPU takes. None of them changes what is optimised beyond float
    rounding."""

    amp: Switch = Switch("auto")  # bf16 autocast around network calls, training and inference; auto: CUDA and train.amp
    channels_last: Switch = Switch("auto")  # conv weights and inputs channels-last (4-D) / channels-last-3d (5-D)
    tf32: Switch = Switch("auto")  # TF32 matmuls and convolutions (never for the Inception features of FID)
    fused_adam: Switch = Switch("auto")  # fused AdamW kernel; a non-finite step is then skipped on the device
    pin_memory: Switch = Switch("auto")  # pinned host batches and non-blocking copies to the device
    cudnn_benchmark: Switch = Switch("auto")  # cuDNN picks the fastest convolution algorithm per shape
    noise: str = "auto"  # generation noise: "host" (per-seed CPU generators) or "device" (counter-based
    #                      per-seed streams drawn on the device); auto: device on CUDA, host elsewhere


@dataclass
class RunConfig:
    stage: str = "latents"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def pixel_shift(self) -> float:
        d = self.diffusion
        return d.pixel_shift if d.pixel_shift is not None else 2.0 * math.log(64.0 / self.data.resolution)


# ----------------------------------------------------------------------------- dict round trip


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`, converting only the lossless int->float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(value, tp, where)
    if tp is Switch:
        value = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
        if value not in SWITCH:
            raise ConfigError(f"{where}: expected one of {', '.join(SWITCH)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list like [1, 2], got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _from_dict(cls, d: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; valid keys here: "
            f"{', '.join(sorted(names))}"
        )
    obj = cls()
    for k, v in d.items():
        setattr(obj, k, _coerce(v, hints[k], f"{where}.{k}" if where else k))
    return obj


def from_dict(d: dict) -> RunConfig:
    """A typed RunConfig from a plain dict (overrides, a config file, an artifact), range-checked."""
    return check_ranges(_from_dict(RunConfig, d, ""))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `a.b=value` strings (values parsed as YAML scalars/lists, then type-checked)."""
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-3)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: typing.Any = d  # a nested dict, then what the key names
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"unknown config key {key!r}; see `ul info --preset NAME` for the keys")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config key {key!r}; see `ul info --preset NAME` for the keys")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of {key!r}: {raw!r} ({e})") from None
        node[parts[-1]] = value
    return from_dict(d)


def clone(cfg: RunConfig) -> RunConfig:
    return copy.deepcopy(cfg)
