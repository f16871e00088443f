"""Post-hoc EMA: choose the EMA length after training (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", section 3).

During training, `train.posthoc_ema` lists relative EMA lengths sigma_rel (e.g. 0.05, 0.10); each
is tracked as a power-function EMA, whose weight on the parameters of step tau, seen at step t,
is proportional to tau^gamma (sigma_rel is the std of that profile over its mean, as a fraction
of t). Snapshots of every tracked EMA are written to `<outdir>/posthoc-ema/` every
`train.posthoc_every` samples (0: at each checkpoint) and at the end.

Afterwards, any sigma_rel is reconstructed at the last snapshot's step as the linear
combination of snapshots whose averaging profile is closest, in L2 over the training steps, to
the wanted profile (`solve`); `apply_ema_length` loads it into a trained model (`ul eval
--ema-length`, `ul reconstruct --ema-length`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from scipy.optimize import brentq

from ..errors import UserError
from ..files import write_safetensors
from .ema import EMA

FOLDER = "posthoc-ema"
SNAPSHOT_RE = re.compile(r"sigma-(\d+\.\d+)-(\d{12})\.safetensors$")
MAX_SIGMA_REL = 0.28  # gamma 0 (a uniform average of every step) is sigma_rel 0.289


def sigma_rel(gamma: float) -> float:
    """Relative length of the power-function profile tau^gamma on [0, t]."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma: float) -> float:
    """The exponent gamma whose profile has relative length `sigma` (0 < sigma <= 0.28)."""
    if not 0 < sigma <= MAX_SIGMA_REL:
        raise UserError(f"an EMA length (sigma_rel) must be in (0, {MAX_SIGMA_REL}], got {sigma}")
    return brentq(lambda g: sigma_rel(g) - sigma, 0.0, 1e9, xtol=1e-12, rtol=1e-12)


class PowerEMA(EMA):
    """A power-function EMA: after step t (1-based) the average weighs step tau by ~tau^gamma,
    i.e. beta_t = (1 - 1/t)^(gamma + 1); the first step copies the weights."""

    def __init__(self, model, sigma: float):
        super().__init__(model, decay=0.0)
        self.sigma, self.gamma = sigma, gamma_of(sigma)

    def decay_at(self, step: int) -> float:
        return (1.0 - 1.0 / (step + 1)) ** (self.gamma + 1)


def snapshot_name(sigma: float, samples: int) -> str:
    return f"sigma-{sigma:.4f}-{samples:012d}.safetensors"


def write_snapshot(folder: Path, ema: PowerEMA, weights: dict[str, torch.Tensor], step: int, samples: int) -> None:
    """One tracked EMA's trainable weights after `step` optimizer steps (skipped if already there:
    a resumed run writes the same snapshot again)."""
    path = Path(folder) / snapshot_name(ema.sigma, samples)
    if path.exists():
        return
    meta = {
        "sigma_rel": json.dumps(ema.sigma),
        "gamma": json.dumps(ema.gamma),
        "step": json.dumps(step),
        "samples": json.dumps(samples),
    }
    write_safetensors(path, weights, meta)


def _inner(t1: np.ndarray, g1: np.ndarray, t2: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """<p_1, p_2> = integral over tau of p_1(tau) p_2(tau), p(tau) = (g + 1) tau^g / t^(g + 1) on
    [0, t]: (g1 + 1)(g2 + 1) min(t1, t2)^(g1 + g2 + 1) / ((g1 + g2 + 1) t1^(g1 + 1) t2^(g2 + 1)),
    in logs (the exponents are large)."""
    tm = np.minimum(t1, t2)
    log = (
        np.log(g1 + 1)
        + np.log(g2 + 1)
        + (g1 + g2 + 1) * np.log(tm)
        - np.log(g1 + g2 + 1)
        - (g1 + 1) * np.log(t1)
        - (g2 + 1) * np.log(t2)
    )
    return np.exp(log)


def solve(steps: list[int], gammas: list[float], target_gamma: float, target_step: int) -> tuple[np.ndarray, float]:
    """Weights x of the snapshots (taken at `steps` with exponents `gammas`) whose combined
    profile sum_i x_i p_i is the least-squares fit to the profile of `target_gamma` at
    `target_step`, and the fit's relative error ||sum_i x_i p_i - p|| / ||p||."""
    t = np.asarray(steps, dtype=np.float64)
    g = np.asarray(gammas, dtype=np.float64)
    a = _inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = _inner(t, g, np.float64(target_step), np.float64(target_gamma))
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    c = float(_inner(*(np.float64(v) for v in (target_step, target_gamma, target_step, target_gamma))))
    return x, math.sqrt(max(float(x @ a @ x - 2 * x @ b + c), 0.0) / c)


def list_snapshots(folder: Path) -> list[dict]:
    """The snapshots in `folder` (sigma_rel, gamma, step, samples, path), from their headers."""
    found = []
    for path in sorted(Path(folder).glob("sigma-*.safetensors")):
        if not SNAPSHOT_RE.search(path.name):
            continue
        try:
            with safe_open(str(path), "pt") as f:
                meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            raise UserError(f"post-hoc EMA snapshot {path} cannot be read ({e}); delete it or retrain") from None
        found.append({**meta, "path": path})
    return found


def reconstruct(folder: Path, sigma: float, samples: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainable weights of an EMA of relative length `sigma` at the last snapshot's step (or
    at `samples`, which must be a snapshot's: later snapshots are left out), and a summary
    (snapshots used, the fit's relative error)."""
    snaps = list_snapshots(folder)
    if not snaps:
        raise UserError(
            f"no post-hoc EMA snapshots in {folder}: train with --set 'train.posthoc_ema=[0.05,0.1]' "
            "to choose the EMA length after training"
        )
    if samples is not None:
        snaps = [s for s in snaps if s["samples"] <= samples]
        if not snaps or max(s["samples"] for s in snaps) != samples:
            raise UserError(
                f"{folder} holds no post-hoc EMA snapshot at {samples:,} samples, where the artifact "
                "was written; rebuild from the run's own artifact.safetensors"
            )
    end = max(s["step"] for s in snaps)
    target = gamma_of(sigma)
    x, fit = solve([s["step"] for s in snaps], [s["gamma"] for s in snaps], target, end)
    out: dict[str, torch.Tensor] = {}
    for w, s in zip(x, snaps, strict=True):
        with safe_open(str(s["path"]), "pt") as f:
            for k in f.keys():
                v = f.get_tensor(k).double() * float(w)
                out[k] = out[k] + v if k in out else v
    info = {"sigma_rel": sigma, "step": end, "snapshots": len(snaps), "profile_error": fit}
    return out, info


def apply_ema_length(net: torch.nn.Module, artifact: Path, sigma: float, prefix: str = "") -> dict:
    """Load the post-hoc EMA of length `sigma` (snapshots beside `artifact`) into `net`'s
    parameters whose names, with `prefix`, the snapshots hold. Returns reconstruct's summary."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise UserError(
            f"--ema-length needs a run's artifact.safetensors (beside its {FOLDER}/ folder), not {artifact}"
        )
    with safe_open(str(artifact), "pt") as f:
        meta = f.metadata() or {}
    if "distilled" in meta:
        raise UserError(
            f"{artifact} is distilled: its networks are not the averages that its run's snapshots hold; "
            "apply --ema-length to the teacher, then distil that"
        )
    samples = json.loads(meta["samples"]) if "samples" in meta else None
    weights, info = reconstruct(artifact.parent / FOLDER, sigma, samples)
    params = dict(net.named_parameters())
    missing = [k for k in weights if k.removeprefix(prefix) not in params or not k.startswith(prefix)]
    if missing or not weights:
        raise UserError(
            f"the post-hoc EMA snapshots beside {artifact} do not fit this model (e.g. {missing[:1]}); "
            "they belong to another run"
        )
    with torch.no_grad():
        for k, v in weights.items():
            p = params[k.removeprefix(prefix)]
            p.copy_(v.to(p.dtype))
    return info
