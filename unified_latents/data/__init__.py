"""Datasets: uint8 tensors at the boundary, [-1, 1] floats inside."""

from .images import ImageData
from .latents import LatentData, encode_images, load_latents, save_latents
from .modality import IMAGE, VIDEO, Modality, modality_named, modality_of
from .sampler import DataOrder
from .sources import eval_source, load_images, named_by_artifact
from .transforms import crop_pad, frames_of, to_float, to_uint8
from .video import load_clips, moving_fmnist, write_mp4

__all__ = [
    "DataOrder",
    "IMAGE",
    "ImageData",
    "LatentData",
    "Modality",
    "VIDEO",
    "crop_pad",
    "encode_images",
    "eval_source",
    "frames_of",
    "load_clips",
    "load_images",
    "load_latents",
    "modality_named",
    "modality_of",
    "moving_fmnist",
    "named_by_artifact",
    "save_latents",
    "to_float",
    "to_uint8",
    "write_mp4",
]
