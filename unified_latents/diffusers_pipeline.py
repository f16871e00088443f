"""diffusers integration (`pip install 'unified-latents[diffusers]'`).

    from unified_latents.diffusers_pipeline import UnifiedLatentsPipeline, UnifiedLatentsAutoencoder

    pipe = UnifiedLatentsPipeline.from_pretrained("ul-fmnist")   # a `ul export` folder, an artifact, or user/name
    images = pipe(class_labels=[3, 7], num_inference_steps=96, guidance_scale=1.0,
                  generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images

    vae = UnifiedLatentsAutoencoder.from_pretrained("ul-fmnist")  # the KL-VAE surface other trainers call
    z = vae.encode(x).latent_dist.sample(generator)               # z0 = alpha_0 z_clean + sigma_0 eps (log-SNR 5)
    x_hat = vae.decode(z).sample                                  # the diffusion decoder's sample, in [-1, 1]

Seeds: image i of a call uses the seed its generator was made with (`generator.initial_seed()`),
or that seed + i when one generator serves several images, or `seeds=` directly; so
`pipe(generator=torch.Generator().manual_seed(5))` gives `ul sample --seeds 5`'s image.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .errors import UserError

try:
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    # from where it is defined: the package's top-level name reads, to a type checker, as the
    # placeholder diffusers defines for installs without torch
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
except ImportError:  # pragma: no cover (the message is the behaviour)
    raise UserError("the diffusers integration needs diffusers: pip install 'unified-latents[diffusers]'") from None

from .api import UnifiedLatentsModel, load
from .diffusion import alpha_sigma


def _seeds(generator, n: int, seeds=None) -> list[int]:
    if seeds is not None:
        return [int(s) for s in seeds]
    if generator is None:
        return list(range(n))
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise UserError(f"{len(generator)} generators for {n} images; give one per image, or one for all")
        return [int(g.initial_seed()) for g in generator]
    return [int(generator.initial_seed()) + i for i in range(n)]


class UnifiedLatentsAutoencoder(torch.nn.Module):
    """UL's stage 1 behind diffusers' autoencoder surface: `encode(x).latent_dist` is the encoder's
    latent at log-SNR 5 (a Gaussian of mean alpha_0 z_clean and standard deviation sigma_0, the
    noise UL trains its decoder with), `decode(z).sample` the diffusion decoder's sample given
    that noisy latent (with a learned encoder variance, its alpha_0-scaled variance is added).
    `config.scaling_factor` is 1: UL latents are not rescaled."""

    def __init__(self, ul: UnifiedLatentsModel):
        super().__init__()
        self.ul, self.stage1 = ul, ul.stage1
        self.config = SimpleNamespace(
            scaling_factor=1.0,
            latent_channels=self.stage1.z_shape[0],
            sample_size=ul.data.resolution,
            in_channels=ul.data.channels,
        )

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu") -> UnifiedLatentsAutoencoder:
        return cls(load(path, device))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x: float [N, C, H, W] in [-1, 1] at the model's resolution (padding included)."""
        p = next(self.stage1.parameters())
        mean, logvar_z = self.stage1.encode_stats(x.to(p.device, p.dtype))
        a, s = (float(v) for v in alpha_sigma(torch.tensor(self.stage1.cfg.diffusion.lam0, dtype=torch.float64)))
        var = torch.full_like(mean, s * s)
        if logvar_z is not None:  # a learned encoder variance adds its own noise, scaled by alpha_0
            var = var + a * a * logvar_z.exp()
        dist = DiagonalGaussianDistribution(torch.cat([a * mean, var.log()], dim=1))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None, seeds=None):
        """The decoder's sample given the noisy latent z0 (seed i for example i, or the generators')."""
        p = next(self.stage1.parameters())  # where the networks are now (a pipeline's .to() moves them)
        x = self.stage1.decode(z.to(p.device, p.dtype), _seeds(generator, z.shape[0], seeds))
        return DecoderOutput(sample=x) if return_dict else (x,)


class UnifiedLatentsPipeline(DiffusionPipeline):
    """Class-conditional (or unconditional) generation with a base artifact: the base model runs
    down to log-SNR 5, the decoder takes it from there (as `ul sample`)."""

    def __init__(self, base: torch.nn.Module, vae: UnifiedLatentsAutoencoder):
        super().__init__()
        self.register_modules(base=base, vae=vae)

    # Not diffusers' signature (a path, artifact or Hub name, and a device): it loads a UL artifact
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, path: str, device: str = "cpu", **_: object
    ) -> UnifiedLatentsPipeline:
        ul = load(path, device)
        if not hasattr(ul.model, "sample_latents"):
            raise UserError(f"{path} is a stage-1 autoencoder; the pipeline needs a base (stage-2) artifact")
        return cls(ul.model, UnifiedLatentsAutoencoder(ul))

    @torch.no_grad()
    def __call__(
        self,
        class_labels=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator=None,
        num_images: int | None = None,
        seeds=None,
        decoder_steps: int | None = None,
        sampler: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """class_labels: a list (one per image) or None (seed % classes); num_inference_steps: base-model
        steps; guidance_scale: classifier-free guidance (1 = none); output_type "pil" or "pt" (uint8)."""
        n = (
            len(class_labels)
            if class_labels is not None
            else (
                num_images
                or (len(generator) if isinstance(generator, (list, tuple)) else len(seeds) if seeds is not None else 1)
            )
        )
        ul = self.vae.ul
        args = dict(
            classes=list(class_labels) if class_labels is not None else None,
            guidance=guidance_scale,
            steps=num_inference_steps,
            decoder_steps=decoder_steps,
            sampler=sampler,
        )
        images = ul.sample(_seeds(generator, n, seeds), **args)
        if output_type == "pt":
            import numpy as np

            images = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
        return ImagePipelineOutput(images=images) if return_dict else (images,)
