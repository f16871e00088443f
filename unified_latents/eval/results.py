"""What an evaluation is asked for and what it finds: the request, then one dataclass of scores
per part (samples, continuations, pixel bits, reconstructions, FLOPs) and the whole result,
whose `to_dict` is eval.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SampleConfig


@dataclass
class EvalRequest:
    samples: int | None = None  # generated examples for gFID/KID (None: the modality's default)
    recon: int | None = None  # held-out examples reconstructed (0 = skip)
    ref_count: int | None = None  # held-out reference examples
    inception: str | None = None  # Inception TorchScript file (None: the one scripts/setup.sh fetches)
    i3d: str | None = None  # video: I3D TorchScript file for FVD
    context_frames: int = 5  # video: given frames in the continuation test
    sampling: dict = dataclasses.field(default_factory=dict)  # SampleConfig fields to override
    device: torch.device | str = "cpu"
    progress: bool = True
    out: Path | None = None  # folder for eval.json and image grids
    batch: int | None = None  # examples per network call (None: the artifact's eval.batch)
    trust_torchscript: bool = False  # load Inception/I3D files other than the pinned Inception (--trust-torchscript)
    fid_resize: str = "tf1"  # resize to Inception's 299x299: "tf1" (the reference FID's) or "torch" (earlier versions')
    ema_length: float | None = None  # the base model's post-hoc EMA of this sigma_rel (training/posthoc_ema.py)


@dataclass
class Reference:
    reference_images: int
    reference: str
    video: bool
    unit: str
    frames: int
    fid_resize: str  # how images reach Inception's 299x299 ("tf1": as the reference FID code)


@dataclass
class SampleScores:
    gfid: float
    gfid_samples: int
    kid: float
    kid_std: float  # spread of the MMD estimate over 100 random subsets of kid_subset samples from each side
    kid_subset: int
    fvd: float | None = None
    fvd_samples: int | None = None


@dataclass
class ContinuationScores:
    continuation_psnr: float
    continuation_clips: int
    context_frames: int
    context_latent_frames: int
    generated_from_frame: int


@dataclass
class PixelBits:
    pixel_bits_per_image: float
    pixel_bpp: float
    pixel_bits_images: int


@dataclass
class ReconstructionScores:
    rfid: float
    rfid_samples: int
    psnr: float
    ssim: float
    prior_bits_per_image: float
    prior_bpp: float
    base_bits_per_image: float  # class-conditional (each image's own label) when the base model has classes
    base_bpp: float
    base_null_bits_per_image: float | None = None  # the same latents under the null (unconditional) label
    base_null_bpp: float | None = None


@dataclass
class FlopCounts:
    stage1_train_per_sample: int
    base_params: int
    base_forward_flops: int
    base_train_flops: int
    generate_flops: int


@dataclass
class EvalResult:
    reference: Reference
    samples: SampleScores
    continuations: ContinuationScores | None
    pixel: PixelBits | None
    reconstructions: ReconstructionScores | None
    stage: str
    flops: FlopCounts
    sampling: SampleConfig
    posthoc_ema: dict | None = None  # the post-hoc EMA evaluated (sigma_rel, snapshots, fit), if any

    def to_dict(self) -> dict:
        """The eval.json form: one flat record (absent measurements left out), then flops and sampling."""
        out: dict = {}
        for part in (self.reference, self.samples, self.continuations, self.pixel, self.reconstructions):
            if part is not None:
                out.update({k: v for k, v in dataclasses.asdict(part).items() if v is not None})
        out["stage"] = self.stage
        if self.posthoc_ema:
            out["posthoc_ema"] = self.posthoc_ema
        out["flops"] = dataclasses.asdict(self.flops)
        s = self.sampling
        out["sampling"] = {
            "sampler": s.sampler,
            "base_steps": s.base_steps,
            "decoder_steps": s.decoder_steps,
            "guidance": s.guidance,
            "guidance_interval": s.guidance_interval,
        }
        return out
