"""Intensity policies: the MR scale fit (proportional, robust, the same streamed or whole), the blend that
keeps out-of-range input values, tasks and their names."""

from __future__ import annotations

import numpy as np
import pytest

from restore_rwkv.modality import (
    FIT_SAMPLE,
    OUTSIDE_BLEND,
    TASKS,
    ModalityConvention,
    Scaling,
    get_convention,
    get_task,
    modality_name,
    outside_weight,
)


def _head(seed: int = 0) -> np.ndarray:
    """A disc of 'tissue' (values about 800-1000) in a background of noise (about 10): an MR-like slice stack."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    inside = (yy - 24) ** 2 + (xx - 24) ** 2 < 18 ** 2
    volume = rng.rayleigh(8.0, (5, 48, 48))
    volume[:, inside] = rng.uniform(800.0, 1000.0, (5, int(inside.sum())))
    return volume


def test_mr_scale_is_the_foreground_percentile_over_the_target():
    volume = _head()
    scaling = Scaling("foreground_percentile")
    positive = volume[volume > 0]
    foreground = positive[positive > 0.1 * np.percentile(positive, 99.9)]
    assert scaling.fit(volume) == pytest.approx(np.percentile(foreground, 99) / 3000.0, rel=1e-12)
    assert 0.3 < scaling.fit(volume) < 0.34  # the tissue's 99th percentile (about 998) over 3000, not the noise's


@pytest.mark.parametrize("factor", [0.2, 8.0, 1e-3, 1e4])
def test_mr_scale_is_proportional_to_the_data(factor):
    volume = _head()
    scaling = Scaling("foreground_percentile")
    assert scaling.fit(factor * volume) == pytest.approx(factor * scaling.fit(volume), rel=1e-12)


def test_mr_scale_ignores_a_few_hot_voxels_and_the_field_of_view():
    volume = _head()
    scaling = Scaling("foreground_percentile")
    hot = volume.copy()
    hot[2, 3, 3] = 1e6  # one spike: the maximum moves by 1000x
    assert scaling.fit(hot) == pytest.approx(scaling.fit(volume), rel=2e-3)
    padded = np.pad(volume, ((0, 0), (40, 40), (40, 40)), constant_values=0.0)  # more air around the head
    padded[:, :40] = np.random.default_rng(1).rayleigh(8.0, padded[:, :40].shape)
    assert scaling.fit(padded) == pytest.approx(scaling.fit(volume), rel=2e-3)


def test_a_volume_streamed_slice_by_slice_fits_like_the_whole_array():
    """Above FIT_SAMPLE voxels every k-th one enters the fit; a stream of slices picks the same ones."""
    rng = np.random.default_rng(2)
    volume = rng.gamma(2.0, 100.0, (70, 256, 256)).astype(np.float32)  # 4.6 M voxels > FIT_SAMPLE
    assert volume.size > FIT_SAMPLE
    scaling = Scaling("foreground_percentile")
    streamed = scaling.fit_slices((s for s in volume), volume.size)
    assert streamed == scaling.fit(volume)
    step = -(-volume.size // FIT_SAMPLE)
    sample = volume.reshape(-1)[::step].astype(np.float64)
    assert streamed == pytest.approx(scaling.scale_of_sample(sample), rel=0)


def test_fixed_scalings_need_no_fit_and_empty_images_are_refused():
    assert Scaling("fixed").fit(np.full((4, 4), 7.0)) == 1.0 and Scaling("suv").fit(np.ones((2, 2))) == 1.0
    with pytest.raises(ValueError, match="no positive values"):
        Scaling("foreground_percentile").fit(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="unknown scaling"):
        Scaling("zscore")
    with pytest.raises(ValueError, match="target"):
        Scaling("foreground_percentile", target=0.0)


def test_normalize_divides_by_the_scale_and_denormalize_multiplies_it_back():
    convention = get_convention("mri")
    x = np.array([0.0, 100.0, 2000.0, 50000.0])
    scale = 10.0
    np.testing.assert_allclose(convention.normalize(x, scale), np.clip(x / scale, 0, 4095) / 4095)
    back = convention.denormalize(convention.normalize(x, scale), scale)
    np.testing.assert_allclose(back[:3], x[:3], rtol=1e-12)
    assert back[3] == pytest.approx(40950.0)  # the clipped value: what keep_outside replaces


def test_values_outside_the_range_keep_the_input_with_a_smooth_border():
    convention = get_convention("ct")
    assert convention.keep_bounds == (-1500.0, 3072.0)  # CT noise in air (-1500..-1024 HU) is restored, padding kept
    original = np.zeros((32, 32))
    original[12:18, 12:18] = 8000.0  # metal: above 3072 HU
    original[0, :] = -3024.0  # out-of-field padding below -1024 HU
    restored = np.full((32, 32), 5.0)
    out, count = convention.keep_outside(restored, original)
    assert count == 36 + 32
    assert (out[12:18, 12:18] == 8000.0).all() and (out[0] == -3024.0).all()
    far = np.ones((32, 32), bool)
    far[12 - OUTSIDE_BLEND:18 + OUTSIDE_BLEND, 12 - OUTSIDE_BLEND:18 + OUTSIDE_BLEND] = False
    far[:1 + OUTSIDE_BLEND] = False
    assert (out[far] == 5.0).all()  # beyond the blend the restoration is untouched
    weight = outside_weight(convention.outside(original))
    assert weight[11, 15] == pytest.approx(0.5 + 0.5 * np.cos(np.pi / OUTSIDE_BLEND))  # one pixel away
    assert weight[10, 15] == pytest.approx(0.5)  # half way
    row = out[18:18 + OUTSIDE_BLEND + 1, 15]  # from the input's own value beside the metal (0) to the restoration (5)
    np.testing.assert_allclose(row, (1 - weight[18:18 + OUTSIDE_BLEND + 1, 15]) * 5.0)
    assert np.all(np.diff(row[:-1]) > 0) and row[-2] == row[-1] == 5.0
    untouched, none = convention.keep_outside(restored, np.zeros((32, 32)))
    assert none == 0 and untouched is restored
    noisy_air = np.full((32, 32), -1100.0)  # below the network's -1024 but no padding: restored as air
    assert convention.keep_outside(restored, noisy_air)[1] == 0


def test_keep_outside_works_in_the_scans_own_units():
    convention = get_convention("pet")  # [0, 20] SUV
    scale = 5000.0  # Bq/ml per SUV
    original = np.full((8, 8), 10.0 * scale)
    original[4, 4] = 30.0 * scale  # SUV 30: above the range
    out, count = convention.keep_outside(np.full((8, 8), 9.0 * scale), original, scale)
    assert count == 1 and out[4, 4] == 30.0 * scale and out[0, 0] == 9.0 * scale
    noise = np.full((8, 8), -0.3 * scale)  # negative activity is noise around zero: restored, not kept
    assert convention.keep_outside(np.zeros((8, 8)), noise, scale)[1] == 0


def test_conventions_round_trip_through_a_card_entry():
    for name in ("ct", "mri", "pet"):
        convention = get_convention(name)
        assert ModalityConvention.from_card(convention.to_card(), name) == convention
    custom = get_convention("mri", scaling=Scaling("foreground_percentile", percentile=95.0, target=2000.0))
    entry = custom.to_card()
    assert entry["scaling"] == {"kind": "foreground_percentile", "percentile": 95.0, "foreground": 0.1, "target": 2000.0}
    assert ModalityConvention.from_card(entry, "mr") == custom
    with pytest.warns(UserWarning, match="unknown"):
        assert ModalityConvention.from_card({**entry, "dose": 1}, "mri") == custom


def test_tasks_have_one_type_and_their_names():
    assert {t.name: t.modality for t in TASKS.values()} == {"mri_sr": "mri", "ct_denoise": "ct", "pet": "pet"}
    assert get_task("CT").name == "ct_denoise" and get_task("mr").name == "mri_sr" and get_task("pt").name == "pet"
    with pytest.raises(ValueError, match="unknown task"):
        get_task("xray")
    assert [modality_name(x) for x in ("MR", "pt", "CT", "US", None)] == ["mri", "pet", "ct", None, None]
