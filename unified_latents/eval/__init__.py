"""Metrics, FLOP counts, reconstructions, evaluation and reports."""

from .flops import count_params, forward_flops, stage1_report
from .metrics import psnr, ssim
from .reconstruct import evaluate_reconstruction

__all__ = [
    "count_params",
    "evaluate_reconstruction",
    "forward_flops",
    "psnr",
    "ssim",
    "stage1_report",
]
