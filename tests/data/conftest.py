"""Synthetic DICOM series and other files for the I/O tests."""

from __future__ import annotations

import numpy as np
import pytest


def make_ct_series(folder, slices: int = 3, rows: int = 8, cols: int = 10, patient: str = "ANON001",
                   z0: float = -50.0, dz: float = 2.5, seed: int = 0, shuffle: bool = True,
                   description: str = "full dose", series_uid: str | None = None, unique: bool = False,
                   orientation=None, positions=None, pixel_spacing=(0.7, 0.8), edit=None, file_prefix: str = "file"):
    """Write a small CT series (int16 stored values, slope 1, intercept -1024) in shuffled file order.

    ``unique`` gives every voxel its own HU value; ``orientation`` (6 direction cosines) and
    ``positions`` (one ImagePositionPatient per slice, in slice order) override the axial
    geometry; ``edit(ds, k)`` may change each dataset before it is saved; files are named
    ``<file_prefix><number>.dcm`` (give two series in one folder different prefixes). Returns the HU volume
    in slice order (ascending z for the default geometry).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), series_uid or generate_uid()
    hu = rng.integers(-1000, 1500, size=(slices, rows, cols)).astype(np.float32)
    if unique:
        hu = (np.arange(slices * rows * cols) - 1000).reshape(slices, rows, cols).astype(np.float32)
    order = rng.permutation(slices) if shuffle else np.arange(slices)
    for file_index, k in enumerate(order):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Test^Patient", patient, "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.SeriesDescription = "CT", description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(slices - k)  # deliberately not the spatial order
        ds.ImagePositionPatient = list(positions[k]) if positions is not None else [-100.0, -120.0, z0 + dz * float(k)]
        ds.ImageOrientationPatient = list(orientation) if orientation is not None else [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()
        if edit is not None:
            edit(ds, k)
        ds.save_as(str(folder / f"{file_prefix}{file_index:03d}.dcm"), enforce_file_format=True)
    return hu


def make_pet_series(folder, units="BQML", weight=70.0, dose=370e6, start="100000", series_time="110000",
                    stored=None, slope=10.0):
    """A small PET series (16 x 16 x 3 unless ``stored`` (slice, row, column) int16 values are given) with the
    header SUV needs: ``units``, weight (kg), injected ``dose`` (Bq) of F-18 at ``start``, the series at
    ``series_time`` (decay-corrected to it), values ``stored * slope`` (Bq/ml for BQML). Returns the stored values."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if stored is None:
        stored = np.zeros((3, 16, 16), np.int16)
        for k in range(3):
            stored[k, 4:12, 4:12] = 500 + 100 * k
    stored = np.asarray(stored, np.int16)

    def pet(ds, k):
        ds.Modality, ds.Units, ds.DecayCorrection = "PT", units, "START"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.SeriesDate, ds.SeriesTime = "20260101", series_time
        if weight:
            ds.PatientWeight = weight
        info = Dataset()
        info.RadionuclideTotalDose, info.RadionuclideHalfLife = dose, 6586.2
        info.RadiopharmaceuticalStartTime = start
        ds.RadiopharmaceuticalInformationSequence = Sequence([info])
        ds.PixelData = stored[k].tobytes()

    make_ct_series(folder, slices=stored.shape[0], rows=stored.shape[1], cols=stored.shape[2], patient="PET1",
                   pixel_spacing=(2.0, 2.0), edit=pet)
    return stored


def files_by_z(folder):
    """The files of a series folder in order of their z position."""
    import pydicom

    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def make_enhanced_ct(series_folder, path):
    """One Enhanced CT object (functional-group geometry and rescale) holding the frames of a plain series."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    files = files_by_z(series_folder)
    slices = [pydicom.dcmread(p) for p in files]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
                    "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                    "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in slices:
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = s.ImagePositionPatient
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def ct_series(tmp_path):
    folder = tmp_path / "series"
    hu = make_ct_series(folder)
    return folder, hu


@pytest.fixture
def series_factory():
    """``make_ct_series`` for tests that need several series."""
    return make_ct_series


def oblique_rotation() -> np.ndarray:
    """A rotation about two axes (neither axis-aligned nor a flip), for oblique geometry tests."""
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def world_by_value(values: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, world coordinates of their voxel centres) for an image with unique values."""
    from restore_rwkv.data.io import voxel_centres

    world = voxel_centres(affine, values.shape).reshape(-1, 3)
    order = np.argsort(values.ravel(), kind="stable")
    return values.ravel()[order], world[order]


def sitk_world_by_value(image) -> tuple[np.ndarray, np.ndarray]:
    """The same, as SimpleITK places every voxel (TransformIndexToPhysicalPoint, LPS)."""
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image)  # (z, y, x)
    points = []
    for index in np.ndindex(values.shape):
        points.append(image.TransformIndexToPhysicalPoint([int(i) for i in reversed(index)]))
    points = np.asarray(points)
    order = np.argsort(values.ravel(), kind="stable")
    return values.ravel()[order], points[order]
