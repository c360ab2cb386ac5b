"""Projector, CT low-dose and PET low-count simulations against physical laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from restore_rwkv.physics import LowCountPET, LowDoseCT, ParallelBeamProjector


def _disk(size: int, radius: float, value: float = 1.0, background: float = 0.0) -> torch.Tensor:
    c = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2)
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    return torch.where(r <= radius, value, background).to(torch.float64)


def test_projection_of_a_disk_is_its_chord_length():
    size, radius = 96, 30.0
    p = ParallelBeamProjector(size, 12)
    sino = p(_disk(size, radius))[0]
    s = (torch.arange(p.detectors, dtype=torch.float64) - (p.detectors - 1) / 2)
    chord = 2 * torch.sqrt((radius**2 - s**2).clamp_min(0))
    inner = s.abs() < radius - 2  # away from the rim, where pixelisation dominates
    for view in sino:
        assert torch.allclose(view[inner], chord[inner], rtol=0.03, atol=0.6)
    # total mass is the same in every view: the image's sum
    assert torch.allclose(sino.sum(dim=1), _disk(size, radius).sum().expand(12), rtol=2e-4)


def test_adjoint_is_the_transpose():
    g = torch.Generator().manual_seed(0)
    p = ParallelBeamProjector(32, 20)
    x = torch.rand(2, 32, 32, generator=g, dtype=torch.float64)
    y = torch.rand(2, *p.sinogram_shape, generator=g, dtype=torch.float64)
    assert torch.allclose((p(x) * y).sum(), (x * p.adjoint(y)).sum(), rtol=1e-10)


def test_fbp_reconstructs_a_phantom():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    phantom = torch.from_numpy(resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True))
    p = ParallelBeamProjector(128, pixel_size=0.5)
    recon = p.fbp(p(phantom))[0]
    err = (recon - phantom)[32:96, 32:96]
    assert float(err.abs().mean()) < 0.02 and float(err.pow(2).mean().sqrt()) < 0.06


def _uniform_slice(size: int = 96) -> torch.Tensor:
    return _disk(size, 40, value=40.0, background=-1000.0)  # soft tissue in air, HU


def test_ct_high_flux_returns_the_input_and_fbp_error_stays_out_of_lq():
    """LQ = HQ + noise: at high flux LQ is HQ, although FBP of this geometry alone has errors of its own."""
    hq = _uniform_slice()
    op = LowDoseCT(dose_fraction=1.0, incident_flux=1e14, pixel_size_mm=1.0)
    lq = op(hq, seed=0)
    assert float((lq - hq).abs().max()) < 0.05  # HU, everywhere: air, edges and soft tissue alike
    noiseless = op.reconstruct_noiseless(hq)
    inner = _disk(96, 34).bool()
    fbp_error = float((noiseless - hq)[inner].abs().mean())
    assert 0.05 < fbp_error < 15.0


def test_ct_noise_grows_as_one_over_sqrt_dose_and_is_seeded():
    hq = _uniform_slice().expand(4, -1, -1)
    inner = _disk(96, 30).bool()
    stds = {}
    for dose in (1.0, 0.25):
        op = LowDoseCT(dose_fraction=dose, incident_flux=2e4, pixel_size_mm=1.0)
        noise = op(hq, seed=1) - hq
        stds[dose] = float(noise[:, inner].std())
    assert stds[0.25] / stds[1.0] == pytest.approx(2.0, rel=0.15)
    op = LowDoseCT(pixel_size_mm=1.0)
    assert torch.equal(op(hq, seed=5), op(hq, seed=5)) and not torch.equal(op(hq, seed=5), op(hq, seed=6))


def test_pet_thinning_divides_expected_counts():
    op = LowCountPET(dose_reduction=12, total_counts=4e6, n_views=48, subsets=3)
    activity = _disk(48, 18, value=4.0) + _disk(48, 6, value=6.0)
    expected, _ = op.expected_counts(activity)
    assert float(sum(s.sum() for s in expected)) == pytest.approx(4e6, rel=1e-9)
    totals = []
    for seed in range(4):
        full, thinned, _ = op.sample_counts(activity, seed=seed)
        n_full, n_thin = float(sum(c.sum() for c in full)), float(sum(c.sum() for c in thinned))
        assert abs(n_full - 4e6) < 5 * math.sqrt(4e6)  # Poisson total
        assert all(bool((t <= c).all()) for t, c in zip(thinned, full))  # thinning only removes counts
        totals.append(n_thin)
    # E[thinned] = full / 12; the mean of 4 draws is within 5 standard errors
    assert abs(np.mean(totals) - 4e6 / 12) < 5 * math.sqrt(4e6 / 12 / 4)


def test_pet_noiseless_reconstruction_approaches_the_activity():
    activity = _disk(48, 18, value=4.0) + _disk(48, 6, value=6.0)
    op = LowCountPET(total_counts=1e6, n_views=72)
    expected, scale = op.expected_counts(activity)
    errors = []
    for iterations in (5, 50):
        recon = op.reconstruct(expected, 48, iterations=iterations)[0] / scale[0]
        errors.append(float((recon - activity).norm() / activity.norm()))
    assert errors[1] < errors[0] and errors[1] < 0.12


def test_pet_lq_is_noisier_than_hq_and_seeded():
    activity = _disk(48, 20, value=5.0)
    op = LowCountPET(dose_reduction=12, total_counts=5e5, iterations=8, subsets=4, n_views=72)
    hq, lq = op.simulate_pair(activity, seed=0)
    inner = _disk(48, 14).bool()
    assert float(lq[inner].std()) > 1.5 * float(hq[inner].std())
    assert float(hq[inner].mean()) == pytest.approx(5.0, rel=0.1)
    assert float(lq[inner].mean()) == pytest.approx(5.0, rel=0.15)
    hq2, lq2 = op.simulate_pair(activity, seed=0)
    assert torch.equal(hq, hq2) and torch.equal(lq, lq2)


def test_pet_with_attenuation_recovers_the_activity():
    activity = _disk(48, 18, value=4.0)
    mu = _disk(48, 20, value=0.0096 * 2)  # water at 511 keV per pixel of 2 mm
    op = LowCountPET(total_counts=1e6, n_views=72, iterations=30)
    expected, scale = op.expected_counts(activity, mu)
    recon = op.reconstruct(expected, 48, mu)[0] / scale[0]
    inner = _disk(48, 14).bool()
    assert float(recon[inner].mean()) == pytest.approx(4.0, rel=0.05)
