"""PSNR, SSIM and RMSE against scikit-image and the definitions; the paper's window and data range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restore_rwkv.modality import get_convention
from restore_rwkv.metrics import evaluate_normalized, evaluate_physical, psnr, rmse, ssim
from restore_rwkv.modality import ModalityConvention


def _pair(shape, seed, scale=1.0, offset=0.0, noise=0.1):
    """A smooth random image (so SSIM is far from 0 and 1) and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    base = rng.random(shape)
    for axis in (-1, -2):  # a little blur gives local structure
        base = (base + np.roll(base, 1, axis) + np.roll(base, -1, axis)) / 3
    other = base + noise * rng.standard_normal(shape)
    return base * scale + offset, other * scale + offset


def ssim_by_definition(x: np.ndarray, y: np.ndarray, data_range: float, zero_pad: bool = False) -> float:
    """SSIM written out window by window (Wang et al. 2004), float64, no convolution library."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-offsets**2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    if zero_pad:
        x, y = np.pad(x, 5), np.pad(y, 5)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape,scale,offset,data_range", [((32, 32), 1.0, 0.0, 1.0), ((40, 57), 4095.0, 0.0, 4095.0),
                                                          ((23, 64), 400.0, -160.0, 300.0)])
def test_psnr_equals_scikit_image(shape, scale, offset, data_range):
    x, y = _pair(shape, seed=1, scale=scale, offset=offset)
    expected = peak_signal_noise_ratio(y, x, data_range=data_range)
    assert psnr(x, y, data_range) == pytest.approx(expected, rel=1e-12)
    got = psnr(torch.from_numpy(x), torch.from_numpy(y), data_range)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("zero_pad", [False, True])
@pytest.mark.parametrize("shape,scale,offset", [((17, 23), 1.0, 0.0), ((14, 12), 400.0, -160.0)])
def test_ssim_equals_its_definition(shape, scale, offset, zero_pad):
    x, y = _pair(shape, seed=2, scale=scale, offset=offset, noise=0.2)
    data_range = float(y.max() - y.min())
    expected = ssim_by_definition(x, y, data_range, zero_pad=zero_pad)
    got = ssim(x, y, data_range, boundary="zero" if zero_pad else "valid")
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert 0.1 < expected < 0.99  # a discriminating case, not a saturated one


@pytest.mark.parametrize("shape,data_range", [((64, 48), 1.0), ((33, 71), 2.5)])
def test_ssim_equals_scikit_image(shape, data_range):
    x, y = _pair(shape, seed=4)
    expected = structural_similarity(x, y, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(x, y, data_range) == pytest.approx(expected, rel=1e-12)


def test_rmse_is_the_root_mean_square_difference():
    x, y = _pair((20, 30), seed=5, scale=100.0)
    assert rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), rel=1e-14)
    assert rmse(x, x) == 0.0 and np.isinf(psnr(x, x, 1.0))


def test_ct_window_is_applied_before_every_metric():
    """Values outside [-160, 240] HU are clipped in both images: differences there do not count."""
    rng = np.random.default_rng(6)
    reference = rng.uniform(-1000.0, 1000.0, (40, 40))  # most pixels lie outside the window
    restored = reference.copy()
    restored[reference < -160] = -600.0  # wrong, but below the window in both
    restored[reference > 240] = 900.0  # wrong, but above the window in both
    same = evaluate_physical(restored, reference, "ct")
    assert np.isinf(same["psnr"]) and same["ssim"] == pytest.approx(1.0) and same["rmse"] == 0.0
    unwindowed = evaluate_physical(restored, reference, "ct", window=(-np.inf, np.inf))
    assert np.isfinite(unwindowed["psnr"]) and unwindowed["rmse"] > 100

    noisy = reference + rng.normal(0.0, 30.0, reference.shape)
    got = evaluate_physical(torch.from_numpy(noisy), torch.from_numpy(reference), "ct")
    a, b = np.clip(noisy, -160, 240), np.clip(reference, -160, 240)
    mse = np.mean((a - b) ** 2)
    assert b.max() - b.min() == 400.0  # the label range is the window's here
    assert float(got["psnr"]) == pytest.approx(10 * np.log10(400.0**2 / mse), rel=1e-12)
    assert float(got["rmse"]) == pytest.approx(np.sqrt(mse), rel=1e-12)
    assert float(got["ssim"]) == pytest.approx(ssim(a, b, 400.0, boundary="zero"), rel=1e-12)


def test_mri_and_pet_are_clipped_to_their_whole_range():
    x, y = _pair((16, 16), seed=7, scale=30.0, offset=-5.0)  # below 0 and above 20 SUV
    got = evaluate_physical(x, y, "pet")
    a, b = np.clip(x, 0, 20), np.clip(y, 0, 20)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), rel=1e-12)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(b, a, data_range=b.max() - b.min()), rel=1e-12)
    x, y = _pair((16, 16), seed=8, scale=6000.0)
    got = evaluate_physical(x, y, "mri")
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((np.clip(x, 0, 4095) - np.clip(y, 0, 4095)) ** 2)))


def test_data_range_is_each_labels_own_range():
    """A batch whose images have different ranges: each image uses its own label's max - min."""
    x1, y1 = _pair((24, 24), seed=9, scale=1000.0)
    x2, y2 = _pair((24, 24), seed=10, scale=4000.0)
    batch = evaluate_physical(np.stack([x1, x2]), np.stack([y1, y2]), "mri")
    for k, (x, y) in enumerate(((x1, y1), (x2, y2))):
        a, b = np.clip(x, 0, 4095), np.clip(y, 0, 4095)
        own = b.max() - b.min()
        assert batch["psnr"][k] == pytest.approx(peak_signal_noise_ratio(b, a, data_range=own), rel=1e-12)
        assert batch["ssim"][k] == pytest.approx(ssim(a, b, own, boundary="zero"), rel=1e-12)
    common = np.clip(np.stack([y1, y2]), 0, 4095)
    common_range = common.max() - common.min()
    assert batch["psnr"][0] != pytest.approx(psnr(np.clip(x1, 0, 4095), np.clip(y1, 0, 4095), common_range))


def test_fixed_data_range():
    x, y = _pair((20, 20), seed=11, scale=100.0, offset=-50.0)
    got = evaluate_physical(x, y, "ct", data_range=400.0)
    assert got["psnr"] == pytest.approx(10 * np.log10(400.0**2 / np.mean((x - y) ** 2)), rel=1e-12)
    assert got["ssim"] == pytest.approx(ssim(x, y, 400.0, boundary="zero"), rel=1e-12)
    per_image = evaluate_physical(np.stack([x, x]), np.stack([y, y]), "ct", data_range=[400.0, 200.0])
    assert per_image["psnr"][0] - per_image["psnr"][1] == pytest.approx(20 * np.log10(2.0), rel=1e-12)


def test_flat_label_gives_nan_psnr_and_ssim_and_a_finite_rmse():
    """A CT slice of air only is flat after windowing: no label range to measure against."""
    reference = np.full((2, 16, 16), -1000.0)
    restored = np.random.default_rng(12).uniform(-400.0, 400.0, reference.shape)
    got = evaluate_physical(restored, reference, "ct")
    assert np.isnan(got["psnr"]).all() and np.isnan(got["ssim"]).all()
    assert (got["rmse"] > 100).all()
    expected_rmse = np.sqrt(np.mean((np.clip(restored, -160, 240) + 160.0) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(got["rmse"], expected_rmse, rtol=1e-12)


def test_torch_and_numpy_agree_and_batches_equal_single_images():
    x, y = _pair((3, 1, 30, 26), seed=13, scale=400.0, offset=-160.0)
    ranges = [300.0, 350.0, 400.0]
    for fn, extra in ((psnr, (ranges,)), (ssim, (ranges,)), (rmse, ())):
        as_numpy = fn(x, y, *extra)
        as_torch = fn(torch.from_numpy(x).float(), torch.from_numpy(y).float(), *(torch.tensor(e) for e in extra))
        assert as_numpy.shape == (3,) and tuple(as_torch.shape) == (3,)
        np.testing.assert_allclose(as_torch.numpy(), fn(x.astype(np.float32), y.astype(np.float32), *extra),
                                   rtol=1e-12)
        np.testing.assert_allclose(as_torch.numpy(), as_numpy, rtol=1e-5)  # float32 inputs
        singles = [fn(x[k, 0], y[k, 0], *(e[k] for e in extra)) for k in range(3)]
        assert all(np.ndim(s) == 0 for s in singles)
        np.testing.assert_allclose(as_numpy, singles, rtol=1e-13)
        np.testing.assert_allclose(fn(x[:, 0], y[:, 0], *extra), as_numpy, rtol=1e-13)
    protocol = evaluate_physical(torch.from_numpy(x), torch.from_numpy(y), "ct")
    for k in range(3):
        single = evaluate_physical(x[k], y[k], "ct")
        for key in ("psnr", "ssim", "rmse"):
            assert float(protocol[key][k]) == pytest.approx(single[key], rel=1e-13), key


def test_evaluate_normalized_maps_back_to_physical_units_first():
    x, y = _pair((2, 20, 20), seed=14, noise=0.05)  # network range, about [0, 1]
    ct = get_convention("ct")
    expected = evaluate_physical(ct.denormalize(x), ct.denormalize(y), "ct")
    card_entry = {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}
    for spec in ("ct", ct, card_entry):
        got = evaluate_normalized(torch.from_numpy(x), torch.from_numpy(y), spec)
        for key in expected:
            np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=1e-10)
    narrow = evaluate_normalized(x, y, {"norm_range": [0.0, 10.0], "eval_window": [2.0, 5.0]})
    np.testing.assert_allclose(narrow["rmse"], np.sqrt(np.mean((np.clip(10 * x, 2, 5) - np.clip(10 * y, 2, 5)) ** 2,
                                                              axis=(1, 2))), rtol=1e-12)


def test_conventions_from_model_cards():
    conv = ModalityConvention.from_card({"eval_window": [-100, 100]}, name="ct")  # the rest from CT's defaults
    assert conv.name == "ct" and conv.eval_window == (-100.0, 100.0) and conv.norm_range == (-1024.0, 3072.0)
    with pytest.raises(ValueError, match="lacks norm_range"):
        ModalityConvention.from_card({"eval_window": [0, 1]}, name="ultrasound")
    with pytest.raises(ValueError, match="low < high"):
        ModalityConvention.from_card({"eval_window": [1, 0], "norm_range": [0, 1]})


def test_bad_inputs_are_refused():
    x = np.zeros((16, 16))
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x, np.zeros((16, 15)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        psnr(x, x, -1.0)
    with pytest.raises(ValueError, match="one value per image"):
        psnr(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)), 1.0)
    with pytest.raises(ValueError, match="boundary"):
        ssim(x, x, 1.0, boundary="reflect")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        rmse(np.zeros((1, 3, 16, 16)), np.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="'label' or a number"):
        evaluate_physical(x, x, "ct", data_range="max")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_cpu_values():
    x, y = _pair((2, 1, 64, 64), seed=15, scale=400.0, offset=-160.0)
    cpu = evaluate_physical(torch.from_numpy(x), torch.from_numpy(y), "ct")
    gpu = evaluate_physical(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), "ct")
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-12, atol=0)
