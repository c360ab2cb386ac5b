"""Each physics option against its definition, and the simulators' bias at vanishing noise.

Expectations are computed independently: numpy/scipy window definitions, the Poisson and
binomial laws, the Kak-Slaney ramp written out in numpy, FWHM measured on impulse responses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import windows

from restore_rwkv.physics import (
    KSpaceTruncation,
    LowCountPET,
    LowDoseCT,
    ParallelBeamProjector,
    gaussian_filter,
    hu_to_mu,
    kspace_mask,
    mu_to_hu,
)
from restore_rwkv.physics.mri import kept_extent


def _radius(size: int) -> np.ndarray:
    c = np.arange(size) - (size - 1) / 2
    return np.hypot(c[:, None], c[None, :])


# ----------------------------------------------------------------------------- CT
def _ct_phantom(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Water disk (0 HU) holding a 40 HU disk, in air (-1000 HU); and the radius map."""
    r = _radius(size)
    hq = np.where(r <= 26, 0.0, -1000.0)
    hq[r <= 9] = 40.0
    return hq, r


def _photons_per_bin(incident_flux: float, dose: float, pixel_mm: float, views: int) -> float:
    """The documented dose model: incident_flux photons per view per mm of detector for 1000 views."""
    return incident_flux * dose * pixel_mm * 1000 / views


@pytest.mark.parametrize("window", ["ramp", "shepp-logan", "cosine", "hann"])
def test_ct_without_photon_noise_returns_the_hu_values(window):
    """At vanishing noise LQ is HQ (noise insertion); FBP of the geometry alone keeps uniform regions."""
    hq, r = _ct_phantom()
    op = LowDoseCT(dose_fraction=0.25, incident_flux=1e14, pixel_size_mm=1.0, fbp_window=window)
    np.testing.assert_allclose(op(hq, seed=0), hq, rtol=0, atol=0.05)
    noiseless = op.reconstruct_noiseless(hq)
    assert float(noiseless[r < 6].mean()) == pytest.approx(40.0, abs=3.0)
    assert float(noiseless[(r > 13) & (r < 22)].mean()) == pytest.approx(0.0, abs=3.0)
    assert float(noiseless[r > 30].mean()) == pytest.approx(-1000.0, abs=3.0)


@pytest.mark.parametrize("electronic", [0.0, 20.0])
def test_ct_count_statistics_in_the_projection_domain(electronic):
    """Counts behind air: mean n0, variance n0 (Poisson) + sigma_e^2 (electronic), n0 by the dose model."""
    op = LowDoseCT(dose_fraction=0.25, incident_flux=1600.0, electronic_noise_std=electronic, pixel_size_mm=0.5,
                   n_views=250)
    air = np.full((8, 32, 32), -1000.0)
    flux = _photons_per_bin(1600.0, 0.25, 0.5, 250)  # 800 photons
    assert op.photons_per_bin(32) == pytest.approx(flux, rel=1e-12)
    integrals = op.noisy_line_integrals(torch.from_numpy(air), seed=2).numpy()
    counts = flux * np.exp(-integrals)  # -log(counts / flux) inverted (no count is near the 0.5 clamp)
    n = counts.size
    variance = flux + electronic**2
    assert abs(counts.mean() - flux) < 5 * math.sqrt(variance / n)
    assert counts.var() == pytest.approx(variance, rel=5 * math.sqrt(2 / n))
    # the line integrals of air are 0 on average (to second order, var / (2 flux^2))
    assert abs(integrals.mean() - variance / (2 * flux**2)) < 5 * math.sqrt(variance / n) / flux


def test_views_default_to_pi_over_two_n_over_180_degrees_and_options_reach_the_projectors():
    angles = ParallelBeamProjector(40).angles.numpy()
    assert len(angles) == math.ceil(math.pi / 2 * 40)
    np.testing.assert_allclose(angles, np.arange(len(angles)) * np.pi / len(angles), rtol=0, atol=1e-15)
    assert len(LowDoseCT(n_views=10).projector(32).angles) == 10
    subsets = LowCountPET(n_views=24, subsets=3).projectors(32)
    assert [len(p.angles) for p in subsets] == [8, 8, 8]
    union = np.sort(np.concatenate([p.angles.numpy() for p in subsets]))
    np.testing.assert_allclose(union, np.arange(24) * np.pi / 24, atol=1e-15)  # interleaved, all views once
    assert subsets[0].angles[1] - subsets[0].angles[0] == pytest.approx(3 * np.pi / 24)


@pytest.mark.parametrize("size", [32, 33])
def test_projection_keeps_the_corners_in_every_view(size):
    """The padded square holds the rotated image's corners: their mass is in every view (bilinear error aside)."""
    corners = torch.zeros(1, size, size, dtype=torch.float64)
    corners[0, 0, 0] = corners[0, 0, -1] = corners[0, -1, 0] = corners[0, -1, -1] = 1.0
    sums = ParallelBeamProjector(size, 16)(corners).sum(dim=-1)
    assert float(sums.min()) > 0.85 * 4 and float(sums.max()) < 1.15 * 4


def test_hu_and_mu_by_definition():
    hu = torch.tensor([-1000.0, 0.0, 40.0, 1000.0, -1200.0], dtype=torch.float64)
    np.testing.assert_allclose(hu_to_mu(hu).numpy(), [0.0, 0.0192, 0.0192 * 1.04, 0.0384, 0.0], rtol=1e-12)
    np.testing.assert_allclose(mu_to_hu(torch.tensor([0.0, 0.0192, 0.0384], dtype=torch.float64)).numpy(),
                               [-1000.0, 0.0, 1000.0], rtol=1e-12, atol=1e-9)


def test_ct_photon_starvation_and_small_electronic_noise():
    """A bin with no photons gives the capped integral log(n0 / 0.5); electronic noise of 0.5 is applied."""
    bone = np.full((1, 32, 32), 3000.0)  # about 3 cm of bone-like attenuation per ray: exp(-110) photons
    op = LowDoseCT(dose_fraction=1.0, incident_flux=0.004, pixel_size_mm=10.0, n_views=4)
    n0 = _photons_per_bin(0.004, 1.0, 10.0, 4)  # 10 photons per bin
    integrals = op.noisy_line_integrals(torch.from_numpy(bone), seed=0).numpy()
    centre = integrals[0, :, integrals.shape[-1] // 2]
    np.testing.assert_allclose(centre, math.log(n0 / 0.5), rtol=1e-12)
    air = torch.full((1, 16, 16), -1000.0, dtype=torch.float64)
    quiet = LowDoseCT(incident_flux=1e4, pixel_size_mm=1.0)
    noisy = LowDoseCT(incident_flux=1e4, pixel_size_mm=1.0, electronic_noise_std=0.5)
    assert not torch.equal(quiet.noisy_line_integrals(air, seed=1), noisy.noisy_line_integrals(air, seed=1))


def _kak_slaney_response(n: int) -> np.ndarray:
    """DFT (length n, rfft half) of the band-limited ramp h(0)=1/4, h(odd k)=-1/(pi k)^2, else 0."""
    k = np.minimum(np.arange(n), n - np.arange(n))
    h = np.where(k % 2 == 1, -1.0 / (np.pi * np.maximum(k, 1)) ** 2, 0.0)
    h[0] = 0.25
    return np.fft.rfft(h).real


def _textbook_window(window: str, f: np.ndarray) -> np.ndarray:
    """Apodisation windows in units of the Nyquist frequency w = f / 0.5 (cycles per bin)."""
    w = f / 0.5
    return {
        "ramp": np.ones_like(w),
        "shepp-logan": np.sin(np.pi * w / 2) / np.where(w == 0, 1, np.pi * w / 2) + (w == 0),
        "cosine": np.cos(np.pi * w / 2),
        "hann": 0.5 * (1 + np.cos(np.pi * w)),
    }[window]


@pytest.mark.parametrize("window", ["ramp", "shepp-logan", "cosine", "hann"])
def test_fbp_filter_frequency_response(window):
    d = 40
    n = 128  # the next power of two >= 2 d, as the projector pads
    f = np.fft.rfftfreq(n)
    response = _kak_slaney_response(n)
    # the band-limited ramp is |f| away from DC
    np.testing.assert_allclose(response[8:], f[8:], rtol=0.02)
    p = ParallelBeamProjector(8, 4)
    impulse = torch.zeros(1, 1, d, dtype=torch.float64)
    impulse[..., 0] = 1.0
    filtered = p.ramp_filter(impulse, window)[0, 0].numpy()
    expected = np.fft.irfft(response * _textbook_window(window, f), n=n)[:d]  # the causal taps that fit
    np.testing.assert_allclose(filtered, expected, atol=1e-12)
    if window != "ramp":  # the windows differ from each other where it matters: at Nyquist
        nyquist = {"shepp-logan": 2 / np.pi, "cosine": 0.0, "hann": 0.0}[window]
        assert _textbook_window(window, np.array([0.5]))[0] == pytest.approx(nyquist, abs=1e-12)


# ----------------------------------------------------------------------------- MRI
def test_mri_scale_one_returns_the_image():
    x = np.random.default_rng(0).random((2, 30, 34)) + 0.5
    np.testing.assert_allclose(KSpaceTruncation(1)(x), x, rtol=0, atol=1e-12)


def _numpy_truncation(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fftshift(np.fft.fft2(x, norm="ortho"), axes=(-2, -1)) * weights
    return np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="ortho"))


@pytest.mark.parametrize("window", ["hamming", "tukey"])
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_mri_window_is_the_scipy_window_over_the_kept_block(window, shape):
    scale, alpha = 4, 0.4
    op = KSpaceTruncation(scale, window=window, tukey_alpha=alpha)
    (r0, r1), (c0, c1) = kept_extent(shape[0], scale), kept_extent(shape[1], scale)
    make = (lambda n: windows.hamming(n, sym=True)) if window == "hamming" else (lambda n: windows.tukey(n, alpha, sym=True))
    expected = np.zeros(shape)
    expected[r0:r1, c0:c1] = np.outer(make(r1 - r0), make(c1 - c0))
    np.testing.assert_allclose(op.kspace_filter(*shape, dtype=torch.float64).numpy(), expected, atol=1e-12)
    x = np.random.default_rng(1).random((2, *shape))
    np.testing.assert_allclose(op(x), _numpy_truncation(x, expected), atol=1e-12)


@pytest.mark.parametrize("scale, kept", [(32, 1), (16, 2), (8, 4)])
def test_mri_tiny_kept_blocks(scale, kept):
    """Blocks of 1 and 2 points: the mask keeps round(N/s) points and the windows are scipy's."""
    assert int(kspace_mask(32, 32, scale).sum()) == kept**2
    for window, make in (("hamming", lambda n: windows.hamming(n, sym=True)), ("tukey", lambda n: windows.tukey(n, 0.5))):
        weights = KSpaceTruncation(scale, window=window).kspace_filter(32, 32, dtype=torch.float64)
        (r0, r1) = kept_extent(32, scale)
        np.testing.assert_allclose(weights[r0:r1, r0:r1].numpy(), np.outer(make(kept), make(kept)), atol=1e-12)
        assert float(weights.sum()) == pytest.approx(make(kept).sum() ** 2, abs=1e-9)


@pytest.mark.parametrize("scale", [1, 4])
def test_mri_noise_only_in_the_kept_block_with_the_stated_std(scale):
    noise_std, shape = 2.0, (16, 64, 64)
    op = KSpaceTruncation(scale, noise_std=noise_std)
    zeros = torch.zeros(shape, dtype=torch.float64)
    kspace = op.sampled_kspace(zeros, seed=0)
    (r0, r1), (c0, c1) = kept_extent(64, scale), kept_extent(64, scale)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[r0:r1, c0:c1] = True
    assert bool((kspace[:, ~inside] == 0).all())
    kept = kspace[:, inside]
    per_part = noise_std**2 * (64 * 64) / inside.sum().item() / 2  # each of real and imaginary
    n = kept.numel()
    assert float(kept.real.var()) == pytest.approx(per_part, rel=5 * math.sqrt(2 / n))
    assert float(kept.imag.var()) == pytest.approx(per_part, rel=5 * math.sqrt(2 / n))
    # in the image, E|noise|^2 = noise_std^2 per pixel, whatever the scale
    lq = op(zeros, seed=0)
    assert float(lq.pow(2).mean()) == pytest.approx(noise_std**2, rel=0.05)


# ----------------------------------------------------------------------------- PET
def _fwhm(profile: np.ndarray) -> float:
    """Full width at half maximum of a single peak, by linear interpolation between samples."""
    half = profile.max() / 2
    above = np.nonzero(profile >= half)[0]
    left, right = above[0], above[-1]
    x_left = left - 1 + (half - profile[left - 1]) / (profile[left] - profile[left - 1])
    x_right = right + (profile[right] - half) / (profile[right] - profile[right + 1])
    return float(x_right - x_left)


@pytest.mark.parametrize("fwhm", [3.0, 6.0, 10.0])
def test_gaussian_filter_fwhm_on_an_impulse(fwhm):
    impulse = torch.zeros(1, 61, 61, dtype=torch.float64)
    impulse[0, 30, 30] = 1.0
    blurred = gaussian_filter(impulse, fwhm)[0].numpy()
    assert blurred.sum() == pytest.approx(1.0, abs=1e-9)  # mass kept away from the borders
    assert _fwhm(blurred[30]) == pytest.approx(fwhm, rel=0.03)
    assert _fwhm(blurred[:, 30]) == pytest.approx(fwhm, rel=0.03)


@pytest.mark.parametrize("fwhm", [1.0, 6.0])
def test_gaussian_filter_is_the_normalised_sampled_gaussian(fwhm):
    impulse = torch.zeros(1, 41, 41, dtype=torch.float64)
    impulse[0, 20, 20] = 1.0
    blurred = gaussian_filter(impulse, fwhm)[0].numpy()
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    g = np.exp(-0.5 * (np.arange(-20, 21) / sigma) ** 2)
    np.testing.assert_allclose(blurred, np.outer(g, g) / g.sum() ** 2, atol=2e-3 * blurred.max())


def test_gaussian_filter_keeps_shapes_and_constants_to_the_border():
    """Replicate padding: a constant image stays constant everywhere, including the borders."""
    constant = torch.full((2, 20, 30), 3.5, dtype=torch.float64)
    out = gaussian_filter(constant, 5.0)
    assert out.shape == constant.shape
    assert torch.allclose(out, constant, rtol=1e-12)
    assert torch.equal(gaussian_filter(constant, 0.0), constant)


def test_pet_poisson_and_thinning_statistics():
    op = LowCountPET(dose_reduction=4, total_counts=2e6, n_views=48, subsets=2)
    activity = torch.from_numpy(np.where(_radius(32) < 13, 3.0, 0.0) + np.where(_radius(32) < 5, 3.0, 0.0))
    mu = torch.from_numpy(np.where(_radius(32) < 15, 0.0096 * 4, 0.0))  # water at 511 keV, 4 mm pixels
    expected = torch.cat([s.flatten() for s in op.expected_counts(activity, mu)[0]]).numpy()
    full, thinned = [], []
    for seed in range(3):
        f, t, _ = op.sample_counts(activity, seed=seed, mu=mu)
        full.append(torch.cat([s.flatten() for s in f]).numpy())
        thinned.append(torch.cat([s.flatten() for s in t]).numpy())
    full, thinned = np.stack(full), np.stack(thinned)
    used = expected > 50
    p = 1 / 4
    z_full = (full[:, used] - expected[used]) / np.sqrt(expected[used])  # Poisson: mean = variance
    z_thin = (thinned[:, used] - p * expected[used]) / np.sqrt(p * expected[used])  # thinned Poisson: p * mean
    z_cond = (thinned[:, used] - p * full[:, used]) / np.sqrt(p * (1 - p) * full[:, used])  # binomial given full
    n = z_full.size
    for z in (z_full, z_thin, z_cond):
        assert abs(z.mean()) < 5 / math.sqrt(n)
        assert z.var() == pytest.approx(1.0, rel=5 * math.sqrt(2 / n))


def test_pet_high_counts_reproduce_the_activity():
    """Very high counts and converged OSEM: LQ (and the pair's HQ) equal the activity in uniform regions."""
    r = _radius(32)
    activity = np.where(r < 13, 4.0, 0.0) + np.where(r < 5, 4.0, 0.0)
    op = LowCountPET(dose_reduction=12, total_counts=1e10, iterations=15, subsets=6, n_views=48)
    hq, lq = op.simulate_pair(activity, seed=0)
    for image in (lq, hq):
        assert float(image[r < 3].mean()) == pytest.approx(8.0, rel=0.03)
        assert float(image[(r > 7) & (r < 11)].mean()) == pytest.approx(4.0, rel=0.03)
        assert float(np.abs(image[r > 15]).mean()) < 0.05 * 4.0


def test_ct_line_integrals_follow_beer_lambert_for_water():
    """Noiseless -log(I / I0) through a water disk is mu_water (0.0192 /mm) times the chord in mm."""
    size, radius, pixel_mm = 64, 24.0, 0.5
    r = _radius(size)
    hq = np.where(r <= radius, 0.0, -1000.0)
    op = LowDoseCT(dose_fraction=0.5, incident_flux=1e13, pixel_size_mm=pixel_mm, n_views=8)
    integrals = op.noisy_line_integrals(torch.from_numpy(hq), seed=0)[0].numpy()
    detectors = integrals.shape[-1]
    s = np.arange(detectors) - (detectors - 1) / 2  # detector offsets in pixels
    chord_mm = 2 * np.sqrt(np.clip(radius**2 - s**2, 0, None)) * pixel_mm
    inner = np.abs(s) < radius - 3
    expected = np.broadcast_to(0.0192 * chord_mm[inner], (8, inner.sum()))
    np.testing.assert_allclose(integrals[:, inner], expected, rtol=0.02, atol=0.0192 * pixel_mm)  # 1 pixel of water


def test_pet_attenuation_follows_beer_lambert():
    """With a uniform attenuating disk, each line's counts are multiplied by exp(-mu * chord)."""
    size, radius, mu_pixel = 48, 20.0, 0.0096 * 3  # water at 511 keV, 3 mm pixels
    r = _radius(size)
    activity = torch.from_numpy(np.where(r < 10, 1.0, 0.0))
    mu = torch.from_numpy(np.where(r <= radius, mu_pixel, 0.0))
    op = LowCountPET(n_views=6)
    plain, scale_plain = op.expected_counts(activity)
    attenuated, scale_mu = op.expected_counts(activity, mu)
    ratio = ((attenuated[0] / scale_mu[:, None, None]) / (plain[0] / scale_plain[:, None, None]))[0].numpy()
    s = np.arange(ratio.shape[-1]) - (ratio.shape[-1] - 1) / 2
    inner = np.abs(s) < 6  # lines through the source, far from the attenuator's rim
    chord = 2 * np.sqrt(radius**2 - s[inner] ** 2)  # pixels
    measured = -np.log(ratio[:, inner]) / mu_pixel
    np.testing.assert_allclose(measured, np.broadcast_to(chord, measured.shape), atol=1.5)  # pixelised rim


def test_pet_output_is_proportional_to_the_activity():
    """Counts are normalised to total_counts, so scaling the activity scales LQ and HQ alike (same seed)."""
    activity = np.where(_radius(24) < 9, 2.0, 0.1)
    op = LowCountPET(total_counts=1e4, iterations=3, subsets=2, n_views=24)
    hq, lq = op.simulate_pair(activity, seed=3)
    for c in (1e-7, 1e3):
        hq_c, lq_c = op.simulate_pair(activity * c, seed=3)
        np.testing.assert_allclose(lq_c, c * lq, rtol=1e-5, atol=1e-9 * c)
        np.testing.assert_allclose(hq_c, c * hq, rtol=1e-5, atol=1e-9 * c)


def test_mlem_is_scale_equivariant_at_low_counts():
    """MLEM(c y) = c MLEM(y): true for any c, so also where bins hold fewer than one count."""
    activity = torch.from_numpy(np.where(_radius(24) < 9, 2.0, 0.0))
    op = LowCountPET(total_counts=1e6, iterations=4, subsets=2, n_views=24)
    expected, _ = op.expected_counts(activity)
    reference = op.reconstruct(expected, 24)
    low = op.reconstruct([e * 1e-4 for e in expected], 24)  # about 0.05 counts per bin
    torch.testing.assert_close(low * 1e4, reference, rtol=1e-6, atol=1e-9 * float(reference.max()))


def test_pet_attenuation_map_reaches_call_and_pair():
    r = _radius(32)
    activity = np.where(r < 13, 4.0, 0.0)
    mu = np.where(r < 15, 0.0096 * 4, 0.0)
    op = LowCountPET(dose_reduction=12, total_counts=1e10, iterations=15, subsets=6, n_views=48)
    lq = op(activity, seed=0, mu=mu)
    hq_pair, lq_pair = op.simulate_pair(activity, seed=0, mu=mu)
    np.testing.assert_array_equal(lq, lq_pair)
    for image in (lq, hq_pair):  # attenuation modelled in both sampling and reconstruction: activity recovered
        assert float(image[r < 9].mean()) == pytest.approx(4.0, rel=0.03)
    # sampled with attenuation but reconstructed without it, the centre comes out too low
    full, thinned, scale = op.sample_counts(torch.from_numpy(activity), seed=0, mu=torch.from_numpy(mu))
    uncorrected = (op.reconstruct(thinned, 32) * (12 / scale[:, None, None]))[0].numpy()
    assert float(uncorrected[r < 3].mean()) < 0.9 * float(uncorrected[(r > 8) & (r < 11)].mean())


def test_projection_and_back_projection_at_zero_and_ninety_degrees_by_definition():
    """At 0 degrees a view holds column sums and back-projection smears it along the columns; at 90, rows."""
    size = 12
    p = ParallelBeamProjector(size, torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    x = torch.rand(1, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sino = p(x)[0]
    inner = slice(p.pad, p.pad + size)
    np.testing.assert_allclose(sino[0, inner].numpy(), x[0].sum(dim=0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sino[1, inner].numpy(), x[0].sum(dim=1).numpy(), rtol=1e-12)
    profile = torch.rand(p.detectors, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for view in (0, 1):
        single = torch.zeros(1, 2, p.detectors, dtype=torch.float64)
        single[0, view] = profile
        smeared = p.backproject(single)[0].numpy()
        expected = np.broadcast_to(profile[inner].numpy(), (size, size))
        np.testing.assert_allclose(smeared, expected if view == 0 else expected.T, rtol=1e-12)


def test_projector_results_do_not_depend_on_chunking_or_batching(monkeypatch):
    import restore_rwkv.physics.projector as projector_module

    p = ParallelBeamProjector(16, 10)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.rand(3, *p.sinogram_shape, generator=g, dtype=torch.float64)
    whole = p(x), p.backproject(y), p.adjoint(y)
    monkeypatch.setattr(projector_module, "_CHUNK_ELEMENTS", 1)  # one view per interpolation call
    for a, b in zip((p(x), p.backproject(y), p.adjoint(y)), whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a single (A, D) sinogram is one batch item
    torch.testing.assert_close(p.backproject(y[0]), whole[1][:1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.adjoint(y[0]), whole[2][:1], rtol=1e-12, atol=1e-12)
