"""Datasets: uint8 tensors at the boundary, [-1, 1] floats inside."""

from .images import ImageData, crop_pad, eval_source, load_images, to_float, to_uint8
from .sampler import DataOrder
from .latents import LatentData, encode_images, load_latents, save_latents
from .video import frames_of, load_clips, moving_fmnist, write_mp4
