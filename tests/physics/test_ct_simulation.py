"""The CT simulation's projector pair and its noise insertion, against definitions and physical laws.

Expectations are computed independently where possible: chord lengths of a disk, the area of a
square pixel inside a detector strip by quadrature, the Kak-Slaney ramp as a direct Toeplitz
convolution, and the variance of FBP noise propagated linearly in float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

import restore_rwkv.physics.projector as projector_module
from restore_rwkv.physics import LowDoseCT, ParallelBeamProjector
from restore_rwkv.physics.projector import FootprintProjector, footprint_weights

MU_WATER = 0.0192


def _radius(size: int) -> np.ndarray:
    c = np.arange(size) - (size - 1) / 2
    return np.hypot(c[:, None], c[None, :])


def _supersampled_disk(size: int, radius: float, factor: int = 8) -> torch.Tensor:
    """Area fraction of each pixel inside a centred disk (radius in pixels), float64."""
    f = (np.arange(size * factor) + 0.5) / factor - size / 2
    inside = np.hypot(f[:, None], f[None, :]) <= radius
    return torch.from_numpy(inside.reshape(size, factor, size, factor).mean(axis=(1, 3)))


# ----------------------------------------------------------------------------- projector
def test_footprint_projection_of_a_disk_is_its_chord_length_at_every_angle():
    size, radius = 128, 50.0
    p = FootprintProjector(size, 36)  # every 5 degrees, 45 and 135 included
    sino = p(_supersampled_disk(size, radius))[0].numpy()
    s = np.arange(p.detectors) - (p.detectors - 1) / 2
    chord = 2 * np.sqrt(np.clip(radius**2 - s**2, 0, None))
    inner = np.abs(s) < radius - 2
    np.testing.assert_allclose(sino[:, inner], np.broadcast_to(chord[inner], (36, inner.sum())), rtol=0.02, atol=0.3)
    rel = (sino[:, inner] - chord[inner]) / chord[inner]
    assert float(np.sqrt((rel**2).mean())) < 3e-3
    # mass: every view holds the image's sum, times the pixel size
    scaled = FootprintProjector(size, 36, pixel_size=0.7)(_supersampled_disk(size, radius))[0]
    np.testing.assert_allclose(scaled.sum(dim=1).numpy(), 0.7 * float(_supersampled_disk(size, radius).sum()), rtol=1e-12)


def test_footprint_projection_agrees_with_the_rotate_and_sum_projector_on_a_smooth_image():
    size = 64
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    blobs = (torch.exp(-(c[:, None] ** 2 + (c[None, :] - 6) ** 2) / (2 * 8.0**2))
             + 0.5 * torch.exp(-((c[:, None] + 10) ** 2 + c[None, :] ** 2) / (2 * 4.0**2)))
    footprint, rotated = FootprintProjector(size, 36)(blobs), ParallelBeamProjector(size, 36)(blobs)
    assert float((footprint - rotated).abs().max()) < 3e-3 * float(rotated.abs().max())


@pytest.mark.parametrize("degrees", [0.0, 17.0, 45.0, 63.4, 90.0, 128.0])
def test_footprint_weights_are_the_pixel_area_in_each_strip(degrees):
    """Quadrature over the unit square: the share of its area whose projection lands in each bin."""
    theta = math.radians(degrees)
    steps = 8
    weights = footprint_weights(torch.tensor([theta], dtype=torch.float64), steps=steps)[0].numpy()
    assert weights.shape == (steps, 3)
    q = (np.arange(2000) + 0.5) / 2000 - 0.5  # midpoints across the pixel
    t = (q[:, None] * math.cos(theta) + q[None, :] * math.sin(theta)).ravel()
    for m in range(steps):
        position = t + (m - steps // 2) / steps  # pixel centre relative to its nearest bin, k = 0
        shares = np.array([np.mean(np.abs(position - bin_) <= 0.5) for bin_ in (-1, 0, 1)])
        np.testing.assert_allclose(weights[m], shares, atol=2e-3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)


def test_footprint_weights_at_0_degrees_are_linear_interpolation():
    weights = footprint_weights(torch.tensor([0.0], dtype=torch.float64), steps=16)[0].numpy()
    f = (np.arange(16) - 8) / 16
    np.testing.assert_allclose(weights, np.stack([np.maximum(-f, 0), 1 - np.abs(f), np.maximum(f, 0)], axis=1),
                               atol=1e-15)


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("size, views", [(16, 10), (33, 23)])
def test_footprint_pair_is_exactly_adjoint(use_numba, size, views):
    g = torch.Generator().manual_seed(0)
    p = FootprintProjector(size, views, pixel_size=0.6, use_numba=use_numba)
    x = torch.rand(2, size, size, generator=g, dtype=torch.float64)
    y = torch.rand(2, *p.sinogram_shape, generator=g, dtype=torch.float64)
    lhs, rhs = float((p(x) * y).sum()), float((x * p.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-13)
    torch.testing.assert_close(p.adjoint(y), 0.6 * p.backproject(y), rtol=1e-15, atol=0)


def test_numba_and_torch_paths_compute_the_same_maps():
    g = torch.Generator().manual_seed(1)
    fast, plain = FootprintProjector(40, 31), FootprintProjector(40, 31, use_numba=False)
    assert fast.use_numba and not plain.use_numba
    x = torch.rand(3, 40, 40, generator=g, dtype=torch.float64)
    y = torch.rand(3, *fast.sinogram_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.backproject(y), plain.backproject(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast(x.float()), plain(x.float()), rtol=1e-5, atol=1e-4)
    assert fast(x.float()).dtype == torch.float32 and fast.backproject(y.float()).dtype == torch.float32


def test_footprint_projection_at_0_and_90_degrees_by_definition():
    """At 0 degrees a view holds column sums and back-projection smears it along the columns; at 90, rows."""
    size = 12
    angles = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    for use_numba in (True, False):
        p = FootprintProjector(size, angles, use_numba=use_numba)
        x = torch.rand(1, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        sino = p(x)[0]
        inner = slice(p.pad, p.pad + size)
        np.testing.assert_allclose(sino[0, inner].numpy(), x[0].sum(dim=0).numpy(), rtol=1e-12)
        np.testing.assert_allclose(sino[1, inner].numpy(), x[0].sum(dim=1).numpy(), rtol=1e-12)
        assert float(sino[:, : p.pad].abs().max()) == 0.0 and float(sino[:, p.pad + size :].abs().max()) == 0.0
        profile = torch.rand(p.detectors, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        for view in (0, 1):
            single = torch.zeros(1, 2, p.detectors, dtype=torch.float64)
            single[0, view] = profile
            expected = np.broadcast_to(profile[inner].numpy(), (size, size))
            np.testing.assert_allclose(p.backproject(single)[0].numpy(), expected if view == 0 else expected.T,
                                       rtol=1e-12)
            # the same as the linear interpolation of ParallelBeamProjector at these angles
            np.testing.assert_allclose(p.backproject(single).numpy(),
                                       ParallelBeamProjector(size, angles).backproject(single).numpy(), rtol=1e-12)


def test_footprint_results_do_not_depend_on_threads_chunking_or_batching(monkeypatch):
    g = torch.Generator().manual_seed(2)
    p = FootprintProjector(24, 17)
    x = torch.rand(3, 24, 24, generator=g, dtype=torch.float64)
    y = torch.rand(3, *p.sinogram_shape, generator=g, dtype=torch.float64)
    whole = p(x), p.backproject(y)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert torch.equal(p(x), whole[0]) and torch.equal(p.backproject(y), whole[1])
    finally:
        numba.set_num_threads(threads)
    assert torch.equal(p(x[1:2]), whole[0][1:2]) and torch.equal(p.backproject(y[1]), whole[1][1:2])
    plain = FootprintProjector(24, 17, use_numba=False)
    reference = plain(x), plain.backproject(y)
    monkeypatch.setattr(projector_module, "_CHUNK_ELEMENTS", 1)  # one view per torch call
    torch.testing.assert_close(plain(x), reference[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.backproject(y), reference[1], rtol=1e-12, atol=1e-12)


def test_footprint_projector_refuses_wrong_shapes():
    p = FootprintProjector(16, 8)
    with pytest.raises(ValueError, match="16x16"):
        p(torch.zeros(1, 15, 15))
    with pytest.raises(ValueError, match="sinograms"):
        p.backproject(torch.zeros(1, 9, p.detectors))
    with pytest.raises(ValueError, match="sinograms"):
        p.backproject(torch.zeros(1, 8, p.detectors + 1))
    with pytest.raises(TypeError, match="floating"):
        p(torch.zeros(1, 16, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating"):
        p.backproject(torch.zeros(1, 8, p.detectors, dtype=torch.int32))


# ----------------------------------------------------------------------------- noise insertion
def _body(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Padding -2000 outside the scan circle, air -1024, a water disk holding a 40 HU disk; radius map."""
    r = _radius(size)
    hq = np.full((size, size), -2000.0)
    hq[r < 0.47 * size] = -1024.0
    hq[r < 0.35 * size] = 0.0
    hq[r < 0.12 * size] = 40.0
    return hq, r


def test_lq_minus_hq_is_zero_on_average_in_uniform_regions_including_air_and_padding():
    size, batch = 128, 16
    hq, r = _body(size)
    op = LowDoseCT(dose_fraction=0.25, incident_flux=1e5, pixel_size_mm=2.0, fbp_window="ramp")
    noise = op(np.broadcast_to(hq, (batch, size, size)).copy(), seed=0) - hq
    regions = {"padding -2000": r >= 0.48 * size, "air -1024": (r > 0.37 * size) & (r < 0.45 * size),
               "water": (r > 0.14 * size) & (r < 0.33 * size), "40 HU": r < 0.1 * size}
    for name, region in regions.items():
        per_image = noise[:, region].mean(axis=1)
        standard_error = per_image.std(ddof=1) / math.sqrt(batch)
        assert abs(per_image.mean()) < max(5 * standard_error, 0.05), name
        assert abs(per_image.mean()) < 0.5, name  # HU, against noise of about 10 HU
        assert noise[:, region].std() > 1.0, name  # there is noise everywhere, padding included


def test_noise_std_goes_as_one_over_sqrt_dose():
    hq, r = _body(96)
    batch = np.broadcast_to(hq, (8, 96, 96)).copy()
    region = r < 0.3 * 96
    stds = {}
    for dose in (1.0, 0.5, 0.25, 0.1):
        op = LowDoseCT(dose_fraction=dose, incident_flux=2e5, pixel_size_mm=2.0)
        stds[dose] = float((op(batch, seed=3) - hq)[:, region].std())
    for dose, std in stds.items():
        assert std == pytest.approx(stds[1.0] / math.sqrt(dose), rel=0.05), dose


def _ramp_toeplitz(detectors: int) -> np.ndarray:
    """The Kak-Slaney band-limited ramp as a matrix: h(0) = 1/4, h(odd j) = -1/(pi j)^2, else 0."""
    j = np.abs(np.arange(detectors)[:, None] - np.arange(detectors)[None, :])
    return np.where(j == 0, 0.25, np.where(j % 2 == 1, -1.0 / (np.pi * np.maximum(j, 1)) ** 2, 0.0))


def test_noise_variance_matches_linear_propagation_in_float64():
    """Var LQ(x) = (1000/mu_w)^2 (pi/(A d))^2 sum (R P e_x / d)^2 e^p / n0, from Poisson counts by the delta method."""
    size, pixel_mm, dose, flux = 48, 2.0, 0.5, 4e5
    r = _radius(size)
    hq = np.where(r < 18, 0.0, -1000.0)
    hq[r < 6] = 40.0
    op = LowDoseCT(dose_fraction=dose, incident_flux=flux, pixel_size_mm=pixel_mm, fbp_window="ramp")
    p = op.projector(size)
    views = len(p.angles)
    n0 = flux * dose * pixel_mm * 1000 / views  # the documented dose model
    mu = MU_WATER * (1 + np.clip(hq, -1000, None) / 1000)
    line = p(torch.from_numpy(mu))[0].numpy()  # noiseless line integrals (projector verified above)
    pixels = [(i, j) for i in range(6, 42, 5) for j in range(6, 42, 5)]
    deltas = torch.zeros(len(pixels), size, size, dtype=torch.float64)
    for n, (i, j) in enumerate(pixels):
        deltas[n, i, j] = 1.0
    rows = p(deltas).numpy() / pixel_mm @ _ramp_toeplitz(p.detectors).T  # (pixels, A, D): R P e_x / d
    scale = (1000 / MU_WATER) * math.pi / (views * pixel_mm)
    predicted = scale**2 * (rows**2 * np.exp(line) / n0).sum(axis=(1, 2))
    samples = op(np.broadcast_to(hq, (400, size, size)).copy(), seed=11) - hq
    measured = np.array([samples[:, i, j].var(ddof=1) for i, j in pixels])
    assert measured.mean() == pytest.approx(predicted.mean(), rel=0.04)
    np.testing.assert_allclose(measured, predicted, rtol=0.35)  # per pixel: 400 samples, 7 % standard error


def test_noise_follows_pixel_size_to_the_minus_three_halves():
    """Fixed body and field of view, pixels of 4 mm then 2 mm: the std grows by 2^1.5 (variance ~ 1/d^3)."""
    stds = []
    for size, pixel_mm in ((64, 4.0), (128, 2.0)):
        r = _radius(size) * pixel_mm  # mm
        hq = np.where(r < 90.0, 0.0, -1000.0)  # a 18 cm water disk in a 256 mm field of view
        op = LowDoseCT(dose_fraction=0.25, incident_flux=1e5, pixel_size_mm=pixel_mm)
        noise = op(np.broadcast_to(hq, (12, size, size)).copy(), seed=4) - hq
        stds.append(float(noise[:, r < 50.0].std()))
    assert stds[1] / stds[0] == pytest.approx(2**1.5, rel=0.06)
    # the same law at a fixed grid: only the pixel size changes (air, so every ray sees n0 photons)
    air = np.full((8, 48, 48), -1000.0)
    coarse, fine = (float((LowDoseCT(incident_flux=1e4, pixel_size_mm=d)(air, seed=5) + 1000.0).std()) for d in (2.0, 0.5))
    assert fine / coarse == pytest.approx(4**1.5, rel=0.03)


def test_the_number_of_views_does_not_change_the_noise_level():
    hq, r = _body(64)
    batch = np.broadcast_to(hq, (16, 64, 64)).copy()
    region = r < 0.3 * 64
    stds = [float((LowDoseCT(incident_flux=1e5, pixel_size_mm=2.0, n_views=views)(batch, seed=6) - hq)[:, region].std())
            for views in (101, 300)]
    assert stds[1] == pytest.approx(stds[0], rel=0.05)


def test_lq_is_the_same_through_the_torch_path_and_the_numba_path():
    """The torch implementation (used off CPU) gives the numba path's LQ for the same seed."""
    hq, _ = _body(40)
    fast = LowDoseCT(incident_flux=1e4, pixel_size_mm=2.0)
    plain = LowDoseCT(incident_flux=1e4, pixel_size_mm=2.0)
    plain._projectors[40] = FootprintProjector(40, None, 2.0, use_numba=False)
    np.testing.assert_allclose(fast(hq, seed=9), plain(hq, seed=9), rtol=0, atol=1e-9)
