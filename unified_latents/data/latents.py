"""Latent datasets for stage 2: z_clean of the frozen encoder, with labels, cached on disk
as safetensors tagged with the encoder's fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import DataError
from ..files import read_safetensors, write_safetensors
from .fingerprint import comparable
from .images import Rows
from .transforms import to_float

LATENTS_FORMAT = "unified-latents/latents-1"


@dataclass
class LatentData:
    latents: torch.Tensor  # float32 [N, *z_shape]
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.latents[idx], (self.labels[idx] if self.labels is not None else None)

    def std(self) -> float:
        return streaming_std(self.latents[i : i + 4096] for i in range(0, len(self), 4096))


def streaming_std(chunks) -> float:
    """Sample standard deviation of every value of the chunks, accumulated in float64."""
    n, s, s2 = 0, 0.0, 0.0
    for z in chunks:
        z = z.double()
        n, s, s2 = n + z.numel(), s + float(z.sum()), s2 + float((z * z).sum())
    return ((s2 - s * s / n) / (n - 1)) ** 0.5


@torch.no_grad()
def encode_images(
    stage1, images: Rows, batch: int = 500, device="cpu", progress: bool = False, first: int = 0
) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> z_clean [N, *z_shape] with the (frozen, EMA) encoder: the latents
    its decoder was trained on (`encode_sample`: with a learned variance, one sample per example,
    seeded by its index `first + i`)."""
    out = []
    for i in tqdm(range(0, images.shape[0], batch), desc="encoding", unit="batch", disable=not progress, leave=False):
        x = to_float(images[i : i + batch]).to(device)
        out.append(stage1.encode_sample(x, list(range(first + i, first + i + x.shape[0])))[0].cpu())
    return torch.cat(out)


def save_latents(path: Path, data: LatentData, fingerprint: str, source: str, data_fp: str | None = None) -> None:
    """One cache file (one process). `data_fp`: the data's fingerprint (data/fingerprint.py)."""
    tensors = {"latents": data.latents.contiguous()}
    if data.labels is not None:
        tensors["labels"] = data.labels.contiguous()
    meta = {"format": LATENTS_FORMAT, "encoder_fingerprint": fingerprint, "source": json.dumps(source)}
    if data_fp is not None:
        meta["data_fingerprint"] = data_fp
    write_safetensors(Path(path), tensors, meta)


def load_latents(path: Path, fingerprint: str, data_fp: str | None = None) -> LatentData:
    """A one-file latent cache, loaded. Refuses one made by another encoder, or (when both
    fingerprints are known) of other data. Folders of shards: latent_shards.load_cache."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latent cache {path} does not exist; make one with `ul encode --artifact A --dest {path}`")
    t, meta = read_safetensors(path, DataError, "re-create it with `ul encode`")
    if meta.get("format") != LATENTS_FORMAT or "latents" not in t:
        raise DataError(f"{path} is not a unified-latents latent cache; make one with `ul encode`")
    if meta.get("encoder_fingerprint") != fingerprint:
        raise DataError(
            f"{path} was made by a different encoder than the stage-1 artifact's; "
            "re-encode with `ul encode --artifact <this artifact>` or pass the matching artifact"
        )
    stored = comparable(meta.get("data_fingerprint"))  # caches of earlier versions carry none comparable
    if data_fp is not None and stored is not None and stored != data_fp:
        raise DataError(
            f"{path} holds latents of other data than this run's ({meta.get('source', '?')}); "
            "re-encode this data with `ul encode`, or train on the data it was made from"
        )
    return LatentData(t["latents"], t.get("labels"))
