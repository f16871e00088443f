"""How a model is laid out on the devices: DDP or FSDP2, activation checkpointing, torch.compile,
the memory format, TF32 and the optimizer, as the resolved `Accel` (unified_latents/accel.py) asks.
The loop calls `prepare` and then only uses what it returns.

Units of sharding, checkpointing and compilation are the networks' blocks (nn/layers.py ResBlock
and TransformerBlock) inside the trainable top-level networks of the objective (encoder, prior,
decoder; the base model's `net`). Frozen networks (stage 1 inside a base model) stay whole on
every device, outside the optimizer and the EMA.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

from .. import dist
from ..accel import Accel, apply_backends, lay_out, resolve
from ..config import RunConfig
from ..errors import ConfigError
from ..nn.layers import ResBlock, TransformerBlock
from .ema import EMA

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

BLOCKS = (ResBlock, TransformerBlock)
SHARDS = ("ddp", "fsdp")


def blocks(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, BLOCKS)]


def trainable_networks(model: nn.Module) -> list[nn.Module]:
    """The top-level children that hold trainable parameters. Refuses a model whose trainable
    parameters sit elsewhere (directly on the root, or mixed with frozen ones in one child):
    they would be neither sharded nor synchronised."""
    nets = [c for c in model.children() if any(p.requires_grad for p in c.parameters())]
    covered = {id(p) for c in nets for p in c.parameters()}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    mixed = [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in covered]
    if stray or mixed:
        raise ConfigError(
            f"parameter {(stray or mixed)[0]!r} is not in a wholly trainable top-level network, which "
            "train.shard=fsdp, train.compile and train.activation_checkpointing need; turn them off"
        )
    return nets


@dataclass
class Layout:
    """What `prepare` returns: the module to call in training, the optimizer, and how to skip
    gradient synchronisation on all but the last micro-batch."""

    forward: nn.Module
    opt: torch.optim.Optimizer
    ddp: DDP | None = None
    fsdp_units: list[FSDPModule] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return bool(self.fsdp_units)

    @contextmanager
    def no_sync(self):
        with ExitStack() as stack:
            if self.ddp is not None:
                stack.enter_context(self.ddp.no_sync())
            for unit in self.fsdp_units:
                unit.set_requires_gradient_sync(False, recurse=False)
            try:
                yield
            finally:
                for unit in self.fsdp_units:
                    unit.set_requires_gradient_sync(True, recurse=False)


def prepare(cfg: RunConfig, model: nn.Module, ema: EMA, device: torch.device) -> Layout:
    """Lay `model` (and the EMA copy) out for training on this process; returns the Layout."""
    t = cfg.train
    if t.shard not in SHARDS:
        raise ConfigError(f"train.shard must be one of {', '.join(SHARDS)}, got {t.shard!r}")
    acc = resolve(cfg, device)
    apply_backends(acc)
    for m in (model, ema.model):  # the EMA copy too: inference from it uses the same layout
        lay_out(m, acc)
    sharding = dist.world() > 1 and t.shard == "fsdp"
    nets = trainable_networks(model) if (sharding or t.compile or t.activation_checkpointing) else []
    wrap_blocks(nets, compile=t.compile, recompute=t.activation_checkpointing)
    layout_ddp, units = None, []
    if sharding:
        units = _fully_shard(nets, device, mixed=acc.amp)
        _fully_shard(trainable_networks_like(ema.model, nets, model), device, mixed=False)
    elif dist.world() > 1:
        layout_ddp = DDP(model, find_unused_parameters=model.has_unused_parameters)
    return Layout(layout_ddp or model, optimizer(cfg, model, acc), layout_ddp, units)


def optimizer(cfg: RunConfig, model: nn.Module, acc: Accel) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; the fused kernel where `acc` asks for it (which also
    lets the loop skip a non-finite step on the device: `found_inf`)."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    b1, b2 = t.betas  # two numbers (config.py checks)
    return torch.optim.AdamW(params, lr=t.lr, betas=(b1, b2), weight_decay=t.weight_decay, fused=acc.fused_adam)


def wrap_blocks(nets: list[nn.Module], compile: bool, recompute: bool) -> None:
    """Compile each block's forward and/or recompute its activations in the backward pass. The
    compiled function runs inside the checkpoint (Dynamo does not trace into `checkpoint`, so a
    compiled checkpointed forward would compile nothing), and the recompile limit covers one
    specialisation per block (blocks of one class share a code object; each shape recompiles)."""
    bs = [b for n in nets for b in blocks(n)]
    if compile and bs:
        import torch._dynamo

        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, len(bs) + 8)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * len(bs) + 64)
    for b in bs:
        fwd = torch.compile(b.forward) if compile else b.forward
        b.forward = functools.partial(checkpoint, fwd, use_reentrant=False) if recompute else fwd


def trainable_networks_like(copy: nn.Module, nets: list[nn.Module], model: nn.Module) -> list[nn.Module]:
    """The children of `copy` (the EMA model) at the names of `nets` in `model`."""
    names = [n for n, c in model.named_children() if any(c is m for m in nets)]
    return [getattr(copy, n) for n in names]


def _fully_shard(nets: list[nn.Module], device: torch.device, mixed: bool) -> list[FSDPModule]:
    """FSDP2 per block, then per network (its remaining parameters); returns the sharded units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Inputs stay as they come (cast_forward_inputs=False): autocast casts what the matmuls take,
    # while the log-SNR reaches NoiseEmbedding in fp32 (in bf16, 7.30 and 7.32 are one value).
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
        if mixed
        else MixedPrecisionPolicy()
    )
    units = []
    for net in nets:
        for b in blocks(net):
            units.append(fully_shard(b, mp_policy=policy))  # the block itself, now an FSDPModule
        units.append(fully_shard(net, mp_policy=policy))
    return units


def full_state(module: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0 (gathered from the shards under FSDP: every rank must call)."""
    if not sharded:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # torch types a state dict's values as any state value; a model's are tensors
    return cast(
        dict[str, torch.Tensor],
        get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
    )
