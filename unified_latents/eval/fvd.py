"""Frechet Video Distance: the Frechet distance between I3D features of real and generated clips.

No I3D weights can be bundled or downloaded here, so FVD runs only with a TorchScript I3D
file the user gives (`--i3d PATH` or the UL_I3D environment variable). The usual one is
`i3d_torchscript.pt` (the Kinetics-400 I3D exported to TorchScript, used by StyleGAN-V and
many video papers). It is called on clips [N, 3, T, 224, 224] scaled to [-1, 1] as
`net(x, rescale=False, resize=False, return_features=True)`: the 400-way logits' 2048-d
input features. A network that takes only `net(x)` is called that way. Any other feature
network with that input convention works too (the tests use a small stand-in).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from .fid import TRUST_HINT

I3D_HINT = (
    "FVD needs I3D weights, which cannot be downloaded here: get `i3d_torchscript.pt` (the TorchScript "
    "Kinetics-400 I3D used by StyleGAN-V, https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt) on a "
    "machine with internet access, then pass --i3d PATH (or set UL_I3D=PATH). Without it, use the frame FID, "
    "PSNR/SSIM and bitrate, which always work"
)


def find_i3d(path: str | Path | None = None, trust: bool = False) -> Path:
    """The I3D file (`path`, else $UL_I3D). No I3D file is pinned, so loading one needs `trust`."""
    path = path or os.environ.get("UL_I3D")
    if not path:
        raise UserError(f"no I3D network given. {I3D_HINT}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"I3D weights {p} not found. {I3D_HINT}")
    if not trust:
        raise UserError(f"{p}: {TRUST_HINT} (no I3D file is pinned, so every one needs it)")
    return p


class I3DFeatures:
    """uint8 clips [N, C, T, H, W] -> float64 features [N, D] of a TorchScript video network."""

    size = 224

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu", trust: bool = False):
        p = find_i3d(path, trust)
        try:
            self.net = torch.jit.load(str(p), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{p} is not a TorchScript network ({str(e)[:120]}). {I3D_HINT}") from None
        self.device = torch.device(device)
        self._kwargs: bool | None = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._kwargs is not False:
            try:
                out = self.net(x, rescale=False, resize=False, return_features=True)
                self._kwargs = True
                return out
            except (RuntimeError, TypeError):
                if self._kwargs:
                    raise
                self._kwargs = False
        return self.net(x)

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor, batch: int = 8, progress: bool = False, desc: str = "I3D") -> np.ndarray:
        out = []
        for i in tqdm(range(0, clips.shape[0], batch), desc=desc, unit="batch", disable=not progress, leave=False):
            x = clips[i : i + batch].to(self.device)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1, -1)
            n, c, t, h, w = x.shape
            x = x.float().transpose(1, 2).reshape(n * t, c, h, w)
            if (h, w) != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            x = (x / 127.5 - 1.0).reshape(n, t, c, self.size, self.size).transpose(1, 2)
            out.append(self._run(x.contiguous()).reshape(n, -1).double().cpu())
        return torch.cat(out).numpy()
