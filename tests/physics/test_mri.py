"""k-space truncation: the kept fraction, band-limited images pass, high frequencies are lost."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from restore_rwkv.physics import KSpaceTruncation, kspace_mask


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("size", [(256, 256), (64, 128)])
def test_mask_keeps_one_over_s_squared_of_the_points(scale, size):
    mask = kspace_mask(*size, scale)
    assert int(mask.sum()) * scale**2 == size[0] * size[1]
    # the kept block is centred on the DC sample of the shifted spectrum
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert rows.min() <= size[0] // 2 <= rows.max() and cols.min() <= size[1] // 2 <= cols.max()


def _band_limited(size: int, scale: int, seed: int = 0) -> torch.Tensor:
    """A positive real image whose spectrum lies strictly inside the kept block, symmetric in k and -k."""
    g = torch.Generator().manual_seed(seed)
    half = size // scale // 2 - 1
    freqs = torch.fft.fftfreq(size) * size
    inside = (freqs.abs() <= half)[:, None] & (freqs.abs() <= half)[None, :]
    spectrum = torch.fft.fft2(torch.randn(size, size, generator=g, dtype=torch.float64)) * inside
    image = torch.fft.ifft2(spectrum).real
    return image - image.min() + 1.0


def test_band_limited_image_passes_unchanged():
    x = _band_limited(128, 4)
    lq = KSpaceTruncation(4)(x)
    assert torch.allclose(lq, x, rtol=0, atol=1e-10 * float(x.abs().max()))


def test_lq_loses_high_frequency_energy_and_keeps_low():
    g = torch.Generator().manual_seed(1)
    hq = torch.rand(3, 1, 64, 64, generator=g, dtype=torch.float64)
    lq = KSpaceTruncation(4)(hq)
    assert lq.shape == hq.shape and lq.dtype == hq.dtype
    shift = lambda x: torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))  # noqa: E731
    mask = kspace_mask(64, 64, 4)
    high_hq = shift(hq).abs()[..., ~mask].pow(2).sum()
    high_lq = shift(lq).abs()[..., ~mask].pow(2).sum()
    assert high_lq < 0.2 * high_hq  # the magnitude adds a little back, far less than was removed
    # Parseval: the kept energy is at most the input energy
    assert lq.pow(2).sum() <= hq.pow(2).sum()


def test_windows_and_noise_are_seeded_and_deterministic():
    x = torch.rand(2, 32, 32, dtype=torch.float64)
    for window in ("hamming", "tukey"):
        op = KSpaceTruncation(4, window=window, noise_std=0.01)
        assert torch.equal(op(x, seed=3), op(x, seed=3))
        assert not torch.equal(op(x, seed=3), op(x, seed=4))
    # image-domain noise std equals noise_std (orthonormal FFT), checked on a zero image
    noise = KSpaceTruncation(1, noise_std=0.5)(torch.zeros(8, 64, 64, dtype=torch.float64), seed=0)
    # magnitude of complex Gaussian with per-part std 0.5/sqrt(2): Rayleigh, mean sigma*sqrt(pi/2)
    sigma = 0.5 / math.sqrt(2)
    assert abs(float(noise.mean()) - sigma * math.sqrt(math.pi / 2)) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError):
        KSpaceTruncation(0.5)
    with pytest.raises(ValueError, match="expected images"):
        KSpaceTruncation(4)(torch.zeros(1, 2, 8, 8))


@pytest.mark.parametrize("size,factor", [((64, 48), 4), ((15, 21), 3), ((8, 8), 2)])
def test_zero_fill_of_the_kspace_centre_is_the_truncation_on_the_fine_grid(size, factor):
    """zero_fill(the centre H x W of a fine image's k-space, as an image) = KSpaceTruncation of the fine image."""
    from restore_rwkv.physics import zero_fill
    from restore_rwkv.physics.mri import kept_extent

    rng = np.random.default_rng(1)
    fine = rng.random((size[0] * factor, size[1] * factor))
    spectrum = np.fft.fftshift(np.fft.fft2(fine))
    (r0, r1), (c0, c1) = kept_extent(fine.shape[0], factor), kept_extent(fine.shape[1], factor)
    coarse = np.fft.ifft2(np.fft.ifftshift(spectrum[r0:r1, c0:c1])) / factor ** 2  # complex, values kept
    expected = KSpaceTruncation(factor)(torch.from_numpy(fine)).numpy()
    np.testing.assert_allclose(zero_fill(coarse, factor), expected, rtol=0, atol=1e-12)
    assert zero_fill(np.full(size, 7.0), factor) == pytest.approx(np.full(np.multiply(size, factor), 7.0))
    batch = zero_fill(torch.from_numpy(np.stack([fine[:size[0], :size[1]]] * 2)), factor)
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, size[0] * factor, size[1] * factor)
