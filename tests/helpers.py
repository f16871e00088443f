"""Shared test helpers: small synthetic datasets and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_npz(path: Path, n: int = 64, size: int = 16, seed: int = 0) -> Path:
    """Blobs of random position/size on black: structured enough to learn quickly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs = np.zeros((n, size, size), np.uint8)
    labels = rng.integers(0, 10, n)
    for i in range(n):
        cy, cx, r = rng.uniform(3, size - 3, 2).tolist() + [rng.uniform(2, size / 3)]
        imgs[i] = (255 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)).astype(np.uint8)
    np.savez(path, images=imgs, labels=labels)
    return path


def ul_env(**extra: str) -> dict:
    """The environment of a CLI subprocess: this checkout importable, one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def ul_command(args: list[str] | tuple[str, ...], nproc: int = 0) -> list[str]:
    """`python -m unified_latents ARGS`, or under torchrun with `nproc` processes on this host."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return [sys.executable, *launch, "-m", "unified_latents", *args]


def run_ul(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: int = 300,
    nproc: int = 0,
):
    """Run the CLI in a fresh process (under torchrun with `nproc` processes); returns CompletedProcess (text)."""
    return subprocess.run(
        ul_command(args, nproc), cwd=cwd, env=ul_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )


def load_script(relpath: str):
    """A script of this checkout (benchmarks/, scripts/) imported as a module; its folder goes on
    sys.path first, since the benchmarks import each other."""
    import importlib.util

    path = ROOT / relpath
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_state(path: Path) -> dict:
    """A training state folder (state-<samples>/) as full tensors: model, ema, optim, samples, ..."""
    from unified_latents.training.state import read_state

    return read_state(path)


def assert_tree_equal(a, b, exact: bool = True, rtol: float = 0.0, atol: float = 0.0, where: str = ""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_tree_equal(a[k], b[k], exact, rtol, atol, f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, exact, rtol, atol, f"{where}[{i}]")
    elif torch.is_tensor(a):
        if exact:
            assert torch.equal(a, b), f"{where} differs"
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
