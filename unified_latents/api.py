"""The Python API: images in, images out, with the command line's conventions.

    from unified_latents import load
    ul = load("runs/fmnist/base/artifact.safetensors")
    images = ul.sample([0, 1, 2], classes=[3, 3, 7], guidance=1.0)   # list of PIL images
    z = ul.encode(images)                                             # z_clean [N, C, h, w]
    again = ul.decode(z, seeds=[0, 1, 2])                             # the decoder's samples
    bits = ul.bits(images)                                            # bits per image [N]

A stage-1 artifact encodes, decodes, reconstructs and measures bits; a base (stage-2) artifact
also samples. Sample k depends only on seed k, as in `ul sample`; example i of encode, decode,
reconstruct and bits uses seed i unless seeds are given. Images may be PIL images of any size and
mode (converted, resized and center-cropped as training data is) or uint8 arrays [N, H, W],
[N, H, W, C] or [N, C, H, W] already at the model's size. Video models take and give clips: a
clip is a list of frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import dist
from .data.images import checked_pixels, fit_image
from .data.transforms import convert_channels, crop_pad, resize_crop, to_float, to_uint8
from .errors import UserError
from .generate import class_labels, generate_images
from .objectives.registry import load_model


class UnifiedLatentsModel:
    """A loaded artifact (EMA weights, eval mode) on one device."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.stage1 = getattr(model, "stage1", model)  # a base model carries its frozen stage 1
        self.data = self.stage1.cfg.data

    @property
    def device(self) -> torch.device:
        """Where the networks are now (a diffusers pipeline's `.to("cuda")` moves them)."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ generation

    def sample(
        self,
        seeds,
        classes=None,
        guidance: float | None = None,
        steps: int | None = None,
        decoder_steps: int | None = None,
        sampler: str | None = None,
        batch: int | None = None,
    ) -> list:
        """Generated images (video: clips), one per seed. classes: None (seed % classes), a list of
        ints (cycled), or "random" / "none", as `ul sample --classes`."""
        if not hasattr(self.model, "sample_latents"):
            raise UserError("sampling needs a base (stage-2) artifact; this one is a stage-1 autoencoder")
        seeds = [int(s) for s in seeds]
        if isinstance(classes, (list, tuple)):
            classes = ",".join(str(int(c)) for c in classes)
        labels = class_labels(seeds, classes, self.model.num_classes)
        sc = self.cfg.sample
        gen = generate_images(
            self.model,
            seeds,
            labels,
            batch or sc.batch or self.model.modality.batch,
            steps=steps or sc.base_steps,
            decoder_steps=decoder_steps or sc.decoder_steps,
            sampler=sampler or sc.sampler,
            guidance=sc.guidance if guidance is None else guidance,
            interval=sc.guidance_interval or None,
        )
        return self._pictures(gen)

    # ------------------------------------------------------------------ autoencoding

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """z_clean [N, *z_shape] of the frozen encoder (what stage 2 models)."""
        return self.stage1.encode(to_float(self._pixels(images)).to(self.device)).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seeds=None, steps: int | None = None, sampler: str | None = None) -> list:
        """Decoder samples given z_clean: noised to log-SNR 5 (seed i + 1,000,003, as in reconstruction),
        then decoded (seed i), so decode(encode(x)) is reconstruct(x)."""
        z = torch.as_tensor(latents, dtype=torch.float32).to(self.device)
        return self._pictures(to_uint8(self.stage1.decode_clean(z, self._seeds(seeds, z.shape[0]), steps, sampler)))

    @torch.no_grad()
    def reconstruct(
        self, images, seeds=None, steps: int | None = None, sampler: str | None = None, mean_of: int = 1
    ) -> list:
        """Encode, add the log-SNR-5 noise, decode: what `ul reconstruct` shows."""
        x = to_float(self._pixels(images)).to(self.device)
        rec = self.stage1.reconstruct(x, self._seeds(seeds, x.shape[0]), steps, sampler, mean_of)
        return self._pictures(to_uint8(rec))

    @torch.no_grad()
    def bits(self, images, seeds=None) -> torch.Tensor:
        """Latent bits per image under the stage-1 prior (unweighted ELBO), float64 [N]."""
        x = to_float(self._pixels(images)).to(self.device)
        return self.stage1.bits(x, self._seeds(seeds, x.shape[0])).cpu()

    # ------------------------------------------------------------------ conversions

    def _seeds(self, seeds, n: int) -> list[int]:
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise UserError(f"{len(seeds)} seeds for {n} examples; give one seed per example")
        return seeds

    def _pixels(self, images) -> torch.Tensor:
        """uint8 [N, C, res, res] (clips [N, C, T, res, res]) as training sees them, padding included."""
        d, inner = self.data, self.data.resolution - 2 * self.data.pad
        if isinstance(images, Image.Image):
            images = [images]
        if self.stage1.modality.video:
            x = torch.stack(
                [
                    torch.from_numpy(np.stack([fit_image(_pil(f), d.channels, inner) for f in clip], axis=1))
                    for clip in images
                ]
            )
        elif isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
            x = torch.from_numpy(np.stack([fit_image(im, d.channels, inner) for im in images]))
        else:
            x = convert_channels(torch.from_numpy(checked_pixels("images", np.asarray(images)))[:, :3], d.channels)
            if x.shape[-2:] != (inner, inner):
                x = resize_crop(x, inner)
        return torch.nn.functional.pad(x, (d.pad,) * 4) if d.pad else x

    def _pictures(self, x: torch.Tensor) -> list:
        """uint8 [N, C, (T,) H, W] with padding -> PIL images (video: a list of frames per clip)."""
        x = crop_pad(x.cpu(), self.data.pad)
        if x.ndim == 5:
            return [[_image(c[:, t]) for t in range(c.shape[1])] for c in x]
        return [_image(im) for im in x]


def _pil(frame) -> Image.Image:
    return frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))


def _image(chw: torch.Tensor) -> Image.Image:
    a = chw.numpy()
    return Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")


def load(path: str | Path, device: str = "auto") -> UnifiedLatentsModel:
    """An artifact (`artifact.safetensors` of stage 1 or of a base model), a folder written by
    `ul export`, or a Hub repo id ("user/name") holding one, ready to use.
    device: "auto" (a GPU when there is one), "cuda", "cuda:N" (that GPU) or "cpu"."""
    from .export import fetch  # a Hub name ("user/name") is downloaded with huggingface_hub

    dev = dist.init(device)
    model, cfg = load_model(fetch(str(path)), dev)
    return UnifiedLatentsModel(model, cfg)
