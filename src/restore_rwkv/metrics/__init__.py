"""Image quality metrics and the paper's evaluation protocol, for torch tensors and numpy arrays.

Depends on torch, numpy and the modality conventions only, so training, evaluation and any
later command share one implementation (docs/metrics.md).
"""

from restore_rwkv.metrics.functional import SSIM_BOUNDARIES, gaussian_window, psnr, rmse, ssim
from restore_rwkv.metrics.protocol import evaluate_normalized, evaluate_physical

__all__ = ["SSIM_BOUNDARIES", "evaluate_normalized", "evaluate_physical", "gaussian_window", "psnr", "rmse", "ssim"]
