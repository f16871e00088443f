"""The reader of earlier versions' training states. The artifact format (writing, reading,
exported folders) is unified_latents/artifacts.py, re-exported here under its former module name."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..artifacts import (  # noqa: F401 (re-exported)
    ARTIFACT_FORMAT,
    EXPORT_FORMAT,
    EXPORT_INDEX,
    canonical_header,
    component_prefixes,
    load_artifact,
    read_folder,
    save_artifact,
)
from ..errors import ResumeError
from ..files import atomic_write, atomic_write_text, read_safetensors  # noqa: F401 (re-exported)

LEGACY_STATE_RE = re.compile(r"training-state-(\d{12})\.pt$")  # states of earlier versions (training/state.py now)


# ----------------------------------------------------------------------------- earlier training states


def load_legacy_state(path: Path) -> dict:
    """A `training-state-*.pt` of an earlier version (torch.load with weights_only: no code runs)."""
    if _torch_version() < (2, 10):
        raise ResumeError(
            f"{path} is a pickle-based state of an earlier version; reading it safely needs torch >= 2.10 "
            f"(weights_only loading is not safe before), this is {torch.__version__}: upgrade torch"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or holds objects that need code to load
        raise ResumeError(f"cannot read training state {path}: {e}; delete it to resume from an earlier one") from None


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)
