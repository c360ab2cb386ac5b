"""The degradation protocol: (hq, seed: int | None) -> lq, numpy in -> numpy out, torch in -> torch out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_rwkv.physics import (
    DEGRADATION_OPTIONS,
    Degradation,
    KSpaceTruncation,
    LowCountPET,
    LowDoseCT,
    default_degradation,
)


def _image(size: int = 24, seed: int = 0) -> np.ndarray:
    """A positive float32 image with structure (a disk on a ramp) and some texture."""
    rng = np.random.default_rng(seed)
    c = np.arange(size) - (size - 1) / 2
    r = np.hypot(c[:, None], c[None, :])
    return (np.where(r < size / 3, 4.0, 1.0) + 0.2 * rng.random((size, size)) + c[None, :] / size).astype(np.float32)


SIMULATORS = {
    "mri": lambda: KSpaceTruncation(2, window="tukey", noise_std=0.1),
    "ct": lambda: LowDoseCT(dose_fraction=0.5, incident_flux=1e4, electronic_noise_std=2.0, pixel_size_mm=1.0),
    "pet": lambda: LowCountPET(dose_reduction=4, total_counts=1e5, iterations=2, subsets=2, n_views=24),
}


def _hq(kind: str, size: int = 24) -> np.ndarray:
    x = _image(size)
    return (x - 2.0) * 100.0 if kind == "ct" else x  # HU for CT


@pytest.mark.parametrize("kind", sorted(SIMULATORS))
def test_numpy_in_numpy_out_equal_to_torch(kind):
    op = SIMULATORS[kind]()
    assert isinstance(op, Degradation)
    hq = _hq(kind)
    lq_torch = op(torch.from_numpy(hq), seed=7)
    lq_numpy = op(hq, seed=7)
    assert isinstance(lq_torch, torch.Tensor) and lq_torch.dtype == torch.float32
    assert isinstance(lq_numpy, np.ndarray) and lq_numpy.dtype == np.float32 and lq_numpy.shape == hq.shape
    np.testing.assert_array_equal(lq_numpy, lq_torch.numpy())
    assert not np.array_equal(lq_numpy, hq)  # it did degrade
    # float64 stays float64; batches (B, H, W) and (B, 1, H, W) keep their shape
    batch = np.stack([hq, hq[::-1].copy()]).astype(np.float64)
    out = op(batch[:, None], seed=7)
    assert out.dtype == np.float64 and out.shape == (2, 1, 24, 24)
    out_t = op(torch.from_numpy(batch[:, None]), seed=7)
    assert out_t.dtype == torch.float64 and torch.equal(torch.from_numpy(out), out_t)


@pytest.mark.parametrize("kind", sorted(SIMULATORS))
def test_any_numpy_layout_and_integer_input(kind):
    op = SIMULATORS[kind]()
    hq = _hq(kind)
    expected = op(np.ascontiguousarray(np.rot90(hq)), seed=1)
    np.testing.assert_array_equal(op(np.rot90(hq), seed=1), expected)  # negative strides
    np.testing.assert_array_equal(op(np.rot90(hq).astype(">f4"), seed=1), expected)  # big-endian, as NIfTI stores
    as_int = np.round(hq).astype(np.int16)  # integer input (e.g. CT in HU): float32 out, same values
    out = op(as_int, seed=1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, op(as_int.astype(np.float32), seed=1))
    out_t = op(torch.from_numpy(as_int), seed=1)
    assert out_t.dtype == torch.float32 and torch.equal(out_t, torch.from_numpy(out))


@pytest.mark.parametrize("kind", sorted(SIMULATORS))
def test_seed_is_an_int_or_none(kind):
    op = SIMULATORS[kind]()
    hq = torch.from_numpy(_hq(kind))
    assert torch.equal(op(hq, seed=3), op(hq, seed=np.int64(3)))
    assert not torch.equal(op(hq, seed=3), op(hq, seed=4))
    assert not torch.equal(op(hq), op(hq))  # None: fresh entropy each call
    for bad in (torch.Generator().manual_seed(3), np.random.default_rng(3), 3.0, "3", True):
        with pytest.raises(TypeError, match="seed"):
            op(hq, seed=bad)
    with pytest.raises(ValueError, match="seed"):
        op(hq, seed=-1)


def test_pet_call_is_the_lq_of_the_pair():
    op = SIMULATORS["pet"]()
    activity = _hq("pet")
    hq, lq = op.simulate_pair(activity, seed=5)
    assert isinstance(hq, np.ndarray) and hq.dtype == lq.dtype == np.float32 and hq.shape == lq.shape == (24, 24)
    np.testing.assert_array_equal(op(activity, seed=5), lq)
    hq_t, lq_t = op.simulate_pair(torch.from_numpy(activity), seed=5)
    assert torch.equal(hq_t, torch.from_numpy(hq)) and torch.equal(lq_t, torch.from_numpy(lq))
    assert not np.array_equal(hq, activity)  # the pair's HQ is a reconstruction, not the input


@pytest.mark.parametrize("kind", ["ct", "pet"])
def test_projection_simulators_need_square_slices(kind):
    op = SIMULATORS[kind]()
    for shape in ((24, 20), (20, 24)):
        with pytest.raises(ValueError, match="square"):
            op(np.zeros(shape, dtype=np.float32), seed=0)


def test_constructor_defaults_are_the_documented_ones():
    ct = LowDoseCT()
    assert (ct.dose_fraction, ct.incident_flux, ct.electronic_noise_std, ct.pixel_size_mm, ct.n_views,
            ct.fbp_window, ct.mu_water) == (0.25, 3e5, 0.0, 0.7, None, "hann", 0.0192)
    pet = LowCountPET()
    assert (pet.dose_reduction, pet.total_counts, pet.iterations, pet.subsets, pet.n_views,
            pet.post_filter_fwhm) == (12.0, 1e6, 10, 1, None, 0.0)
    mri = KSpaceTruncation()
    assert (mri.scale, mri.window, mri.tukey_alpha, mri.noise_std) == (4.0, None, 0.5, 0.0)


def test_argument_ranges_at_their_boundaries():
    LowDoseCT(dose_fraction=1.0, incident_flux=0.5)  # the edges that are allowed
    for bad in ({"dose_fraction": 0.0}, {"dose_fraction": 1.01}, {"incident_flux": 0.0}, {"pixel_size_mm": 0.0}):
        with pytest.raises(ValueError):
            LowDoseCT(**bad)
    LowCountPET(dose_reduction=1.0, total_counts=0.5, iterations=1, subsets=1)
    for bad in ({"dose_reduction": 0.99}, {"total_counts": 0.0}, {"iterations": 0}, {"subsets": 0}):
        with pytest.raises(ValueError):
            LowCountPET(**bad)
    KSpaceTruncation(scale=1.0, noise_std=0.0)
    for window in (None, "hamming", "tukey"):
        KSpaceTruncation(window=window)
    with pytest.raises(ValueError, match="window"):
        LowDoseCT(fbp_window="hamming")
    for bad in ({"scale": 0.99}, {"noise_std": -0.1}, {"window": "hann"}):
        with pytest.raises(ValueError):
            KSpaceTruncation(**bad)


def test_default_degradation_options():
    mri = default_degradation("mri_sr", scale=3.0, dose_fraction=0.5)  # another task's option is ignored
    assert isinstance(mri, KSpaceTruncation) and mri.scale == 3.0
    ct = default_degradation("ct_denoise", dose_fraction=0.5, incident_flux=2e4, pixel_size_mm=1.5)
    assert isinstance(ct, LowDoseCT)
    assert (ct.dose_fraction, ct.incident_flux, ct.pixel_size_mm) == (0.5, 2e4, 1.5)
    pet = default_degradation("pet", iterations=2)
    assert isinstance(pet, LowCountPET)
    assert (pet.dose_reduction, pet.total_counts, pet.iterations, pet.subsets) == (12.0, 1e6, 2, 4)
    pet = default_degradation("pet", dose_reduction=4.0, total_counts=5e5, subsets=2)
    assert (pet.dose_reduction, pet.total_counts, pet.iterations, pet.subsets) == (4.0, 5e5, 4, 2)
    defaults = default_degradation("ct_denoise")
    assert (defaults.dose_fraction, defaults.incident_flux, defaults.pixel_size_mm) == (0.25, 3e5, 0.7)
    assert defaults.fbp_window == "hann"
    spacing = default_degradation("ct_denoise", pixel_size_mm=0.82)  # as data preparation passes it from metadata
    assert spacing.pixel_size_mm == 0.82 and spacing.projector(16).pixel_size == 0.82
    assert default_degradation("mri_sr").scale == DEGRADATION_OPTIONS["mri_sr"]["scale"] == 4.0
    with pytest.raises(TypeError, match="dose_fractoin"):
        default_degradation("ct_denoise", dose_fractoin=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        default_degradation("denoise")
