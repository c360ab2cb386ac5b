"""Readers and writers: round trips that keep geometry, DICOM order and HU, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from restore_rwkv.data import io
from restore_rwkv.utils.errors import InputError


def test_nifti_affine_header_and_dtype_survive(tmp_path):
    import nibabel as nib

    affine = np.array([[-0.9, 0.1, 0, 90], [0.05, 0.94, 0, -120], [0, 0, 1.2, -60], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"ixi-like test"
    image.header.set_xyzt_units("mm", "sec")
    src = tmp_path / "in.nii.gz"
    nib.save(image, src)
    array, meta = io.read_image(src)
    assert array.dtype == np.int16 and np.array_equal(array, data)
    out = io.write_nifti(tmp_path / "out.nii.gz", array, meta)
    again, meta2 = io.read_image(out)
    assert np.array_equal(again, data) and again.dtype == np.int16
    assert np.allclose(meta2.affine, meta.affine)
    assert meta2.header["descrip"] == meta.header["descrip"]
    assert meta2.header.get_xyzt_units() == ("mm", "sec")
    assert meta2.spacing == pytest.approx(meta.spacing)
    # a float output written with the input's metadata keeps the geometry and takes the new dtype
    io.write_nifti(tmp_path / "restored.nii.gz", array.astype(np.float32) * 0.5, meta)
    restored, meta3 = io.read_image(tmp_path / "restored.nii.gz")
    assert restored.dtype == np.float32 and np.allclose(meta3.affine, affine)


def test_dicom_series_is_read_in_spatial_order_and_in_hu(ct_series):
    folder, hu = ct_series
    volume, meta = io.read_image(folder)
    assert volume.shape == hu.shape
    assert np.array_equal(volume, hu)  # z-sorted, rescaled (stored + intercept)
    assert meta.slice_axis == 0 and meta.modality == "CT"
    assert meta.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert meta.extra["positions"] == sorted(meta.extra["positions"])
    # the affine maps index (k, i, j) to LPS: slice step along z, rows along y, columns along x
    assert np.allclose(meta.affine @ [1, 2, 3, 1], [-100 + 3 * 0.8, -120 + 2 * 0.7, -50 + 2.5, 1])


def test_derived_dicom_series_has_new_uids_and_keeps_patient_and_geometry(ct_series, tmp_path):
    folder, hu = ct_series
    volume, meta = io.read_image(folder)
    restored = volume * 0.5 + 10.25
    out = io.write_dicom_series(tmp_path / "restored", restored, meta)
    again, meta2 = io.read_image(out)
    assert np.allclose(again, restored, atol=0.5 + 1e-6)  # 16-bit storage rounds to the rescale slope
    for before, after in zip(meta.datasets, meta2.datasets):
        assert after.SeriesInstanceUID != before.SeriesInstanceUID
        assert after.SOPInstanceUID != before.SOPInstanceUID
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert list(after.ImageType)[0] == "DERIVED"
        assert "restored" in after.SeriesDescription
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "ImagePositionPatient",
                    "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            assert after.get(tag) == before.get(tag), tag
    assert len({ds.SeriesInstanceUID for ds in meta2.datasets}) == 1
    assert np.allclose(meta2.affine, meta.affine)


def test_derived_series_with_a_wide_range_gets_a_new_rescale(ct_series, tmp_path):
    folder, _ = ct_series
    volume, meta = io.read_image(folder)
    wide = np.linspace(-5e4, 9e4, volume.size).reshape(volume.shape)
    again, _ = io.read_image(io.write_dicom_series(tmp_path / "wide", wide, meta))
    assert np.allclose(again, wide, atol=(1.4e5 / 65535) * 0.51)


def test_dicom_writer_refuses_half_written_output(ct_series, tmp_path):
    folder, _ = ct_series
    volume, meta = io.read_image(folder)
    bad = volume.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        io.write_dicom_series(tmp_path / "out", bad, meta)
    with pytest.raises(InputError, match="slice"):
        io.write_dicom_series(tmp_path / "out", volume[:2], meta)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(InputError, match="not empty|input"):
        io.write_dicom_series(folder, volume, meta)


@pytest.mark.parametrize("suffix,dtype", [(".png", np.uint16), (".png", np.uint8), (".tif", np.uint16),
                                          (".tiff", np.float32)])
def test_pictures_keep_their_values(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    data = (rng.random((17, 23)) * high).astype(dtype)
    data.flat[0] = high  # the extreme value survives
    path = io.write_image(tmp_path / f"x{suffix}", data)
    again, meta = io.read_image(path)
    assert again.dtype == dtype and np.array_equal(again, data)


def test_itk_round_trip_keeps_spacing_origin_direction(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((1.0, -2.0, 3.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    for suffix in (".mha", ".nrrd"):
        src = tmp_path / f"in{suffix}"
        sitk.WriteImage(image, str(src))
        array, meta = io.read_image(src)
        assert np.array_equal(array, data) and meta.spacing == pytest.approx((2.0, 0.7, 0.5))
        out = io.write_image(tmp_path / f"out{suffix}", array, meta)
        again, meta2 = io.read_image(out)
        assert np.array_equal(again, data)
        written = sitk.ReadImage(str(out))  # SimpleITK's own view of what we wrote
        assert written.GetOrigin() == pytest.approx(image.GetOrigin())
        assert written.GetDirection() == pytest.approx(image.GetDirection())
        assert written.GetSpacing() == pytest.approx(image.GetSpacing())
        assert np.allclose(meta2.affine, meta.affine) and meta2.space == "LPS"


def test_arrays_and_preview(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(io.read_image(io.write_image(tmp_path / "a.npy", data))[0], data)
    assert np.array_equal(io.read_image(io.write_image(tmp_path / "a.npz", data))[0], data)
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    preview, _ = io.read_image(io.write_preview(tmp_path / "p.png", hu, "ct"))
    assert preview.tolist() == [[0, 0, 128, 255, 255]]


def test_writers_never_replace_the_input(tmp_path):
    data = np.ones((3, 3), np.float32)
    path = io.write_image(tmp_path / "a.npy", data)
    _, meta = io.read_image(path)
    with pytest.raises(InputError, match="overwrite the input"):
        io.write_image(path, data * 2, meta)
    assert np.array_equal(np.load(path), data)


# ----------------------------------------------------------------------------- bad inputs
def test_truncated_dicom(tmp_path, ct_series):
    folder, _ = ct_series
    src = sorted(folder.iterdir())[0]
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(src.read_bytes()[:-60])
    with pytest.raises(InputError) as err:
        io.read_image(broken)
    assert str(broken) in str(err.value) and "\n" not in str(err.value)


def test_non_image_dicom_objects_are_refused():
    from pydicom.data import get_testdata_file

    for name, problem in (("rtstruct.dcm", "not an image"), ("rtdose.dcm", "not an image")):
        path = get_testdata_file(name)
        with pytest.raises(InputError, match=problem) as err:
            io.read_image(path)
        assert name in str(err.value)


def test_compressed_dicom_with_an_available_decoder():
    from pydicom.data import get_testdata_file

    plain, _ = io.read_image(get_testdata_file("MR_small.dcm"))
    rle, _ = io.read_image(get_testdata_file("MR_small_RLE.dcm"))
    assert np.array_equal(plain, rle)


def test_missing_empty_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM image files"):
        io.read_image(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported"):
        io.read_image(tmp_path / "notes.txt")
    (tmp_path / "fake.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="NIfTI"):
        io.read_image(tmp_path / "fake.nii.gz")


def test_series_folder_with_two_series(tmp_path, series_factory):
    series_factory(tmp_path / "mixed", seed=1)
    series_factory(tmp_path / "other", seed=2)
    for p in (tmp_path / "other").iterdir():
        shutil.move(str(p), tmp_path / "mixed" / f"b_{p.name}")
    with pytest.raises(InputError, match="2 DICOM series"):
        io.read_image(tmp_path / "mixed")


def test_reference_bin_needs_explicit_opt_in(tmp_path):
    import pickle

    path = tmp_path / "slice.bin"
    path.write_bytes(pickle.dumps(np.eye(3, dtype=np.float32)))
    with pytest.raises(InputError, match="pickle"):
        io.read_image(path)
    array, meta = io.read_image(path, allow_pickle=True)
    assert np.array_equal(array, np.eye(3)) and meta.format == "bin"


def test_one_registry_reads_and_writes_every_suffix(tmp_path):
    pytest.importorskip("SimpleITK")
    data = (np.arange(4 * 5 * 6) % 251).reshape(4, 5, 6).astype(np.uint16)
    written = []
    for fmt in io.FORMATS:
        for suffix in fmt.suffixes:
            assert io.is_image_file(f"x{suffix.upper()}") == (fmt.name != "reference-bin")
            assert io.format_of(f"scan{suffix}") is fmt
            if fmt.writer is None or fmt.name == "dicom" or suffix == ".png":
                continue  # DICOM files derive from a DICOM header (tested elsewhere); PNG is 2-D
            path = io.write_image(tmp_path / f"image{suffix}", data)
            again, meta = io.read_image(path)
            assert np.array_equal(np.asarray(again, dtype=np.uint16), data), suffix
            written.append(suffix)
    assert sorted(written) == sorted([".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".tif", ".tiff",
                                      ".npy", ".npz"])
    # pair_folders and preparers scan with the same table: MetaImage headers and .dicom files count
    assert io.is_image_file("a.mhd") and io.is_image_file("b.nhdr") and io.is_image_file("c.dicom")
    assert not io.is_image_file("notes.txt") and not io.is_image_file("slice.bin")
