"""Unified Latents (UL): jointly trained encoder, diffusion prior and diffusion decoder.

See UL_SPEC (the project's specification) and the README for usage.
"""

__version__ = "0.2.0"


def load(path, device: str = "auto"):
    """Load an artifact for use from Python (unified_latents/api.py): sample, encode, decode,
    reconstruct, bits. Imported on first use, so `import unified_latents` stays light."""
    from .api import load as _load

    return _load(path, device)
