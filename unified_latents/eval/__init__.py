"""Metrics, FLOP counts, reconstructions, image grids."""

from .flops import count_params, forward_flops, stage1_report
from .images import grid, save_grid, save_png, save_previews, save_strip
from .metrics import psnr, ssim
from .reconstruct import evaluate_reconstruction
