"""PSNR, SSIM and RMSE per image, for torch tensors (any device) and numpy arrays.

Images are ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; every function returns one value per
image: shape ``()`` for one image, ``(B,)`` for a batch. Values are computed in float64: on the
tensor's device for torch input (on the CPU for MPS tensors, which have no float64) and returned
as a float64 tensor there; numpy input gives numpy float64 (a scalar for one image).
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

Array = Union[torch.Tensor, np.ndarray]
DataRange = Union[float, Sequence[float], np.ndarray, torch.Tensor]

SSIM_WINDOW = 11      # Gaussian window side (Wang et al. 2004)
SSIM_SIGMA = 1.5      # its standard deviation in pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_BOUNDARIES = ("valid", "zero")


class _Batch:
    """Two images as float64 tensors (N, H, W) on one device, and how to hand results back."""

    def __init__(self, pred: Array, target: Array) -> None:
        self.numpy = not isinstance(pred, torch.Tensor) and not isinstance(target, torch.Tensor)
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        shape = tuple(pred.shape)
        if len(shape) == 2:
            self.batch_shape: tuple[int, ...] = ()
        elif len(shape) == 3 or (len(shape) == 4 and shape[1] == 1):
            self.batch_shape = (shape[0],)
        else:
            raise ValueError(f"expected images (H, W), (B, H, W) or (B, 1, H, W); got shape {shape}")
        device = _compute_device(pred if isinstance(pred, torch.Tensor) else target)
        self.pred = _to_float64(pred, device).reshape(-1, *shape[-2:])
        self.target = _to_float64(target, device).reshape(-1, *shape[-2:])
        self.device = device

    @property
    def size(self) -> int:
        return self.pred.shape[0]

    def out(self, values: torch.Tensor) -> Array:
        """Per-image values (N,) shaped like the batch, as a tensor or as numpy."""
        values = values.reshape(self.batch_shape)
        if self.numpy:
            array = values.cpu().numpy()
            return array[()] if array.ndim == 0 else array
        return values


def _compute_device(x: Any) -> torch.device:
    if not isinstance(x, torch.Tensor) or x.device.type == "mps":
        return torch.device("cpu")
    return x.device


def _to_float64(x: Array, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)


def _data_range(data_range: DataRange, batch: _Batch) -> torch.Tensor:
    """``data_range`` as a float64 tensor (N,): one scalar for all images or one value per image."""
    dr = _to_float64(data_range, batch.device).reshape(-1)
    if dr.numel() == 1:
        dr = dr.expand(batch.size)
    elif dr.numel() != batch.size:
        raise ValueError(f"data_range must be a scalar or one value per image ({batch.size}); got {dr.numel()} values")
    if not bool(torch.all(torch.isfinite(dr) & (dr >= 0))):
        raise ValueError(f"data_range must be finite and non-negative; got {dr.tolist()}")
    return dr


def _mse(batch: _Batch) -> torch.Tensor:
    return (batch.pred - batch.target).square().mean(dim=(-2, -1))


def _psnr(batch: _Batch, dr: torch.Tensor) -> torch.Tensor:
    value = 10.0 * torch.log10(dr.square() / _mse(batch))
    return torch.where(dr > 0, value, torch.full_like(value, float("nan")))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The 1-D Gaussian weights of SSIM (float64, summing to 1); the 2-D window is their outer product."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2.0 * sigma**2))
    return weights / weights.sum()


def _ssim(batch: _Batch, dr: torch.Tensor, boundary: str) -> torch.Tensor:
    if boundary not in SSIM_BOUNDARIES:
        raise ValueError(f"boundary must be one of {SSIM_BOUNDARIES}; got {boundary!r}")
    height, width = batch.pred.shape[-2:]
    if boundary == "valid" and min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM with boundary='valid' needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} "
                         f"pixels; got {height}x{width}")
    x, y = batch.pred, batch.target
    # the five local moments of each image pair, filtered at once as channels of a grouped convolution
    moments = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    g = gaussian_window().to(batch.device)
    pad = SSIM_WINDOW // 2 if boundary == "zero" else 0
    filtered = F.conv2d(moments, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), padding=(pad, 0), groups=5)
    filtered = F.conv2d(filtered, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), padding=(0, pad), groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.unbind(dim=1)
    var_x, var_y, cov = e_xx - mu_x.square(), e_yy - mu_y.square(), e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * dr).square().view(-1, 1, 1)
    c2 = (SSIM_K2 * dr).square().view(-1, 1, 1)
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    value = ssim_map.mean(dim=(-2, -1))
    return torch.where(dr > 0, value, torch.full_like(value, float("nan")))


def psnr(pred: Array, target: Array, data_range: DataRange) -> Array:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range² / MSE)``.

    ``data_range`` is a scalar or one value per image. Identical images give ``inf``; a
    ``data_range`` of 0 (a flat label under the label-range protocol) gives NaN.
    """
    batch = _Batch(pred, target)
    return batch.out(_psnr(batch, _data_range(data_range, batch)))


def ssim(pred: Array, target: Array, data_range: DataRange, boundary: str = "valid") -> Array:
    """Mean structural similarity per image (Wang et al. 2004).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, C = (K * data_range)², population
    (co)variances. ``boundary="valid"`` averages the map over the window positions that lie
    inside the image (Wang et al.; scikit-image with ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False``); ``"zero"`` pads the images with zeros (in their own units) and
    averages the full-size map, as the Restore-RWKV reference code does: the zeros count as
    image content in the border windows (docs/metrics.md). A ``data_range`` of 0 gives NaN.
    """
    batch = _Batch(pred, target)
    return batch.out(_ssim(batch, _data_range(data_range, batch), boundary))


def rmse(pred: Array, target: Array) -> Array:
    """Root-mean-square error per image, in the units of the inputs."""
    batch = _Batch(pred, target)
    return batch.out(_mse(batch).sqrt())
