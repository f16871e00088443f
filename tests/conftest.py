import os
import tempfile

import pytest
import torch

# `datasets` caches what load_dataset reads (hf: sources in the tests) here, not in ~/.cache
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ul-test-hf-"))

# Under pytest-xdist (scripts/test.sh runs two workers) each worker computes on one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Feature caches of the tests (and the CLI processes they start) stay out of ~/.cache."""
    monkeypatch.setenv("UL_CACHE", str(tmp_path_factory.mktemp("ul-cache")))


@pytest.fixture
def tiny_cfg():
    from unified_latents.presets import get_preset

    return get_preset("tiny")


def has_fmnist() -> bool:
    return os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
