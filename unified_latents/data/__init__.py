"""Datasets: uint8 tensors at the boundary, [-1, 1] floats inside."""

from .images import ImageData
from .latents import LatentData, encode_images, load_latents, save_latents
from .modality import IMAGE, VIDEO, Modality, eval_source, load_images, named_by_artifact, modality_named, modality_of
from .sampler import DataOrder
from .transforms import crop_pad, frames_of, to_float, to_uint8
from .video import load_clips, moving_fmnist, write_mp4
