"""Training memory per GPU, estimated on the meta device (nothing is allocated): model state by
counting, activations by recording what one training forward saves for its backward pass.

Model state per trainable parameter: fp32 weight 4 B, gradient 4 B, AdamW moments 8 B, EMA 4 B
(20 B); frozen parameters (stage 1 inside a base model) 4 B, never sharded. DDP holds all of it
on every GPU. FSDP divides the trainable part by the GPU count and adds the units gathered at
once: the block computing and the one prefetched, in bf16 (the block's own gradient in fp32 is
counted too). Activations are the tensors saved for backward at the per-GPU micro-batch (the
growth from micro-batch m to 2m, so weights kept for the backward are not counted twice), in the
dtype the meta forward produces (fp32: bf16 autocast on a GPU stores about half of the matmul
outputs), with attention counted as a fused (flash) kernel saves it: q, k, v, the output and one
log-sum-exp per query, never the L x L weights. The caching allocator's fragmentation and the
CUDA context (~0.5-1 GB) are not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from unittest import mock

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..training.parallel import blocks, trainable_networks, wrap_blocks

if TYPE_CHECKING:
    from ..objectives.base import ObjectiveModule


class MetaNoise:
    """Stands in for objectives.noise.BatchNoise: shapes only, on the meta device."""

    def __init__(self, rows: int):
        self.rows = rows

    def normal(self, shape):
        return torch.zeros(self.rows, *shape, device="meta")

    def uniform(self, shape=()):
        return torch.zeros(self.rows, *shape, device="meta")

    def randint(self, high):
        return torch.zeros(self.rows, dtype=torch.long, device="meta")

    def stratified(self, stratified=True):
        return torch.zeros(self.rows, device="meta")


class _FusedAttention(torch.autograd.Function):
    """Shapes of a fused attention kernel: saves q, k, v, out and the row log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1]))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(q, k, v, *args, **kwargs):
    return _FusedAttention.apply(q, k, v)


def saved_activation_bytes(
    model: ObjectiveModule, x: torch.Tensor, labels: torch.Tensor | None, checkpointing: bool = False
) -> int:
    """Bytes of the tensors one training forward of `model` (on meta) saves for backward. With
    activation checkpointing, what each block keeps is its inputs (what it saves is recomputed)."""
    total = 0

    def count(t):
        nonlocal total
        total += t.numel() * t.element_size() if torch.is_tensor(t) else 0
        return t

    hooks = []
    if checkpointing:
        nets = trainable_networks(model)
        hooks = [
            b.register_forward_pre_hook(lambda m, args: [count(a) for a in args] and None)
            for n in nets
            for b in blocks(n)
        ]
        wrap_blocks(nets, compile=False, recompute=True)
    try:
        with mock.patch.object(F, "scaled_dot_product_attention", _fused_sdpa):
            with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
                model(x, labels, model.draw_noise(MetaNoise(x.shape[0])))
    finally:
        for h in hooks:
            h.remove()
    return total


def _activations(
    model: ObjectiveModule, x_shape: tuple[int, ...], n: int, num_classes: int, checkpointing: bool
) -> int:
    labels = torch.zeros(n, dtype=torch.long, device="meta") if num_classes else None
    return saved_activation_bytes(model, torch.zeros(n, *x_shape, device="meta"), labels, checkpointing)


def training_memory(
    model_fn, x_shape: tuple[int, ...], cfg: RunConfig, gpus: int, budget_gib: float = 80.0
) -> dict[str, float]:
    """GiB per GPU for DDP and FSDP over `gpus` GPUs at the per-GPU micro-batch of cfg.train, with
    and without activation checkpointing, and the largest micro-batch within `budget_gib`.
    `model_fn()` builds the objective on the meta device (called once per measurement)."""
    t = cfg.train
    micro = t.micro_batch or max(1, t.batch // gpus)
    model = model_fn()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    units = sorted(sum(p.numel() for p in b.parameters()) for n in trainable_networks(model) for b in blocks(n)) or [0]
    gib = 2.0**30
    state = {
        "ddp": (20 * trainable + 4 * frozen) / gib,
        "fsdp": (20 * trainable / gpus + 4 * frozen + 2 * sum(units[-2:]) + 4 * units[-1]) / gib,
    }
    out = {
        "micro_batch": micro,
        "gpus": gpus,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "budget_gib": budget_gib,
    }
    for ac in (False, True):
        # Per example: the difference between micro-batches of 2m and m (weights that the backward
        # keeps are counted once above, as model state, not here).
        a1, a2 = (_activations(model_fn(), x_shape, m, cfg.data.num_classes, ac) for m in (micro, 2 * micro))
        act = (a2 - a1) / gib
        tag = "_ckpt" if ac else ""
        out[f"activations{tag}_gib"] = act
        for k, v in state.items():
            out[f"{k}{tag}_gib"] = v + act
            out[f"{k}{tag}_max_micro"] = max(0, int((budget_gib - v) / (act / micro)))
    return out
