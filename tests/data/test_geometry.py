"""World geometry across formats, checked against SimpleITK's and nibabel's own reading of the files.

Every voxel of the test images holds a unique value, so each voxel can be found again after a
round trip and its world position (voxel centre, LPS mm) compared with the independent reader's.
"""

from __future__ import annotations

import numpy as np
import pytest

from restore_rwkv.data import io
from tests.data.conftest import make_ct_series, oblique_rotation, sitk_world_by_value, world_by_value

sitk = pytest.importorskip("SimpleITK")
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _oblique_series(folder, slices=5, rows=6, cols=7):
    rotation = oblique_rotation()
    row_cosine, column_cosine = rotation[:, 0], rotation[:, 1]
    normal = np.cross(row_cosine, column_cosine)
    origin = np.array([-80.0, 40.0, -30.0])
    positions = [origin + 2.5 * k * normal for k in range(slices)]
    make_ct_series(folder, slices=slices, rows=rows, cols=cols, unique=True,
                   orientation=[*row_cosine, *column_cosine], positions=positions)


def _sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _nibabel_lps(path):
    import nibabel as nib

    image = nib.load(str(path))
    return np.asarray(image.dataobj), FLIP @ image.affine


def _assert_same_world(ours, reference, atol=1e-3):
    values, world = ours
    ref_values, ref_world = reference
    assert np.array_equal(np.rint(values), np.rint(ref_values))
    assert np.abs(world - ref_world).max() < atol


def test_dicom_series_to_nifti_and_mha_keeps_simpleitks_voxel_positions(tmp_path):
    series = tmp_path / "series"
    _oblique_series(series)
    reference = sitk_world_by_value(_sitk_series(series))
    volume, meta = io.read_image(series)
    assert meta.space == "LPS"
    _assert_same_world(world_by_value(volume, meta.affine), reference)

    nifti = io.write_image(tmp_path / "out.nii.gz", volume, meta)
    _assert_same_world(world_by_value(*_nibabel_lps(nifti)), reference)  # nibabel reads what we wrote
    mha = io.write_image(tmp_path / "out.mha", volume, meta)
    _assert_same_world(sitk_world_by_value(sitk.ReadImage(str(mha))), reference)
    # and our own readers agree with both
    again, meta2 = io.read_image(nifti)
    assert meta2.space == "RAS"
    _assert_same_world(world_by_value(again, meta2.affine_in("LPS")), reference)


def _oblique_nifti(path, shape=(6, 7, 5)):
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, :3] = oblique_rotation() @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [12.0, -30.0, 45.0]
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return data, FLIP @ affine


def test_nifti_to_dicom_series_to_nifti_keeps_world_positions(tmp_path):
    data, affine_lps = _oblique_nifti(tmp_path / "in.nii.gz")
    expected = world_by_value(data, affine_lps)
    volume, meta = io.read_image(tmp_path / "in.nii.gz")
    series = io.write_dicom_series(tmp_path / "series", volume, meta, modality="MR")
    _assert_same_world(sitk_world_by_value(_sitk_series(series)), expected)  # SimpleITK reads our DICOM
    back, back_meta = io.read_image(series)
    _assert_same_world(world_by_value(back, back_meta.affine), expected)
    for k in range(data.shape[2]):  # the series reads back in the volume's slice order
        assert np.array_equal(np.unique(back[k]), np.unique(data[:, :, k]))
    nifti = io.write_image(tmp_path / "back.nii.gz", back, back_meta)
    _assert_same_world(world_by_value(*_nibabel_lps(nifti)), expected)


def test_nifti_to_mha_keeps_world_positions(tmp_path):
    data, affine_lps = _oblique_nifti(tmp_path / "in.nii.gz")
    volume, meta = io.read_image(tmp_path / "in.nii.gz")
    mha = io.write_image(tmp_path / "out.mha", volume, meta)
    _assert_same_world(sitk_world_by_value(sitk.ReadImage(str(mha))), world_by_value(data, affine_lps))
    # NIfTI -> MHA -> NIfTI
    again, meta2 = io.read_image(mha)
    nifti = io.write_image(tmp_path / "again.nii.gz", again, meta2)
    _assert_same_world(world_by_value(*_nibabel_lps(nifti)), world_by_value(data, affine_lps))


def test_single_dicom_slice_to_nifti_and_mha_keeps_positions(tmp_path):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    reference_image = sitk.ReadImage(path)
    ref_values = sitk.GetArrayFromImage(reference_image)[0]
    ref_world = np.asarray([reference_image.TransformIndexToPhysicalPoint([j, i, 0])
                            for i in range(ref_values.shape[0]) for j in range(ref_values.shape[1])])
    image, meta = io.read_image(path)
    assert np.array_equal(image, ref_values)
    assert np.abs(io.voxel_centres(meta.affine, image.shape).reshape(-1, 3) - ref_world).max() < 1e-3
    _, affine = _nibabel_lps(io.write_image(tmp_path / "slice.nii.gz", image, meta))
    assert np.abs(io.voxel_centres(affine, image.shape).reshape(-1, 3) - ref_world).max() < 1e-3
    written = sitk.ReadImage(str(io.write_image(tmp_path / "slice.mha", image, meta)))
    assert written.GetSize()[:2] == reference_image.GetSize()[:2]
    world = np.asarray([written.TransformIndexToPhysicalPoint([j, i, 0])
                        for i in range(ref_values.shape[0]) for j in range(ref_values.shape[1])])
    assert np.abs(world - ref_world).max() < 1e-3


def test_meta_converts_between_ras_and_lps():
    affine = np.eye(4)
    affine[:3, 3] = [10.0, 20.0, 30.0]
    meta = io.ImageMeta(affine=affine, space="RAS")
    lps = meta.affine_in("LPS")
    assert np.allclose(lps[:3, 3], [-10.0, -20.0, 30.0]) and np.allclose(np.diag(lps)[:3], [-1, -1, 1])
    assert np.allclose(meta.affine_in("RAS"), affine)
    with pytest.raises(ValueError, match="space"):
        io.ImageMeta(affine=affine)
