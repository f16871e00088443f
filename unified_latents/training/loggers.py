"""Training logs beside stats.jsonl (which stays the source of truth): `train.log=tensorboard`
writes TensorBoard event files into `<outdir>/tensorboard/`, `train.log=wandb` logs to Weights &
Biases (offline unless wandb is logged in). Every logged step gives each loss term, bits per
image, the loss factor, learning rate, gradient norm and throughput (examples per second); each
preview gives its images. Rank 0 logs; the other processes get a logger that does nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, UserError

KINDS = ("", "tensorboard", "wandb")


class NoLog:
    def scalars(self, rec: dict) -> None:
        pass

    def images(self, name: str, imgs: torch.Tensor, samples: int) -> None:
        pass

    def close(self) -> None:
        pass


def _numbers(rec: dict) -> dict[str, float]:
    return {k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("samples", "step")}


def tile(imgs: torch.Tensor) -> np.ndarray:
    """float [-1, 1] previews [N, C, H, W] (clips [N, C, T, H, W]: frames side by side) -> one
    uint8 HWC picture, one example per row."""
    x = ((imgs.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.ndim == 5:
        x = torch.cat(x.unbind(2), dim=-1)  # [N, C, H, T * W]
    x = torch.cat(x.unbind(0), dim=1)  # [C, N * H, W]
    a = x.permute(1, 2, 0).numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


class TensorBoardLog(NoLog):
    def __init__(self, outdir: Path, start: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.log=tensorboard needs TensorBoard: pip install tensorboard") from None
        # purge_step: events a resumed run wrote after its checkpoint (steps > start) are dropped,
        # as stats.jsonl lines are
        self.w = SummaryWriter(log_dir=str(Path(outdir) / "tensorboard"), purge_step=start + 1 if start else None)
        self.last = start

    def scalars(self, rec: dict) -> None:
        samples = int(rec["samples"])
        for k, v in _numbers(rec).items():
            self.w.add_scalar(f"train/{k}", v, samples)
        if rec.get("sec"):
            self.w.add_scalar("train/examples_per_sec", (samples - self.last) / rec["sec"], samples)
        self.last = samples
        self.w.flush()

    def images(self, name: str, imgs: torch.Tensor, samples: int) -> None:
        self.w.add_image(f"preview/{name}", tile(imgs), samples, dataformats="HWC")
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class WandbLog(NoLog):
    def __init__(self, outdir: Path, start: int, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("train.log=wandb needs Weights & Biases: pip install wandb") from None
        self.wandb, self.last = wandb, start
        run_id = hashlib.sha256(str(Path(outdir).resolve()).encode()).hexdigest()[
            :16
        ]  # one run per folder: resumes continue it
        self.run = wandb.init(
            project="unified-latents", name=Path(outdir).name, id=run_id, resume="allow", dir=str(outdir), config=config
        )
        # x axis: samples seen, a logged value (wandb's own step only grows, so a resumed run's
        # records after its checkpoint could not be logged again against it)
        self.run.define_metric("samples")
        self.run.define_metric("*", step_metric="samples")

    def scalars(self, rec: dict) -> None:
        samples = int(rec["samples"])
        extra = {"examples_per_sec": (samples - self.last) / rec["sec"]} if rec.get("sec") else {}
        self.run.log({**_numbers(rec), **extra, "samples": samples})
        self.last = samples

    def images(self, name: str, imgs: torch.Tensor, samples: int) -> None:
        self.run.log({f"preview/{name}": self.wandb.Image(tile(imgs)), "samples": samples})

    def close(self) -> None:
        self.run.finish()


def check_kind(kind: str) -> None:
    """A known kind whose package is installed (checked before a run writes anything)."""
    if kind not in KINDS:
        raise ConfigError(f"train.log={kind!r}: choose tensorboard, wandb, or leave it empty (stats.jsonl only)")
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and package not in sys.modules and importlib.util.find_spec(package) is None:
        raise UserError(f"train.log={kind} needs {package}: pip install {package}")


def make_log(kind: str, outdir: Path, start: int, config: dict, main: bool) -> NoLog:
    """The logger of `train.log` (rank 0 only; `start`: samples already seen, on resume)."""
    check_kind(kind)
    if not main or not kind:
        return NoLog()
    return TensorBoardLog(outdir, start) if kind == "tensorboard" else WandbLog(outdir, start, config)
