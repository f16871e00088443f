"""Parameter and FLOP counts via torch.utils.flop_counter, on the meta device (no memory).

Convention (the paper's): FLOPs count multiply-adds as 2 in linear layers, convolutions and
attention matmuls; a training step costs 3x the forward pass (forward + backward)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from ..objectives.stage1 import UnifiedLatents
    from ..objectives.stage2 import BaseModel


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def stage1_report(model: UnifiedLatents, device: str | torch.device = "meta") -> dict[str, dict[str, int]]:
    """Per-network parameters and forward FLOPs for ONE sample, plus the training cost."""
    x = torch.zeros(1, *model.x_shape, device=device)
    z = torch.zeros(1, *model.z_shape, device=device)
    lam = torch.zeros(1, device=device)
    with torch.no_grad():
        rows = {
            "encoder": (model.encoder, forward_flops(model.encoder, x)),
            "prior": (model.prior, forward_flops(model.prior, z, lam)),
            "decoder": (model.decoder, forward_flops(model.decoder, x, lam, cond=z)),
        }
    out = {k: {"params": count_params(m), "forward_flops": f} for k, (m, f) in rows.items()}
    fwd = sum(r["forward_flops"] for r in out.values())
    out["total"] = {"params": sum(r["params"] for r in out.values()), "forward_flops": fwd, "train_flops": 3 * fwd}
    return out


def generation_report(
    base: BaseModel, guidance: float, base_steps: int, decoder_steps: int, device="meta"
) -> dict[str, int]:
    """FLOPs per training sample of the base model and per generated sample (base steps, with
    a second, unconditional pass where guidance is on, plus decoder steps and its final call)."""
    z = torch.zeros(1, *base.z_shape, device=device)
    x = torch.zeros(1, *base.x_shape, device=device)
    lam = torch.zeros(1, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if base.num_classes else None
    with torch.no_grad():
        cond = base.context_cond(None, None, 1, device)  # None unless the model continues clips
        f_base = forward_flops(base.net, z, lam, cond=cond, labels=labels)
        decoder = base.stage1.decoder_net  # None in pixel diffusion
        f_dec = forward_flops(decoder, x, lam, cond=z) if decoder is not None else 0
    per_base_step = f_base * (2 if guidance != 1.0 else 1)
    return {
        "base_params": count_params(base.net),
        "base_forward_flops": f_base,
        "base_train_flops": 3 * f_base,
        "generate_flops": base_steps * per_base_step + ((decoder_steps + 1) * f_dec if f_dec else 0),
    }
