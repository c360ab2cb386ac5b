"""Scans as scanners and converters hand them over, restored with the shipped models in their own units:
MR at any stored scale, PET in Bq/ml, CT with metal, and MRI x4 of a real low-resolution acquisition."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import restore_rwkv
import restore_rwkv.data.io as io
from restore_rwkv.cli import main
from restore_rwkv.models.card import load_model
from restore_rwkv.physics import LowDoseCT, zero_fill
from tests.data.conftest import make_pet_series


def _real_mr_volume() -> np.ndarray:
    """A real MR volume (pydicom's enhanced MR head, 10 x 64 x 64), times 6: stored values up to 2,802."""
    return pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array.astype(np.float32) * 6.0


def test_the_shipped_mri_model_is_scale_equivariant():
    """restore(a x) = a restore(x): the MR policy fits its scale on the volume, so the network sees the same
    values whatever the scanner's units (before, x8 clipped everything above 4095 and x0.2 lost contrast)."""
    volume = _real_mr_volume()
    restored = restore_rwkv.restore_array(volume, "mri_sr_x4_light", device="cpu")
    assert np.abs(restored - volume).max() > 1.0  # the model changed the image: the comparison means something
    for factor in (0.2, 8.0):
        scaled = restore_rwkv.restore_array(volume * np.float32(factor), "mri_sr_x4_light", device="cpu")
        if factor == 8.0:
            assert (volume * factor).max() > 20_000
        np.testing.assert_allclose(scaled / factor, restored, rtol=1e-3, atol=1e-3 * float(np.abs(restored).max()))


def test_pet_in_bq_per_ml_restores_like_its_suv_and_is_written_back_in_bq_per_ml(tmp_path, capsys):
    rng = np.random.default_rng(0)
    suv = np.zeros((3, 48, 48), np.float64)
    yy, xx = np.mgrid[:48, :48]
    suv[:, (yy - 24) ** 2 + (xx - 24) ** 2 < 18 ** 2] = 1.5  # body
    suv[:, (yy - 20) ** 2 + (xx - 28) ** 2 < 4 ** 2] = 8.0  # a hot spot of SUV 8
    suv += rng.normal(0.0, 0.3, suv.shape) * (suv > 0)
    decayed = 370e6 * 0.5 ** (3600 / 6586.2)  # 370 MBq of F-18 injected an hour before the series
    bq_per_suv = decayed / 75_000.0  # Bq/ml per SUV for 75 kg
    stored = np.rint(np.clip(suv, 0, None) * bq_per_suv / 5.0).astype(np.int16)  # slope 5 Bq/ml
    make_pet_series(tmp_path / "pet", weight=75.0, stored=stored, slope=5.0)
    volume, meta = io.read_image(tmp_path / "pet")
    assert volume.max() > 25_000  # Bq/ml: far outside the SUV range [0, 20] the model normalises over
    assert main(["restore", str(tmp_path / "pet"), "--weights", "pet_synthesis_light", "-o", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu"]) == 0
    restored, out_meta = io.read_image(tmp_path / "out")
    expected = restore_rwkv.restore_array(volume / bq_per_suv, "pet_synthesis_light", device="cpu")  # given in SUV
    np.testing.assert_allclose(restored / bq_per_suv, expected, rtol=1e-3, atol=1e-3 * float(expected.max()))
    assert np.abs(expected - volume / bq_per_suv).max() > 0.1  # the model did restore
    for ds in out_meta.datasets:  # Bq/ml again, with a rescale that holds the values
        assert ds.Units == "BQML" and float(ds.RescaleSlope) > 0
    assert "SUVbw" in capsys.readouterr().out

    make_pet_series(tmp_path / "counts", units="CNTS", stored=stored, slope=5.0)
    assert main(["restore", str(tmp_path / "counts"), "--weights", "pet_synthesis_light", "-o",
                 str(tmp_path / "out2"), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "counts") in err[0] and "CNTS" in err[0] and "--pet-scale" in err[0]
    assert not (tmp_path / "out2").exists()
    # with the factor given, counts restore like the same activity in SUV
    assert main(["restore", str(tmp_path / "counts"), "--weights", "pet_synthesis_light", "-o",
                 str(tmp_path / "out3"), "--quiet", "--device", "cpu", "--pet-scale", str(bq_per_suv)]) == 0
    np.testing.assert_allclose(io.read_image(tmp_path / "out3")[0] / bq_per_suv, expected, rtol=1e-3,
                               atol=1e-3 * float(expected.max()))


def test_pet_arrays_name_their_units():
    volume = np.full((2, 32, 32), 3.0, np.float32)
    with pytest.raises(restore_rwkv.utils.errors.InputError, match="Bq/ml without a DICOM header"):
        restore_rwkv.restore_array(volume * 5000, "pet_synthesis_light", units="Bq/ml", device="cpu")
    in_suv = restore_rwkv.restore_array(volume, "pet_synthesis_light", device="cpu")
    given = restore_rwkv.restore_array(volume * 5000, "pet_synthesis_light", units="Bq/ml", scale=5000, device="cpu")
    np.testing.assert_allclose(given / 5000, in_suv, rtol=1e-5, atol=1e-6)


def _noisy_ct(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A real head CT slice (pydicom's J2K test file, the demo's CT test patient; HU) at quarter dose with an
    8000 HU metal insert, written as a plain DICOM file: the file, its HU and the full-dose reference."""
    from pydicom.uid import ExplicitVRLittleEndian

    from restore_rwkv.demo.recipe import CT_TEST, package_file

    source = package_file(CT_TEST[0].package, *CT_TEST[0].parts)
    ds = pydicom.dcmread(source)
    hq = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hq = np.maximum(hq, -1024.0)
    lq = LowDoseCT(dose_fraction=0.25, pixel_size_mm=float(ds.PixelSpacing[0]))(hq, seed=3)
    for image in (hq, lq):
        image[330:342, 250:262] = 8000.0  # in the brain, away from bone
    ds.PixelData = np.rint((lq - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)).astype(np.int16).tobytes()
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    return path, io.read_image(path)[0], hq


def test_a_metal_insert_keeps_its_hu_and_the_tissue_around_it_is_denoised(tmp_path, capsys):
    from restore_rwkv.modality import OUTSIDE_BLEND

    path, lq, hq = _noisy_ct(tmp_path)
    assert main(["restore", str(path), "--weights", "ct_denoise_light", "-o", str(tmp_path / "out.dcm"), "--quiet",
                 "--device", "cpu"]) == 0
    outside = int(((lq > 3072) | (lq < -1500)).sum())  # the insert (CT noise in air, above -1500 HU, is restored)
    assert outside == 144 and f"{outside} voxel(s) outside" in capsys.readouterr().out
    restored = io.read_image(tmp_path / "out.dcm")[0]
    assert (restored[330:342, 250:262] == 8000).all()  # before: clipped to the 3072 HU of the range, 3061 came back
    away = np.ones(hq.shape, bool)
    away[330 - OUTSIDE_BLEND:342 + OUTSIDE_BLEND, 250 - OUTSIDE_BLEND:262 + OUTSIDE_BLEND] = False
    tissue = away & (hq > -200) & (hq < 300)  # soft tissue, away from the insert and its blend
    air = away & (hq < -900)  # air, its noise below -1024 HU included
    for region in (tissue, air):
        before = np.sqrt(np.mean((lq[region] - hq[region]) ** 2))
        after = np.sqrt(np.mean((restored[region] - hq[region]) ** 2))
        assert after < 0.8 * before, (before, after)


def _mni_slices(count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real 256 x 256 axial MR slices (MNI152 T1, 1 mm) as an (x, y, z) volume, and its affine."""
    from restore_rwkv.demo.recipe import MNI_FILES, package_file

    volume, meta = io.read_nifti_canonical(package_file("nilearn", "datasets", "data", MNI_FILES["t1"]))
    middle = volume.shape[2] // 2
    block = volume[:, :, middle:middle + count]
    hr = np.zeros((256, 256, count), np.float32)
    hr[:block.shape[0], :block.shape[1]] = block[:256, :256]
    return hr, meta.affine


def _low_resolution(hr: np.ndarray) -> np.ndarray:
    """Each slice's centre 64 x 64 of k-space, as the 64 x 64 image a scanner reconstructs from it (magnitude)."""
    spectrum = np.fft.fftshift(np.fft.fft2(hr, axes=(0, 1)), axes=(0, 1))[96:160, 96:160]
    return (np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(0, 1)), axes=(0, 1))) / 16.0).astype(np.float32)


@pytest.mark.parametrize("output", ["out.nii.gz", "out_series"])
def test_upsample_restores_a_real_low_resolution_acquisition_on_the_original_grid(tmp_path, output):
    import SimpleITK as sitk

    hr, affine = _mni_slices()
    affine = affine @ np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm between the slices
    lr = _low_resolution(hr)
    lr_affine = affine @ np.diag([4.0, 4.0, 1.0, 1.0])  # 4 mm pixels; sample i of LR lies on sample 4 i of HR
    nib.save(nib.Nifti1Image(hr, affine), str(tmp_path / "hr.nii.gz"))
    if output == "out.nii.gz":
        source = tmp_path / "lr.nii.gz"
        nib.save(nib.Nifti1Image(lr, lr_affine), str(source))
    else:  # a DICOM series as the scanner writes it
        source = tmp_path / "lr_series"
        io.write_dicom_series(source, lr, io.ImageMeta(affine=lr_affine, space="RAS", slice_axis=2, modality="MR"))
    lr_read = io.read_image(source)[0]
    assert main(["restore", str(source), "--weights", "mri_sr_x4_light", "-o", str(tmp_path / output), "--quiet",
                 "--device", "cpu", "--upsample", "4"]) == 0
    restored, meta = io.read_image(tmp_path / output)
    assert restored.shape == ((256, 256, 3) if output == "out.nii.gz" else (3, 256, 256))

    # every voxel centre where the original 256 x 256 grid has it (SimpleITK, LPS)
    reader = sitk.ImageSeriesReader()
    image = (sitk.ReadImage(str(tmp_path / output)) if output == "out.nii.gz" else
             (reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / output))), reader.Execute())[1])
    original = sitk.ReadImage(str(tmp_path / "hr.nii.gz"))
    got = {tuple(np.round(image.TransformIndexToPhysicalPoint(idx), 3)) for idx in _corners(image.GetSize())}
    want = {tuple(np.round(original.TransformIndexToPhysicalPoint(idx), 3)) for idx in _corners(original.GetSize())}
    assert got == want
    assert np.allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-4)
    assert np.allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-3)

    # the values are those of restoring the zero-filled input on the same grid (zero-filled here with numpy)
    model, card = load_model("mri_sr_x4_light")
    axis = 2 if output == "out.nii.gz" else 0
    small = np.fft.fftshift(np.fft.fft2(np.moveaxis(lr_read, axis, 0).astype(np.float64)), axes=(1, 2))
    padded = np.zeros((small.shape[0], 256, 256), complex)
    padded[:, 96:160, 96:160] = small
    filled = np.abs(np.fft.ifft2(np.fft.ifftshift(padded, axes=(1, 2)))) * 16.0
    np.testing.assert_allclose(filled, zero_fill(np.moveaxis(lr_read, axis, 0).astype(np.float64), 4), atol=1e-9)
    filled = np.moveaxis(filled, 0, axis)
    expected = restore_rwkv.restore_array(filled.astype(np.float32), model=model, card=card, axis=axis, device="cpu")
    tolerance = 1e-4 * float(np.abs(expected).max())
    np.testing.assert_allclose(restored, expected, rtol=0, atol=tolerance)
    if output == "out_series":
        for ds in meta.datasets:
            assert (ds.Rows, ds.Columns) == (256, 256)
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.0, 1.0])
            assert "113085" in [item.CodeValue for item in ds.DerivationCodeSequence]  # spatial resampling


def _corners(size) -> list[tuple[int, ...]]:
    """Index tuples of a grid's corners and centre."""
    picks = [(0, n - 1, n // 2) for n in size]
    return [(int(i), int(j), int(k)) for i in picks[0] for j in picks[1] for k in picks[2]]


def test_upsample_is_for_mr_only(tmp_path, capsys):
    path, _, _ = _noisy_ct(tmp_path)
    assert main(["restore", str(path), "--weights", "ct_denoise_light", "-o", str(tmp_path / "o.dcm"), "--quiet",
                 "--upsample", "2"]) == 2
    assert "zero-fills MR k-space" in capsys.readouterr().err
    assert main(["restore", str(path), "--weights", "ct_denoise_light", "-o", str(tmp_path / "o.dcm"), "--quiet",
                 "--upsample", "0"]) == 2
    assert not (tmp_path / "o.dcm").exists()


def test_pet_scale_touches_only_pet_inputs_of_a_batch(tmp_path):
    """A batch mixing CT and PET: --pet-scale converts the PET file and leaves the CT's HU alone."""
    path, lq, _ = _noisy_ct(tmp_path)
    make_pet_series(tmp_path / "pet", units="CNTS", slope=5.0)
    assert main(["restore", str(path), str(tmp_path / "pet"), "--weights", "all_in_one_light", "-o",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu", "--pet-scale", "3000"]) == 0
    alone = tmp_path / "alone.dcm"
    assert main(["restore", str(path), "--weights", "all_in_one_light", "-o", str(alone), "--quiet",
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(io.read_image(tmp_path / "out" / "ct.dcm")[0], io.read_image(alone)[0])
    assert (tmp_path / "out" / "pet").is_dir()
