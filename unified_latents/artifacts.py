"""Inference artifacts: safetensors of EMA weights with the resolved config in their metadata,
written atomically with a canonical header, and read back (an artifact file, or a folder written
by `ul export`) with a clear error for files that are not ours or are damaged. Below the training
and objectives layers: loading a model needs these, not the training loop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import ArtifactError
from .files import canonical_header as canonical_header  # re-exported: older imports
from .files import read_safetensors, write_safetensors

ARTIFACT_FORMAT = "unified-latents/1"


def save_artifact(path: Path, tensors: dict[str, torch.Tensor], config: dict, kind: str, extra: dict | None = None):
    meta = {"format": ARTIFACT_FORMAT, "kind": kind, "config": json.dumps(config)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    write_safetensors(path, tensors, meta)


# ----------------------------------------------------------------------------- where an artifact comes from

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def fetch(name: str) -> Path:
    """A local path as it is, or a Hub repo id ("user/name") downloaded with huggingface_hub."""
    p = Path(name).expanduser()
    local = p.exists() or p.suffix == ".safetensors" or Path(p.parts[0]).is_dir()  # a path, perhaps mistyped
    if local or not REPO_ID.fullmatch(str(name)):
        return p
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ArtifactError(
            f"{name} is not a local path; loading from the Hub needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        return Path(snapshot_download(repo_id=str(name)))
    except Exception as e:  # noqa: BLE001 (offline, no such repo, no access: one message)
        raise ArtifactError(
            f"{name} is not a local file or folder, and downloading it as a Hugging Face Hub repo failed "
            f"({(str(e).splitlines() or [type(e).__name__])[0][:160]}); check the path, or the repo name, "
            "your network and `huggingface-cli login`"
        ) from None


# ----------------------------------------------------------------------------- exported folders

EXPORT_FORMAT = "unified-latents/export-1"
EXPORT_INDEX = "unified_latents.json"  # in an exported folder: the format, components and metadata


def component_prefixes(stage: str) -> dict[str, str]:
    """Component folder -> the key prefix of its tensors in an artifact (a base artifact holds its
    frozen stage 1 under "stage1."; the pixel baseline has no stage 1)."""
    s1 = "stage1." if stage == "base" else ""
    comps = {} if stage == "pixel" else {"encoder": s1 + "encoder.", "prior": s1 + "prior.", "decoder": s1 + "decoder."}
    return {**comps, "base": "net."} if stage in ("base", "pixel") else comps


def read_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """An exported folder (`ul export`) as load_artifact returns an artifact: the components'
    tensors under their artifact names, the config, and the artifact's metadata."""
    try:
        index = json.loads((path / EXPORT_INDEX).read_text())
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"{path} is not a complete unified-latents export ({e}); export it again with `ul export`"
        ) from None
    if index.get("format") != EXPORT_FORMAT:
        raise ArtifactError(f"{path}: {EXPORT_INDEX} is not of the format {EXPORT_FORMAT}; export it with `ul export`")
    try:
        comps = dict(index["components"])
        stage = config["stage"]
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(
            f"{path}: {EXPORT_INDEX} or config.json is damaged; export it again with `ul export`"
        ) from None
    allowed = component_prefixes(stage) if stage in ("latents", "base", "pixel") else {}
    if any(allowed.get(name) != prefix for name, prefix in comps.items()):  # names become paths: only ours
        raise ArtifactError(
            f"{path}: {EXPORT_INDEX} lists components {sorted(comps)} that a '{stage}' export "
            "does not have; export it again with `ul export`"
        )
    tensors = {}
    for name, prefix in comps.items():
        part, _ = read_safetensors(path / name / "model.safetensors", ArtifactError, "download or export it again")
        tensors.update({prefix + k: v for k, v in part.items()})
    if (path / "extras.safetensors").exists():
        tensors.update(read_safetensors(path / "extras.safetensors", ArtifactError, "download or export it again")[0])
    return tensors, config, {**index["metadata"], "format": ARTIFACT_FORMAT, "config": json.dumps(config)}


def load_artifact(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """-> (tensors, config dict, metadata) of an artifact file, an exported folder, or a Hub repo
    id holding one (downloaded). Refuses files that are not ours or are damaged."""
    path = fetch(str(path))
    if path.is_dir() and (path / EXPORT_INDEX).exists():
        return read_folder(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist; pass the .safetensors file written by `ul train`")
    tensors, meta = read_safetensors(path, ArtifactError, "re-copy it or re-export it")
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{path} is not a unified-latents artifact (no '{ARTIFACT_FORMAT}' metadata); use a file written "
            "by `ul train`"
        )
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError):
        raise ArtifactError(f"{path}: its config metadata is missing or damaged; re-export the artifact") from None
    return tensors, config, meta
