"""DICOM series that must be refused or placed exactly, derived tags that stay consistent, multi-frame objects."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from restore_rwkv.data import io
from restore_rwkv.utils.errors import InputError
from tests.data.conftest import files_by_z as _files_by_z
from tests.data.conftest import make_ct_series
from tests.data.conftest import make_enhanced_ct as _enhanced_ct


def test_series_with_a_missing_slice_is_refused(tmp_path):
    folder = tmp_path / "gap"
    make_ct_series(folder, slices=6)
    _files_by_z(folder)[3].unlink()  # z = -42.5 is gone: a 5 mm step among 2.5 mm steps
    with pytest.raises(InputError, match="not evenly spaced") as err:
        io.read_image(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_every_slice_sits_at_its_own_position(tmp_path):
    folder = tmp_path / "series"
    make_ct_series(folder, slices=6, dz=-1.25, z0=10.0)  # positions run downwards in slice order
    volume, meta = io.read_image(folder)
    import pydicom

    for k, path in enumerate(meta.extra["files"]):
        position = np.asarray(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)
        assert np.allclose(meta.affine @ [k, 0, 0, 1], [*position, 1])


def test_one_slice_without_a_position_is_refused(tmp_path):
    folder = tmp_path / "series"
    make_ct_series(folder, slices=4, edit=lambda ds, k: delattr(ds, "ImagePositionPatient") if k == 2 else None)
    with pytest.raises(InputError, match="no ImagePositionPatient"):
        io.read_image(folder)


def test_series_without_any_geometry_has_no_affine_and_no_millimetres(tmp_path):
    def strip(ds, k):
        del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.SliceThickness

    folder = tmp_path / "series"
    hu = make_ct_series(folder, slices=4, edit=strip)
    volume, meta = io.read_image(folder)
    assert meta.affine is None and meta.extra["positions"] is None
    assert meta.spacing is None  # instance numbers are not millimetres
    assert np.array_equal(volume, hu[::-1])  # InstanceNumber order (the fixture numbers slices downwards)


@pytest.mark.parametrize("positions", [[(-100.0, -120.0, z) for z in (0.0, 2.5, 2.5, 5.0)],
                                       [(-100.0, -120.0, 1.0)] * 4])
def test_slices_sharing_a_position_are_refused(tmp_path, positions):
    folder = tmp_path / "series"
    make_ct_series(folder, slices=4, positions=positions)
    with pytest.raises(InputError, match="two slices at one position"):
        io.read_image(folder)


def test_dicomdir_and_non_image_objects_beside_a_series_are_ignored(tmp_path):
    import pydicom.data

    folder = tmp_path / "series"
    hu = make_ct_series(folder, slices=3)
    data = __import__("pathlib").Path(pydicom.data.get_testdata_file("rtstruct.dcm")).parent
    shutil.copy(data / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    shutil.copy(data / "rtstruct.dcm", folder / "rtstruct.dcm")
    volume, meta = io.read_image(folder)
    assert np.array_equal(volume, hu) and len(meta.extra["ignored"]) == 2


def test_several_series_are_listed_and_one_can_be_picked(tmp_path):
    folder = tmp_path / "mixed"
    make_ct_series(folder, slices=3, seed=1, series_uid="1.2.3.4", description="full dose")
    other = make_ct_series(tmp_path / "b", slices=2, seed=2, series_uid="1.2.3.5", description="quarter dose")
    for p in (tmp_path / "b").iterdir():
        shutil.move(str(p), folder / f"b_{p.name}")
    with pytest.raises(InputError, match=r"2 DICOM series \(1\.2\.3\.4 \(3 file\(s\), 'full dose'\); 1\.2\.3\.5"):
        io.read_image(folder)
    volume, _ = io.read_image(folder, series_uid="1.2.3.5")
    assert np.array_equal(volume, other)
    assert {k: len(v) for k, v in io.list_dicom_series(folder).items()} == {"1.2.3.4": 3, "1.2.3.5": 2}


def test_derived_series_keeps_padding_and_window_meaning_the_same_values(tmp_path):
    def tags(ds, k):
        ds.PixelRepresentation = 0  # unsigned storage, padding 0 = -1024 HU
        ds.PixelPaddingValue = 0
        ds.WindowCenter, ds.WindowWidth = 40, 400

    folder = tmp_path / "series"
    make_ct_series(folder, slices=2, edit=tags)
    volume, meta = io.read_image(folder)
    for name, values in (("same_rescale", volume * 0.5), ("new_rescale", np.linspace(-5e4, 9e4, volume.size)
                                                              .reshape(volume.shape))):
        _, meta2 = io.read_image(io.write_dicom_series(tmp_path / name, values, meta))
        for ds in meta2.datasets:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            if "PixelPaddingValue" in ds:
                assert ds.PixelPaddingValue * slope + intercept == pytest.approx(-1024.0), name
                assert ds["PixelPaddingValue"].VR == ("SS" if ds.PixelRepresentation else "US")
            else:
                assert name == "new_rescale"  # -1024 HU has no exact stored value under that rescale
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)


def test_enhanced_multiframe_ct_reads_in_hu_and_writes_back(tmp_path):
    hu = make_ct_series(tmp_path / "series", slices=4)
    series_volume, series_meta = io.read_image(tmp_path / "series")
    _enhanced_ct(tmp_path / "series", tmp_path / "enhanced.dcm")
    volume, meta = io.read_image(tmp_path / "enhanced.dcm")
    assert np.array_equal(volume, hu)  # the functional-group rescale is applied: HU, not stored values
    assert np.allclose(meta.affine, series_meta.affine) and meta.space == "LPS"
    restored = volume * 0.5 - 3.0
    out = io.write_image(tmp_path / "restored.dcm", restored, meta)
    again, meta2 = io.read_image(out)
    assert again.shape == restored.shape and np.abs(again - restored).max() <= 0.5 + 1e-6
    assert np.allclose(meta2.affine, meta.affine)
    ds = meta2.datasets[0]
    assert ds.NumberOfFrames == 4 and list(ds.ImageType)[0] == "DERIVED"
    assert ds.SOPInstanceUID != meta.datasets[0].SOPInstanceUID
    assert ds.SeriesInstanceUID != meta.datasets[0].SeriesInstanceUID
    assert "RescaleSlope" not in ds  # enhanced objects keep their rescale in the functional groups
    # the stored integers under the shared group's rescale are the values read back
    import pydicom

    raw = pydicom.dcmread(out)
    transform = raw.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert np.allclose(raw.pixel_array * float(transform.RescaleSlope) + float(transform.RescaleIntercept), again)


def test_enhanced_multiframe_ct_written_as_a_series_keeps_patient_and_positions(tmp_path):
    make_ct_series(tmp_path / "series", slices=3)
    series_volume, series_meta = io.read_image(tmp_path / "series")
    _enhanced_ct(tmp_path / "series", tmp_path / "enhanced.dcm")
    volume, meta = io.read_image(tmp_path / "enhanced.dcm")
    again, meta2 = io.read_image(io.write_dicom_series(tmp_path / "as_series", volume, meta))
    assert np.array_equal(again, series_volume) and np.allclose(meta2.affine, series_meta.affine)
    for ds in meta2.datasets:
        assert ds.PatientID == "ANON001" and ds.StudyInstanceUID == meta.datasets[0].StudyInstanceUID
        assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
