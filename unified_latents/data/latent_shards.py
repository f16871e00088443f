"""Latent caches in shards, read lazily: what `ul encode` writes into a folder (one shard per process
under torchrun) and what stage 2 trains from without loading the cache into memory.

A cache folder holds `shard-<k>-of-<n>.safetensors` (rows [offset, offset + count) of the data, in
data order, with labels) and `index.json`, written last by rank 0 (so a folder without it is an
interrupted write). Every shard and the index carry the encoder's fingerprint and the data's: a
cache of another encoder or of other data is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import DataError
from ..files import atomic_write_text, write_safetensors
from .fingerprint import comparable
from .latents import LATENTS_FORMAT, LatentData, load_latents, streaming_std

INDEX = "index.json"
IN_MEMORY = 1 << 30  # caches up to this many bytes are read whole (training then indexes memory)


def load_cache(path: Path, encoder_fp: str, data_fp: str | None = None):
    """A latent cache: a folder of shards (read lazily) or one .safetensors file (loaded)."""
    return ShardedLatents(path, encoder_fp, data_fp) if Path(path).is_dir() else load_latents(path, encoder_fp, data_fp)


def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.safetensors"


def write_shard(dest: Path, k: int, n: int, lat: LatentData, offset: int, meta: dict) -> None:
    tensors = {"latents": lat.latents.contiguous()}
    if lat.labels is not None:
        tensors["labels"] = lat.labels.contiguous()
    info = {"format": LATENTS_FORMAT, "offset": str(offset), **{k2: str(v) for k2, v in meta.items()}}
    write_safetensors(Path(dest) / shard_name(k, n), tensors, info)


def write_index(dest: Path, n: int, total: int, meta: dict) -> None:
    atomic_write_text(Path(dest) / INDEX, json.dumps({"format": LATENTS_FORMAT, "shards": n, "total": total, **meta}))


class ShardedLatents:
    """A cache folder: `get(idx)` reads only the rows asked for (memory-mapped), or indexes the
    whole cache held in memory when it is at most IN_MEMORY bytes."""

    def __init__(self, folder: Path, encoder_fp: str, data_fp: str | None):
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX).read_text())
        except (OSError, json.JSONDecodeError):
            raise DataError(
                f"{self.folder} holds no complete latent cache ({INDEX} is missing or damaged); run `ul encode` again"
            ) from None
        _check(self.folder, index, encoder_fp, data_fp)
        self.paths = [self.folder / shard_name(k, index["shards"]) for k in range(index["shards"])]
        self.starts: list[int] = []
        labels: list[torch.Tensor | None] = []
        for p in self.paths:
            with _open(p) as f:
                meta = f.metadata() or {}
                self.starts.append(int(meta["offset"]))
                labels.append(f.get_tensor("labels") if "labels" in f.keys() else None)
        self.total = int(index["total"])
        self.labels = None if any(lb is None for lb in labels) else torch.cat([lb for lb in labels if lb is not None])
        self.bounds = torch.tensor(self.starts[1:] + [self.total])
        # every latent, read at the first get() when the cache is at most IN_MEMORY bytes
        self.whole: torch.Tensor | None = None
        self.small = self._bytes() <= IN_MEMORY

    def _bytes(self) -> int:
        with _open(self.paths[0]) as f:
            sl = f.get_slice("latents")
            shape, size = sl.get_shape(), torch.finfo(torch.float32).bits // 8
        return self.total * math.prod(shape[1:]) * size

    def _read(self, k: int) -> torch.Tensor:
        with _open(self.paths[k]) as f:
            return f.get_tensor("latents")

    def __len__(self) -> int:
        return self.total

    def preload(self) -> ShardedLatents:
        """Read a small cache whole now (in the training process, so that DataLoader workers share
        it by fork instead of each reading its own copy)."""
        if self.small and self.whole is None:
            self.whole = torch.cat([self._read(k) for k in range(len(self.paths))])
        return self

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.preload()
        if self.whole is not None:
            return self.whole[idx], (self.labels[idx] if self.labels is not None else None)
        shard = torch.bucketize(idx, self.bounds, right=True)  # the shard holding each row
        rows: dict[int, torch.Tensor] = {}  # position in idx -> its latent [1, *z_shape]
        for k in shard.unique().tolist():
            where = (shard == k).nonzero().flatten().tolist()
            with _open(self.paths[k]) as f:
                sl = f.get_slice("latents")
                for w in where:
                    i = int(idx[w]) - self.starts[k]
                    rows[w] = sl[i : i + 1]
        return torch.cat([rows[w] for w in range(len(idx))]), (self.labels[idx] if self.labels is not None else None)

    def std(self) -> float:
        """Standard deviation of every latent value, read 4,096 rows at a time."""
        return streaming_std(
            self.get(torch.arange(i, min(i + 4096, self.total)))[0] for i in range(0, self.total, 4096)
        )


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # truncated or missing
        raise DataError(f"latent shard {path} cannot be read ({e}); run `ul encode` again") from None


def _check(folder: Path, index: dict, encoder_fp: str, data_fp: str | None) -> None:
    if index.get("format") != LATENTS_FORMAT:
        raise DataError(f"{folder} is not a unified-latents latent cache; make one with `ul encode`")
    if index.get("encoder_fingerprint") != encoder_fp:
        raise DataError(
            f"{folder} was made by a different encoder than the stage-1 artifact's; re-encode with "
            "`ul encode --artifact <this artifact>` or pass the matching artifact"
        )
    stored = comparable(index.get("data_fingerprint"))  # caches of earlier versions carry none comparable
    if data_fp is not None and stored is not None and stored != data_fp:
        raise DataError(
            f"{folder} holds latents of other data than this run's ({index.get('source', '?')}); "
            "re-encode this data with `ul encode`, or train on the data it was made from"
        )
