"""A restored DICOM series is a derived series as PS3.3 describes one, in its source's study, readable by
SimpleITK with the source's geometry; a restore that cannot be written leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch

import restore_rwkv.data.io as io
from restore_rwkv import __version__
from restore_rwkv.cli import main
from restore_rwkv.models.card import ModelCard, save_model_with_card
from restore_rwkv.models.registry import create_model
from tests.data.conftest import make_ct_series

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)


@pytest.fixture
def identity_weights(tmp_path):
    model = create_model("restore_rwkv_light", **TINY).eval()
    with torch.no_grad():  # the global residual then returns the input
        model.output.weight.zero_()
        model.output.bias.zero_()
    card = ModelCard(model="restore_rwkv_light", task="ct_denoise", model_args=TINY,
                     conventions={"ct": {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}})
    return save_model_with_card(model, tmp_path / "weights" / "ct_model.safetensors", card)


def _study(tmp_path):
    """A study on disk: the series to restore (number 3, lossy history, a private tag, burned-in flag) and a
    second series in its folder (1003); a third series of the same study in the folder beside it (2003)."""
    study = pydicom.uid.generate_uid()

    def source(ds, k):
        ds.StudyInstanceUID, ds.SeriesNumber = study, 3
        ds.LossyImageCompression, ds.LossyImageCompressionRatio = "01", "8.5"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.BurnedInAnnotation = "NO"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.add_new(0x00291010, "OB", b"vendor pixel statistics")  # a private element
        ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "LO", "scaled by 2")

    def sibling(number):
        def edit(ds, k):
            ds.StudyInstanceUID, ds.SeriesNumber = study, number
        return edit

    hu = make_ct_series(tmp_path / "study" / "ct", slices=4, rows=24, cols=20, edit=source, file_prefix="a")
    make_ct_series(tmp_path / "study" / "ct", slices=2, rows=24, cols=20, edit=sibling(1003), file_prefix="b")
    make_ct_series(tmp_path / "study" / "other", slices=2, rows=24, cols=20, edit=sibling(2003))
    return hu


def test_a_restored_series_is_a_conformant_derived_series(tmp_path, identity_weights):
    import SimpleITK as sitk

    _study(tmp_path)
    folder = tmp_path / "study" / "ct"
    uid = next(u for u, files in io.list_dicom_series(folder).items() if len(files) == 4)
    started = dt.datetime.now() - dt.timedelta(seconds=2)
    assert main(["restore", str(folder), "--series-uid", uid, "--weights", str(identity_weights), "-o",
                 str(tmp_path / "study" / "restored"), "--quiet", "--device", "cpu"]) == 0
    source, source_meta = io.read_image(folder, series_uid=uid)
    restored, meta = io.read_image(tmp_path / "study" / "restored")
    np.testing.assert_array_equal(restored, source)  # identity: the values survive the rescale

    sources = {(ds.SOPClassUID, ds.SOPInstanceUID) for ds in source_meta.datasets}
    referenced = set()
    for k, (before, path) in enumerate(zip(source_meta.datasets, meta.extra["files"])):
        ds = pydicom.dcmread(path)
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]  # the source's further values kept
        assert ds.SeriesInstanceUID != before.SeriesInstanceUID and ds.SOPInstanceUID != before.SOPInstanceUID
        assert ds.StudyInstanceUID == before.StudyInstanceUID  # beside its source, in the same study
        assert ds.FrameOfReferenceUID == before.FrameOfReferenceUID if "FrameOfReferenceUID" in before else True
        assert int(ds.SeriesNumber) == 3003  # 3 + 1000 k: 1003 (same folder) and 2003 (folder beside) are taken
        assert ds.SeriesDescription == "full dose (restored by restore-rwkv ct_model)"
        assert "ct_model" in ds.DerivationDescription and "restore-rwkv" in ds.DerivationDescription
        codes = [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in ds.DerivationCodeSequence]
        assert codes == [("110001", "DCM", "Image Processing")]
        (reference,) = ds.SourceImageSequence
        referenced.add((reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID))
        assert reference.ReferencedSOPInstanceUID == before.SOPInstanceUID  # each slice points at its own source
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert (ds.LossyImageCompression, ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod) == \
            ("01", "8.5", "ISO_10918_1")
        assert ds.BurnedInAnnotation == "NO"
        assert ds.SoftwareVersions == f"restore-rwkv {__version__}"
        made = dt.datetime.strptime(ds.ContentDate + ds.ContentTime.split(".")[0], "%Y%m%d%H%M%S")
        assert started <= made <= dt.datetime.now()
        assert not any(element.tag.is_private for element in ds)  # the stated rule: private elements removed
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        stored = ds.pixel_array.astype(np.float64)
        info = np.iinfo(np.int16 if ds.PixelRepresentation else np.uint16)
        assert info.min <= stored.min() and stored.max() <= info.max and slope > 0
        np.testing.assert_array_equal(stored * slope + intercept, restored[k])  # the rescale holds the values
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert referenced == sources

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "study" / "restored")))
    image = reader.Execute()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    original = reader.Execute()
    assert image.GetSize() == original.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))


def test_a_lossy_source_file_marks_its_derivative_lossy(tmp_path):
    """A source stored with a lossy transfer syntax but no LossyImageCompression still makes the derived image 01."""
    from restore_rwkv.data.io.dicom import derive_dataset

    make_ct_series(tmp_path / "ct", slices=1, rows=8, cols=8)
    header = pydicom.dcmread(next((tmp_path / "ct").iterdir()))
    header.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    derived = derive_dataset(header, np.zeros((8, 8)), pydicom.uid.generate_uid(), "restored")
    assert (derived.LossyImageCompression, derived.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, identity_weights):
    """Writing stops with EFBIG (a file-size limit, like a full disk: no file may grow beyond 20 kB) at the
    first restored slice (32 kB), after the staged folder and the parent folders were made."""
    make_ct_series(tmp_path / "ct", slices=3, rows=128, cols=128)
    target = tmp_path / "new" / "deeper" / "restored"
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
              "from restore_rwkv.cli import main; "
              f"sys.exit(main(['restore', {str(tmp_path / 'ct')!r}, '--weights', {str(identity_weights)!r}, "
              f"'-o', {str(target)!r}, '--quiet', '--device', 'cpu']))")
    env = {**os.environ, "RESTORE_RWKV_NO_NATIVE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "File too large" in lines[0], lines
    assert not (tmp_path / "new").exists()  # no output, no staged folder, no parent folder it made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "weights"]


def test_a_derived_enhanced_object_drops_what_described_the_source_pixels(tmp_path):
    """Frame types say DERIVED; a thumbnail, a modality LUT, signatures, overlays of another size and a real-world
    value mapping of stored values that no longer hold are removed; the processing equipment is recorded."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from restore_rwkv.data.io.dicom import Derivation, derive_dataset, with_pixel_grid
    from tests.data.conftest import make_enhanced_ct

    make_ct_series(tmp_path / "ct", slices=3, rows=8, cols=10)
    make_enhanced_ct(tmp_path / "ct", tmp_path / "enhanced.dcm")
    header = pydicom.dcmread(tmp_path / "enhanced.dcm", stop_before_pixels=True)
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    header.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence = Sequence([frame_type])
    header.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    header.IconImageSequence = Sequence([Dataset()])
    header.RealWorldValueMappingSequence = Sequence([Dataset()])
    header.DigitalSignaturesSequence = Sequence([Dataset()])
    header.add_new(0x60000010, "US", 8)  # an overlay plane of the source's size
    header.add_new(0x60000011, "US", 10)
    derivation = Derivation(label="restored", description="by a test", software="restore-rwkv 9.9")
    same = derive_dataset(header, np.zeros((3, 8, 10)), pydicom.uid.generate_uid(), derivation)
    frame = same.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0]
    assert list(frame.FrameType) == ["DERIVED", "SECONDARY", "AXIAL", "NONE"]
    assert list(same.ImageType) == ["DERIVED", "SECONDARY", "AXIAL", "NONE"]
    for keyword in ("IconImageSequence", "DigitalSignaturesSequence"):
        assert keyword not in same
    assert "RealWorldValueMappingSequence" in same  # the source's rescale still holds these values
    assert (0x6000, 0x0010) in same  # the overlay still fits the image
    (equipment,) = same.ContributingEquipmentSequence
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert equipment.SoftwareVersions == "restore-rwkv 9.9" and equipment.ContributionDescription == "by a test"
    finer = derive_dataset(with_pixel_grid(header, 2), np.full((3, 16, 20), 2.0e5), pydicom.uid.generate_uid(),
                           derivation)
    assert "RealWorldValueMappingSequence" not in finer  # a new rescale: the mapping of old stored values is gone
    assert not any(tag.group == 0x6000 for tag in finer.keys())  # an 8 x 10 overlay on a 16 x 20 image is gone
    spacing = finer.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.35, 0.4])
