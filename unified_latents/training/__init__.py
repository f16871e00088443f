"""One generic training loop, EMA, checkpoints and artifacts."""

from .checkpoint import atomic_write, atomic_write_text, load_artifact, save_artifact
from .ema import EMA
from .loop import TrainResult, lr_at, train

__all__ = [
    "EMA",
    "TrainResult",
    "atomic_write",
    "atomic_write_text",
    "load_artifact",
    "lr_at",
    "save_artifact",
    "train",
]
