"""`ul distill`: progressive distillation (Salimans & Ho 2022) of the decoder or the base model.

Each round halves the sampling steps: a student, initialised from the teacher, learns to take
in one DDIM step what the teacher takes in two, on the same log-SNR grid (`sample_lams`: uniform
in t, so the student's K/2-step grid is every other point of the teacher's K-step grid). For a
noisy input z_t of a training example at a student grid point, the teacher's two DDIM steps end
at z_s; the student's target is the clean prediction x~ whose one DDIM step from z_t also lands
on z_s: x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t), trained
with the truncated-SNR weight max(1, alpha_t^2 / sigma_t^2) on ||x_hat - x~||^2 (the paper's
v-loss-like weighting, for this x-predicting interface). The student of one round is the teacher
of the next. The result is an artifact of the same kind that samples with DDIM in N steps.

The base model is distilled at guidance 1 on its own labels, with the null label as often as its
training dropped labels, so classifier-free guidance still has both branches to combine.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .accel import autocast
from .artifacts import load_artifact, save_artifact
from .config import to_dict
from .data import load_images, to_float
from .diffusion import alpha_sigma, sample_lams
from .diffusion.samplers import ddim_step
from .errors import ConfigError
from .objectives.base import denoise
from .objectives.registry import load_model
from .runlock import holding

PARTS = ("decoder", "base")


@dataclass
class DistillRequest:
    part: str  # "decoder" or "base"
    steps: int  # DDIM steps of the result: the teacher's halved one or more times
    samples_per_round: int = 16_000  # training examples per halving
    batch: int = 64
    lr: float = 1e-4
    from_steps: int | None = None  # the teacher's steps (None: the artifact's sampling config)
    data: str | None = None  # training data (None: the data the distilled network was trained on)


def _halvings(steps_from: int, steps_to: int) -> int:
    """How many rounds take `steps_from` to `steps_to` by halving (both powers-of-two apart)."""
    rounds = math.log2(steps_from / steps_to) if steps_to > 0 else -1
    if steps_to < 1 or rounds < 1 or rounds != int(rounds):
        halves = [steps_from // 2**k for k in (1, 2) if steps_from % 2**k == 0]
        hint = f" (e.g. {' or '.join(map(str, halves))})" if halves else ""
        raise ConfigError(
            f"--steps {steps_to}: must be the teacher's {steps_from} steps halved one or more times"
            f"{hint}; --from-steps sets the teacher's steps"
        )
    return int(rounds)


def student_target(z_t: torch.Tensor, z_s: torch.Tensor, lam_t: torch.Tensor, lam_s: torch.Tensor) -> torch.Tensor:
    """The clean prediction x~ whose one DDIM step from z_t (log-SNR lam_t) lands on z_s (lam_s):
    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)."""
    a_t, s_t = alpha_sigma(lam_t)
    a_s, s_s = alpha_sigma(lam_s)
    r = s_s / s_t
    return (z_s - r * z_t) / (a_s - r * a_t)


class _Part:
    """What distillation needs of one network: its module, the schedule it samples on, and a
    function giving (clean target data, conditioning kwargs) for a batch of training rows."""

    def __init__(self, model, part: str, data, device):
        self.model, self.part, self.data, self.device = model, part, data, device
        if part == "decoder":
            self.s1 = model if model.cfg.stage == "latents" else model.stage1
            if not hasattr(self.s1, "sched_x"):
                raise ConfigError("--part decoder: a pixel-diffusion model has no decoder; distil its --part base")
            if self.s1.cfg.diffusion.decoder_kind != "diffusion":
                raise ConfigError(
                    "--part decoder: this decoder is a regression (diffusion.decoder_kind=mse) that "
                    "decodes in one call already; there are no steps to distil"
                )
            self.net, self.sched = self.s1.decoder, self.s1.sched_x
        else:
            if model.cfg.stage not in ("base", "pixel"):
                raise ConfigError("--part base needs a base (stage-2) artifact")
            if model.context:
                raise ConfigError("--part base: base models with context frames (video) are not distilled yet")
            self.net, self.sched = model.net, model.sched

    def batch(self, rows: torch.Tensor, g: torch.Generator):
        x = to_float(self.data.images[rows]).to(self.device)
        if self.part == "decoder":
            with torch.no_grad():
                z_clean, _ = self.s1.encode_sample(x, rows.tolist())
                z0 = self.s1.noisy_latent(z_clean, torch.randn(z_clean.shape, generator=g).to(self.device))
            return x, {"cond": z0}
        with torch.no_grad():
            z, _ = self.model.stage1.encode_sample(x, rows.tolist())
            z = z * self.model.latent_scale
        labels = None
        if self.model.num_classes:
            labels = (
                self.data.labels[rows].to(self.device)
                if self.data.labels is not None
                else torch.full((len(rows),), self.model.num_classes, device=self.device)
            )
            drop = torch.rand(len(rows), generator=g).to(self.device) < self.model.cfg.base.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.model.num_classes), labels)
        return z, {"labels": labels}

    def predict(self, net, z_t, lam, kw):
        """Teacher or student x_hat, in the precision the network was trained in (accel.amp)."""
        with autocast((self.s1 if self.part == "decoder" else self.model).cfg, self.device):
            if self.part == "decoder":
                return denoise(net, z_t, lam, cond=kw["cond"])
            return denoise(net, z_t, lam, None, kw["labels"])


def distill_round(
    part: _Part, teacher, student, steps: int, req: DistillRequest, seed: int, progress: bool
) -> list[float]:
    """One round: `student` learns `steps // 2`-step DDIM from `teacher`'s `steps`-step DDIM.
    Returns the loss per optimiser step."""
    lams_t = sample_lams(part.sched, steps, part.device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(list(student.parameters()), lr=req.lr)
    student.train()
    losses = []
    n = len(part.data.images)
    for _ in tqdm(
        range(max(1, req.samples_per_round // req.batch)),
        desc=f"distilling {steps} -> {steps // 2} steps",
        disable=not progress,
        leave=False,
    ):
        rows = torch.randint(0, n, (req.batch,), generator=g)
        x, kw = part.batch(rows, g)
        i = torch.randint(0, steps // 2, (req.batch,), generator=g).to(part.device)
        lam_t, lam_m, lam_s = lams_t[2 * i], lams_t[2 * i + 1], lams_t[2 * i + 2]
        shape = (-1, *([1] * (x.ndim - 1)))
        lt, lm, ls = (v.reshape(shape) for v in (lam_t, lam_m, lam_s))
        a_t, s_t = alpha_sigma(lt)
        z_t = a_t * x + s_t * torch.randn(x.shape, generator=g).to(part.device)
        with torch.no_grad():
            z_m = ddim_step(z_t, part.predict(teacher, z_t, lam_t, kw), lt, lm, None)
            z_s = ddim_step(z_m, part.predict(teacher, z_m, lam_m, kw), lm, ls, None)
            target = student_target(z_t, z_s, lt, ls)
        w = torch.clamp(a_t**2 / s_t**2, min=1.0)
        loss = (w * (part.predict(student, z_t, lam_t, kw) - target) ** 2).flatten(1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses


@holding("out", "ul distill", beside=True)
def distill(artifact: Path, out: Path, req: DistillRequest, device="cpu", progress: bool = True) -> dict:
    """Distil `req.part` of `artifact` from its configured steps (or `req.from_steps`) down to
    `req.steps`, write the student artifact to `out`; returns a summary (rounds, losses, seconds)."""
    if req.part not in PARTS:
        raise ConfigError(f"--part must be one of {', '.join(PARTS)}, got {req.part!r}")
    model, cfg = load_model(artifact, device)
    sc = cfg.sample
    start = req.from_steps or (sc.decoder_steps if req.part == "decoder" else sc.base_steps)
    rounds = _halvings(start, req.steps)
    p = _Part(model, req.part, _training_data(model, cfg, req), torch.device(device))
    p.net.requires_grad_(True)  # a decoder inside a base model is frozen there
    summary: dict = {"part": req.part, "from_steps": start, "steps": req.steps, "rounds": []}
    t0, k = time.time(), start
    was = float(torch.tensor([1e-39]) * 1.0) == 0.0  # whether denormals are flushed already
    torch.set_flush_denormal(True)  # CPU: the targets' tiny differences run ~10x slower as denormal floats
    try:
        for r in range(rounds):
            teacher = copy.deepcopy(p.net).eval().requires_grad_(False)
            losses = distill_round(p, teacher, p.net, k, req, seed=1000 + r, progress=progress)
            summary["rounds"].append(
                {"teacher_steps": k, "student_steps": k // 2, "first_loss": losses[0], "last_loss": losses[-1]}
            )
            k //= 2
    finally:
        torch.set_flush_denormal(was)
    with torch.no_grad():  # weights below float's smallest normal would slow every later CPU call ~10x
        for w in p.net.parameters():
            w.masked_fill_(w.abs() < torch.finfo(w.dtype).tiny, 0.0)
    if req.part == "decoder" and cfg.stage != "latents":
        p.net.requires_grad_(False)  # frozen again inside the base model
    summary["seconds"] = time.time() - t0
    _save(model, cfg, artifact, out, req, summary)
    return summary


def _training_data(model, cfg, req: DistillRequest):
    """The data the distilled network was trained on: stage 1's for the decoder, the base run's for the base model."""
    dcfg = (model.stage1.cfg if (req.part == "decoder" and cfg.stage != "latents") else cfg).data
    return load_images(dcfg, req.data or dcfg.source, "train")


def _save(model, cfg, artifact: Path, out: Path, req: DistillRequest, summary: dict) -> None:
    """The student as an artifact of the artifact's kind: its sampling config (and, for a decoder
    inside a base model, stage 1's too) says DDIM at `req.steps`. The one `sample.sampler` field
    covers both networks of a base artifact, so the other one samples with DDIM too."""
    _, _, meta = load_artifact(artifact)
    new = copy.deepcopy(cfg)
    configs = [new.sample] + ([model.stage1.cfg.sample] if req.part == "decoder" and cfg.stage != "latents" else [])
    for sc in configs:
        sc.sampler = "ddim"
        if req.part == "decoder":
            sc.decoder_steps = req.steps
        else:
            sc.base_steps = req.steps
    extra = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "kind", "config")}
    if cfg.stage != "latents":
        extra.update(model.artifact_metadata())
    extra["distilled"] = summary
    save_artifact(out, model.state_dict(), to_dict(new), meta["kind"], extra)
