"""A linear transform codec to hold learned latents against: PCA, uniform quantisation of the
coefficients, and the coefficients' empirical entropy as the bit count.

The PCA basis and mean are fitted on training images. Test images are projected, every
coefficient is quantised with the same step (the high-rate optimum for Gaussian coefficients:
reverse water-filling spends bits where variance exceeds the distortion), and the bits per
image are the sum over components of the entropy of the quantised symbols measured on the test
set itself (an optimistic count for the codec: no side information, no model mismatch).
`psnr_at_bits` reads the codec's PSNR at a given bit count off a sweep of quantiser steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .metrics import psnr


class PCACodec:
    def __init__(self, train: torch.Tensor, max_components: int = 512):
        """train: uint8 [N, C, H, W]. Fits the mean and at most `max_components` principal axes."""
        x = _flat(train)
        self.shape = tuple(train.shape[1:])
        self.mean = x.mean(0)
        k = min(max_components, x.shape[1], x.shape[0])
        xc = (x - self.mean).float()
        if x.shape[1] <= 4096:  # exact: eigenvectors of the covariance, largest variance first
            _, vecs = torch.linalg.eigh((xc.T @ xc).double() / x.shape[0])
            self.basis = vecs.flip(1)[:, :k].contiguous()  # [D, k]
        else:
            _, _, v = torch.pca_lowrank(xc, q=k, center=False, niter=4)
            self.basis = v.double()  # [D, k]

    def coefficients(self, images: torch.Tensor) -> torch.Tensor:
        return (_flat(images) - self.mean) @ self.basis  # [N, k]

    def code(self, images: torch.Tensor, step: float, coeffs: torch.Tensor | None = None):
        """(reconstructions uint8 like `images`, bits per image [N]) at quantiser step `step`
        (in [-1, 1] pixel units). The bit count is the same for every image: the entropy sum."""
        c = self.coefficients(images) if coeffs is None else coeffs
        q = torch.round(c / step)
        rec = self.mean.float() + (q * step).float() @ self.basis.T.float()
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(images.shape)
        bits = _entropy_bits(q.long())
        return rec, torch.full((images.shape[0],), bits, dtype=torch.float64)

    def curve(self, images: torch.Tensor, steps: list[float] | None = None) -> list[tuple[float, float]]:
        """(bits per image, mean PSNR in dB) for each quantiser step, fewest bits first."""
        steps = steps or [math.exp(v) for v in np.linspace(math.log(30.0), math.log(0.05), 40)]
        out, coeffs = [], self.coefficients(images)
        for s in steps:
            rec, bits = self.code(images, s, coeffs)
            out.append((float(bits[0]), float(psnr(images, rec).mean())))
        return sorted(out)

    def psnr_at_bits(self, images: torch.Tensor, bits: float) -> float:
        """The codec's mean PSNR at `bits` per image (linear interpolation along the curve)."""
        b, p = zip(*self.curve(images), strict=True)
        if not b[0] <= bits <= b[-1]:
            raise ValueError(f"{bits:.1f} bits per image is outside the codec's swept range {b[0]:.1f}-{b[-1]:.1f}")
        return float(np.interp(bits, b, p))


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).double() / 127.5 - 1.0


def _entropy_bits(q: torch.Tensor) -> float:
    """Sum over columns of the empirical entropy in bits of integer symbols q [N, k]."""
    n, k = q.shape
    off = q - q.min(0).values  # symbols of column j are 0..M-1
    m = int(off.max()) + 1
    counts = torch.bincount((off + torch.arange(k) * m).flatten(), minlength=k * m).double()
    p = counts[counts > 0] / n
    return float(-(p * torch.log2(p)).sum())
