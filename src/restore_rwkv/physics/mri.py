"""MRI super-resolution degradation: k-space truncation (the paper's IXI protocol).

An MR image is the inverse Fourier transform of the k-space the scanner samples; a lower
resolution acquisition samples only the centre of k-space. The simulation takes the
centred 2-D FFT of the high-resolution image, keeps the central ``1/s x 1/s`` block (for
s = 4, 6.25 % of the points), sets the rest to zero, transforms back and takes the
magnitude, so LQ has the size of HQ. Options: a Hamming or Tukey window over the kept block
(tapers the cut that causes Gibbs ringing) and complex Gaussian noise on the kept samples
(thermal noise), scaled so that the complex noise of the zero-filled image has standard
deviation ``noise_std`` per pixel whatever the scale (with an orthonormal FFT, noise of
variance v on M of N samples gives image noise of variance v M / N).
"""

from __future__ import annotations

import math

import torch

from restore_rwkv.physics._common import Degradation, make_generator


def kept_extent(size: int, scale: float) -> tuple[int, int]:
    """(start, stop) of the kept centre along an axis of ``size`` points in centred (fftshifted) order."""
    keep = max(1, int(round(size / scale)))
    start = size // 2 - keep // 2
    return start, start + keep


def kspace_mask(height: int, width: int, scale: float, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (H, W) mask of the kept k-space points in centred order (``round(H/s) x round(W/s)``)."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    (r0, r1), (c0, c1) = kept_extent(height, scale), kept_extent(width, scale)
    mask[r0:r1, c0:c1] = True
    return mask


def _window_1d(n: int, kind: str, alpha: float, device, dtype) -> torch.Tensor:
    """Symmetric window of ``n`` points as scipy.signal.windows defines it (1 for a single point)."""
    if kind not in ("hamming", "tukey"):
        raise ValueError(f"unknown window {kind!r}; use None, 'hamming' or 'tukey'")
    if n == 1:
        return torch.ones(1, device=device, dtype=dtype)
    if kind == "hamming":
        return torch.hamming_window(n, periodic=False, device=device, dtype=dtype)
    x = torch.linspace(0.0, 1.0, n, device=device, dtype=dtype)
    w = torch.ones(n, device=device, dtype=dtype)
    if alpha > 0:
        edge = x < alpha / 2
        w[edge] = 0.5 * (1 + torch.cos(math.pi * (2 * x[edge] / alpha - 1)))
        edge = x > 1 - alpha / 2
        w[edge] = 0.5 * (1 + torch.cos(math.pi * (2 * x[edge] / alpha - 2 / alpha + 1)))
    return w


class KSpaceTruncation(Degradation):
    """HQ -> LQ by keeping the centre of k-space (a :class:`Degradation`: ``lq = op(hq, seed)``).

    Args:
        scale: super-resolution factor s; keeps ``round(H/s) x round(W/s)`` points.
        window: None (sharp cut, the paper), ``"hamming"`` or ``"tukey"``.
        tukey_alpha: taper fraction of the Tukey window.
        noise_std: per-pixel standard deviation of the complex Gaussian noise of the LQ image
            before the magnitude (real and imaginary parts each ``noise_std / sqrt(2)``), in
            image intensity units; added to the kept k-space samples only (0 = none, the paper).
    """

    def __init__(self, scale: float = 4.0, window: str | None = None, tukey_alpha: float = 0.5,
                 noise_std: float = 0.0) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if window not in (None, "hamming", "tukey"):
            raise ValueError(f"unknown window {window!r}; use None, 'hamming' or 'tukey'")
        self.scale, self.window, self.tukey_alpha, self.noise_std = float(scale), window, tukey_alpha, noise_std

    def kspace_filter(self, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """(H, W) real weights in centred order: the mask, times the window over the kept block."""
        weights = kspace_mask(height, width, self.scale, device).to(dtype)
        if self.window is not None:
            (r0, r1), (c0, c1) = kept_extent(height, self.scale), kept_extent(width, self.scale)
            wr = _window_1d(r1 - r0, self.window, self.tukey_alpha, device, dtype)
            wc = _window_1d(c1 - c0, self.window, self.tukey_alpha, device, dtype)
            weights[r0:r1, c0:c1] = wr[:, None] * wc[None, :]
        return weights

    def sampled_kspace(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Centred (fftshifted) orthonormal k-space of LQ for real (..., H, W) ``x``: the kept,
        windowed block plus its noise, zero elsewhere (complex, float64 precision for float64 ``x``)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        height, width = x.shape[-2:]
        spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(work), norm="ortho"), dim=(-2, -1))
        spectrum = spectrum * self.kspace_filter(height, width, x.device, work)
        if self.noise_std > 0:
            generator = make_generator(seed, x.device)
            mask = kspace_mask(height, width, self.scale, x.device)
            per_sample = self.noise_std * math.sqrt(mask.numel() / int(mask.sum()))
            noise = torch.complex(
                torch.randn(spectrum.shape, generator=generator, device=x.device, dtype=work),
                torch.randn(spectrum.shape, generator=generator, device=x.device, dtype=work),
            ) * (per_sample / math.sqrt(2))
            spectrum = spectrum + noise * mask
        return spectrum

    def degrade_batch(self, x: torch.Tensor, seed: int | None) -> torch.Tensor:
        """LQ magnitude images of (B, H, W) ``x``: |inverse FFT of ``sampled_kspace``|."""
        spectrum = self.sampled_kspace(x, seed)
        return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="ortho").abs()


def zero_fill(image, factor: int):
    """``image`` (..., H, W; real or complex, numpy or torch) on a grid ``factor`` times finer in-plane:
    its centred k-space zero-padded to (factor H, factor W) and transformed back, magnitude.

    This is how a low-resolution acquisition becomes the paper's x``factor`` input: the kept block
    sits where :func:`kept_extent` puts it, so ``zero_fill`` of the centre ``H x W`` of an image's
    k-space equals :class:`KSpaceTruncation` of that image (same grid, no window). Values keep their
    scale (a constant stays that constant). Output sample ``factor * i`` lies on input sample ``i``
    (a DFT interpolation): the first voxel keeps its centre, the spacing is divided by ``factor``.
    Returns float64 for float64 or complex128 input, else float32; numpy in, numpy out.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"zero-fill factor must be a positive integer; got {factor}")
    as_numpy = not isinstance(image, torch.Tensor)
    x = torch.from_numpy(_contiguous(image)) if as_numpy else image
    double = x.dtype in (torch.float64, torch.complex128)
    x = x.to(torch.complex128 if double else torch.complex64)
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    padded = torch.zeros((*x.shape[:-2], height * factor, width * factor), dtype=spectrum.dtype, device=x.device)
    (r0, r1), (c0, c1) = kept_extent(height * factor, factor), kept_extent(width * factor, factor)
    padded[..., r0:r1, c0:c1] = spectrum
    out = torch.fft.ifft2(torch.fft.ifftshift(padded, dim=(-2, -1))).abs() * float(factor * factor)
    return out.numpy() if as_numpy else out


def _contiguous(image):
    """``image`` as a C-contiguous numpy array (torch.from_numpy needs one)."""
    import numpy as np

    return np.ascontiguousarray(image)
