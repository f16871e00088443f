"""Unified Latents (UL): jointly trained encoder, diffusion prior and diffusion decoder.

See UL_SPEC (the project's specification) and the README for usage.
"""

__version__ = "0.1.0"
