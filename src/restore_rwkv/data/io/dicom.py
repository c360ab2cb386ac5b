"""DICOM through pydicom: single- and multi-frame files, series folders, derived series.

Geometry is LPS (DICOM's patient coordinates). A series volume is (slice, row, column), its
slices ordered by position along the slice normal; the affine maps (slice, row, column) to
LPS millimetres and is exact for every slice because a series whose slices are not evenly
spaced (a missing file), share a position, or mix orientations is refused. Pixel values are
physical (rescale slope and intercept applied, per frame for enhanced multi-frame objects).

Derived series (restored images) follow PS3.3 (:class:`Derivation`, :func:`derive_dataset`):
ImageType DERIVED\\SECONDARY with the source's further values, new Series and SOP Instance UIDs,
a SeriesNumber that no series of the study in sight uses, SourceImageSequence pointing at each
source instance, DerivationDescription and DerivationCodeSequence, lossy-compression history kept,
ContentDate/Time of the derivation, SoftwareVersions, and a rescale that covers the new values.
Private data elements are removed: their meaning (vendor scaling, pixel statistics, CSA headers)
is tied to the source's pixels and cannot be vouched for after restoration.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file, atomic_folder, refuse_input_target

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
# DICOM objects that carry no image to restore, even when they hold pixel data (RT dose grids).
NON_IMAGE_MODALITIES = frozenset({"RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTIMAGE", "SR", "KO", "PR", "SEG",
                                  "REG", "DOC"})
STORAGE_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                   "PT": "1.2.840.10008.5.1.4.1.1.128", "OT": "1.2.840.10008.5.1.4.1.1.7"}
# kept from a source header when a series is made from geometry (a multi-frame file split into slices)
_PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber",
                      "ReferringPhysicianName", "FrameOfReferenceUID")
_POSITION_TOLERANCE = 0.1  # fraction of the slice step by which a slice may sit off its regular place
# Lossy transfer syntaxes and the LossyImageCompressionMethod (0028,2114) term of each.
_LOSSY_SYNTAXES = (("1.2.840.10008.1.2.4.50", "ISO_10918_1"), ("1.2.840.10008.1.2.4.51", "ISO_10918_1"),
                   ("1.2.840.10008.1.2.4.81", "ISO_14495_1"), ("1.2.840.10008.1.2.4.91", "ISO_15444_1"),
                   ("1.2.840.10008.1.2.4.203", "ISO_15444_15"))
SERIES_NUMBER_STEP = 1000  # a derived series is numbered source + k * 1000, the first k no series of the study uses
IMAGE_PROCESSING = ("110001", "DCM", "Image Processing")  # CID 7203 Image Derivation
SPATIAL_RESAMPLING = ("113085", "DCM", "Spatial resampling")
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")  # CID 7202
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")  # CID 7005 Contributing Equipment Purposes
# Elements whose content is tied to the source's pixels and that a derived image drops: a thumbnail, a
# stored-value lookup table the new rescale replaces, signatures of the old data.
_SOURCE_PIXEL_ELEMENTS = ("IconImageSequence", "ModalityLUTSequence", "DigitalSignaturesSequence",
                          "MACParametersSequence")
_FRAME_TYPE_SEQUENCES = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence", "PETFrameTypeSequence",
                         "FrameTypeSequence")


@dataclass(frozen=True)
class Derivation:
    """What a derived DICOM object says about how it was made.

    Attributes:
        label: appended to the source's SeriesDescription in parentheses (e.g. ``restored by restore-rwkv ct``).
        description: DerivationDescription (free text; default: ``label``).
        codes: DerivationCodeSequence items, (value, scheme, meaning) from CID 7203.
        software: SoftwareVersions of the derived object (empty: the source's are kept).
    """

    label: str = "restored by restore-rwkv"
    description: str = ""
    codes: tuple[tuple[str, str, str], ...] = (IMAGE_PROCESSING,)
    software: str = ""

    @classmethod
    def of(cls, value: "Derivation | str") -> "Derivation":
        """``value`` itself, or a derivation labelled with the string ``value``."""
        return value if isinstance(value, Derivation) else cls(label=str(value))


def looks_like_dicom(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # Files without the 128-byte preamble are still DICOM if they parse to a SOP instance.
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds:
                raise InputError(path, "not a DICOM file") from None
            return ds
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"damaged DICOM file ({type(exc).__name__}: {exc})") from None


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
    return str(uid or "")


def _non_image_reason(ds) -> str | None:
    """Why ``ds`` is no image to restore (DICOMDIR, RT objects, SEG ...), or None."""
    if _sop_class(ds) == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "a DICOMDIR (media directory), not an image"
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        kind = getattr(ds.get("SOPClassUID"), "name", modality)
        return f"DICOM object is not an image to restore ({kind}, modality {modality})"
    return None


def _check_image_dataset(ds, path: Path) -> None:
    reason = _non_image_reason(ds)
    if reason:
        raise InputError(path, reason)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(path, "DICOM file holds no pixel data (truncated, or not an image)")


def _group_item(ds, frame: int, sequence: str):
    """Item of functional-group ``sequence`` for ``frame``: per-frame first, then shared (enhanced objects)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index and sequence in items[index]:
            seq = items[index][sequence]
            if len(seq.value):
                return seq.value[0]
    return None


def _rescale(ds, frame: int = 0) -> tuple[float, float]:
    """(slope, intercept) of ``frame``: its functional group's, else the top-level tags, else (1, 0)."""
    item = _group_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None else ds
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0)


def _frame_count(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _pixels(ds, path: Path) -> np.ndarray:
    """Pixel values in physical units (rescale applied per frame), float32: (rows, cols) or (frames, rows, cols)."""
    try:
        stored = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        needs = _decoder_packages(str(syntax)) if syntax is not None else None
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if needs and "missing dependencies" in str(exc):
            raise InputError(path, f"cannot decode its {syntax.name} pixel data: no decoder is installed; "
                                   f"pip install 'restore-rwkv[dicom-codecs]' ({needs})") from None
        hint = f"; decoders for it: {needs}" if needs else ""
        details = " ".join(str(exc).split())[:300]
        raise InputError(path, f"cannot decode the DICOM pixel data ({details or message}{hint})") from None
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        raise InputError(path, "colour DICOM images are not supported")
    frames = _frame_count(ds)
    values = stored.astype(np.float32)
    if frames > 1:
        for f in range(frames):
            slope, intercept = _rescale(ds, f)
            values[f] = values[f] * slope + intercept
        return values
    slope, intercept = _rescale(ds, 0)
    return (values * slope + intercept).astype(np.float32)


# Compressed transfer syntaxes pydicom cannot decode alone (by UID prefix), and the packages that can.
_DECODERS = (
    ("1.2.840.10008.1.2.4.8", "pylibjpeg with pylibjpeg-libjpeg, or pyjpegls"),  # JPEG-LS
    ("1.2.840.10008.1.2.4.9", "pylibjpeg with pylibjpeg-openjpeg"),  # JPEG 2000
    ("1.2.840.10008.1.2.4.20", "pylibjpeg with pylibjpeg-openjpeg"),  # HTJ2K
    ("1.2.840.10008.1.2.4.5", "pylibjpeg with pylibjpeg-libjpeg"),  # JPEG baseline / extended
    ("1.2.840.10008.1.2.4.7", "pylibjpeg with pylibjpeg-libjpeg"),  # JPEG lossless
)


def _decoder_packages(transfer_syntax: str) -> str | None:
    """The packages that decode ``transfer_syntax``, for the error message; None when pydicom needs none."""
    return next((needs for prefix, needs in _DECODERS if transfer_syntax.startswith(prefix)), None)


def _dicom_datetime(date: str | None, time: str | None):
    """A datetime from DICOM DA (YYYYMMDD) and TM (HHMMSS.ffffff, parts may be missing) strings."""
    import datetime as dt

    time = (str(time or "").strip().replace(":", "") + "000000")
    whole, _, fraction = time.partition(".")
    whole = (whole + "000000")[:6]
    seconds = int(whole[:2]) * 3600 + int(whole[2:4]) * 60 + int(whole[4:6]) + float("0." + (fraction or "0"))
    day = dt.datetime.strptime(str(date).strip(), "%Y%m%d") if date and str(date).strip() else dt.datetime(2000, 1, 1)
    return day + dt.timedelta(seconds=seconds)


def pet_suv_factor(ds) -> tuple[float, str]:
    """(factor, description) taking a PET image's stored units to body-weight SUV (g/ml).

    Units GML are SUV already (factor 1). Units BQML: SUV = C * weight / dose, with the
    injected dose decayed from the injection time to the time the image is decay-corrected
    to (DecayCorrection START: the series time; ADMIN: the injection itself). Raises
    ValueError when the header lacks what that needs (units, weight, dose, half-life, times).
    """
    units = str(ds.get("Units", "") or "").upper()
    if units == "GML":
        return 1.0, "already in SUV (g/ml)"
    if units != "BQML":
        raise ValueError(f"PET units are {units or 'not given'}; SUV needs BQML or GML")
    weight = float(ds.get("PatientWeight") or 0.0)
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if weight <= 0 or not info:
        raise ValueError("SUV needs PatientWeight and RadiopharmaceuticalInformationSequence")
    item = info[0]
    dose = float(item.get("RadionuclideTotalDose") or 0.0)
    half_life = float(item.get("RadionuclideHalfLife") or 0.0)
    start_dt = str(item.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    start_time = item.get("RadiopharmaceuticalStartTime")
    if dose <= 0 or half_life <= 0 or not (start_dt or start_time):
        raise ValueError("SUV needs RadionuclideTotalDose, RadionuclideHalfLife and the injection time")
    correction = str(ds.get("DecayCorrection", "START") or "START").upper()
    if correction == "ADMIN":
        elapsed = 0.0
    elif correction == "START":
        reference = _dicom_datetime(ds.get("SeriesDate") or ds.get("AcquisitionDate"),
                                    ds.get("SeriesTime") or ds.get("AcquisitionTime"))
        if start_dt:
            injected = _dicom_datetime(start_dt[:8], start_dt[8:])
        else:
            injected = _dicom_datetime(ds.get("SeriesDate") or ds.get("AcquisitionDate"), start_time)
        elapsed = (reference - injected).total_seconds()
        if elapsed < 0 and not start_dt:
            elapsed += 24 * 3600  # injected before midnight, scanned after
        if elapsed < 0:
            raise ValueError("the series starts before the injection")
    else:
        raise ValueError(f"DecayCorrection {correction} is not understood (START or ADMIN)")
    decayed = dose * 2.0 ** (-elapsed / half_life)
    factor = weight * 1000.0 / decayed
    return factor, (f"Bq/ml converted to SUVbw (weight {weight:g} kg, {dose / 1e6:.4g} MBq injected, "
                    f"{elapsed / 60:.1f} min before the decay-correction time)")


def _stored_dtype(ds) -> np.dtype:
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}") if bits in (8, 16, 32) else np.dtype(np.float32)


def _strip_pixels(ds):
    header = copy.deepcopy(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    return header


def _plane(ds, frame: int = 0) -> tuple[np.ndarray | None, np.ndarray | None, list[float] | None, float | None]:
    """(position, orientation (6), pixel spacing (2), slice thickness) of one frame; None where absent."""
    position_item = _group_item(ds, frame, "PlanePositionSequence")
    orientation_item = _group_item(ds, frame, "PlaneOrientationSequence")
    measures = _group_item(ds, frame, "PixelMeasuresSequence")
    position = (position_item or ds).get("ImagePositionPatient")
    orientation = (orientation_item or ds).get("ImageOrientationPatient")
    spacing = (measures or ds).get("PixelSpacing")
    thickness = (measures or ds).get("SpacingBetweenSlices") or (measures or ds).get("SliceThickness")
    return (None if position is None or len(position) != 3 else np.asarray(position, float),
            None if orientation is None or len(orientation) != 6 else np.asarray(orientation, float),
            None if spacing is None or len(spacing) != 2 else [float(s) for s in spacing],
            float(thickness) if thickness not in (None, "") else None)


def _in_plane_columns(orientation: np.ndarray, pixel_spacing: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """LPS steps of one row down (index axis 'row') and one column right (axis 'column')."""
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    return column_cosine * pixel_spacing[0], row_cosine * pixel_spacing[1]


def _stack_geometry(positions: list[np.ndarray], orientation: np.ndarray, pixel_spacing: list[float],
                    thickness: float | None, names: list[str], where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Affine (slice, row, column) -> LPS of slices already in spatial order; refuses irregular stacks.

    Returns the affine and each slice's position along the normal (mm).
    """
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([float(np.dot(p, normal)) for p in positions])
    down, right = _in_plane_columns(orientation, pixel_spacing)
    affine = np.eye(4)
    affine[:3, 1], affine[:3, 2], affine[:3, 3] = down, right, positions[0]
    if len(positions) == 1:
        affine[:3, 0] = normal * (thickness or 1.0)
        return affine, along
    steps = np.diff(along)
    for k, step in enumerate(steps):
        if abs(step) < 1e-3:
            raise InputError(where, f"two slices at one position ({along[k]:.3f} mm along the normal): "
                                    f"{names[k]} and {names[k + 1]}; refusing to stack them")
    slice_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    typical = float(np.median(np.abs(steps)))
    for k, p in enumerate(positions):
        off = float(np.linalg.norm(p - (positions[0] + k * slice_step)))
        if off > _POSITION_TOLERANCE * typical:
            gaps = [f"{steps[i]:.3g} mm after {names[i]}" for i in range(len(steps))
                    if abs(abs(steps[i]) - typical) > _POSITION_TOLERANCE * typical]
            raise InputError(where, f"slices are not evenly spaced (usual step {typical:.3g} mm; "
                                    f"{', '.join(gaps[:3]) or 'positions off the slice line'}): a slice may be "
                                    "missing; refusing to place them on a regular grid")
    affine[:3, 0] = slice_step
    return affine, along


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """One DICOM image file (single or multi-frame, enhanced included), in physical units.

    A multi-frame object is (frame, row, column) in the file's frame order; its affine is
    set when the frames share one orientation and lie evenly spaced along a line.
    """
    path = Path(path)
    ds = _dcmread(path)
    _check_image_dataset(ds, path)
    data = _pixels(ds, path)
    frames = _frame_count(ds)
    planes = [_plane(ds, f) for f in range(frames)]
    position, orientation, pixel_spacing, thickness = planes[0]
    affine, extra = None, {}
    if orientation is not None and pixel_spacing is not None and all(p[0] is not None for p in planes):
        positions = [p[0] for p in planes]
        if all(p[1] is not None and np.allclose(p[1], orientation, atol=1e-4) for p in planes):
            if frames == 1:
                affine = np.eye(4)
                down, right = _in_plane_columns(orientation, pixel_spacing)
                normal = np.cross(orientation[:3], orientation[3:])
                affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = down, right, normal * (thickness or 1.0), position
            else:
                try:
                    affine, _ = _stack_geometry(positions, orientation, pixel_spacing, thickness,
                                                [f"frame {f + 1}" for f in range(frames)], path)
                except InputError as exc:
                    extra["geometry_problem"] = exc.problem  # frames stay readable; no single affine fits them
        extra["frame_positions"] = [[float(v) for v in p] for p in positions]
    if frames == 1:
        spacing = tuple(pixel_spacing) if pixel_spacing else None
    else:
        step = float(np.linalg.norm(affine[:3, 0])) if affine is not None else (thickness or 1.0)
        spacing = (step, *pixel_spacing) if pixel_spacing else None
    meta = ImageMeta(source=path, format="dicom", modality=str(ds.get("Modality", "")) or None,
                     spacing=spacing, affine=affine, space="LPS" if affine is not None else None,
                     slice_axis=0 if data.ndim == 3 else None, datasets=[_strip_pixels(ds)],
                     dtype=_stored_dtype(ds), extra=extra)
    return data, meta


def _series_label(uid: str, headers: list) -> str:
    description = str(headers[0].get("SeriesDescription", "")).strip()
    return f"{uid or '(no SeriesInstanceUID)'} ({len(headers)} file(s){', ' + repr(description) if description else ''})"


def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The image series in a folder (not recursive): SeriesInstanceUID -> its files.

    DICOMDIR files and non-image objects (RT structures, dose, SEG, reports) are left out.
    """
    return {uid: [p for p, _ in items] for uid, items in _series_headers(Path(folder))[0].items()}


def _series_headers(folder: Path) -> tuple[dict[str, list], list[str]]:
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    series: dict[str, list] = {}
    ignored: list[str] = []
    for p in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if p.suffix.lower() not in DICOM_SUFFIXES and not looks_like_dicom(p) and p.name.upper() != "DICOMDIR":
            continue
        ds = _dcmread(p, stop_before_pixels=True)
        reason = _non_image_reason(ds)
        if reason:
            ignored.append(f"{p.name}: {reason}")
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    return series, ignored


def _pick_series(folder: Path, series_uid: str | None) -> tuple[list, list[str], list[tuple[str, int | None]]]:
    """The ``(path, header)`` pairs of the one series in ``folder`` (or of ``series_uid``), the ignored files,
    and the (study, series number) of every series in the folder."""
    series, ignored = _series_headers(folder)
    if not series:
        raise InputError(folder, "no DICOM image files in this folder" + (f" ({'; '.join(ignored)})" if ignored else ""))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(folder, f"no DICOM image of series {series_uid}; it holds {', '.join(sorted(series))}")
        headers = series[series_uid]
    elif len(series) > 1:
        labels = "; ".join(_series_label(uid, [ds for _, ds in items]) for uid, items in sorted(series.items()))
        raise InputError(folder, f"holds {len(series)} DICOM series ({labels}); pick one with series_uid")
    else:
        headers = next(iter(series.values()))
    return headers, ignored, [_series_key(items[0][1]) for items in series.values()]


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """A folder of single-frame DICOM images of one series, as a (slice, row, column) volume.

    Slices are ordered by position along the slice normal (ImagePositionPatient projected on
    the cross product of ImageOrientationPatient), not by file name. Refused with an
    InputError: several series without ``series_uid``, slices that share a position, slices not
    evenly spaced (a missing file), one slice without a position while others have one, mixed
    orientations or sizes. A series with no geometry at all is ordered by InstanceNumber and
    gets no affine. DICOMDIR files and non-image objects in the folder are ignored.
    """
    folder = Path(folder)
    headers, ignored, keys = _pick_series(folder, series_uid)
    volume, meta = _volume_from_headers(folder, headers, ignored)
    meta.extra["folder_series"] = keys
    return volume, meta


def read_dicom_files(files: list[str | os.PathLike], source: str | os.PathLike | None = None
                     ) -> tuple[np.ndarray, ImageMeta]:
    """Single-frame DICOM images of one series, given as files, stacked like :func:`read_dicom_series`.

    For callers that gathered a series themselves (e.g. around a damaged file of another
    series in the same folder). ``source`` names the series in errors (default: the first
    file's folder). Files of several series, or non-image objects, are refused.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise InputError(source, "no DICOM files given")
    folder = Path(source) if source is not None else paths[0].parent
    headers = []
    for p in paths:
        ds = _dcmread(p, stop_before_pixels=True)
        reason = _non_image_reason(ds)
        if reason:
            raise InputError(p, reason)
        headers.append((p, ds))
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(uids) > 1:
        raise InputError(folder, f"the files belong to {len(uids)} series ({', '.join(sorted(uids))})")
    return _volume_from_headers(folder, headers, [])


def _volume_from_headers(folder: Path, headers: list, ignored: list[str]) -> tuple[np.ndarray, ImageMeta]:
    """Stack the files of one series (``(path, header)`` pairs, any order) in spatial order."""
    meta = _series_meta(folder, headers, ignored)
    slices, datasets = [], []
    for p in meta.extra["files"]:
        ds, pixels = _read_series_slice(p, slices[0].shape if slices else None)
        slices.append(pixels)
        datasets.append(_strip_pixels(ds))
    meta.datasets = datasets
    meta.dtype = _stored_dtype(datasets[0])
    return np.stack(slices), meta


def _read_series_slice(path: Path, shape: tuple[int, ...] | None) -> tuple:
    """(dataset, physical pixels) of one single-frame file of a series; ``shape``: the series' slice shape."""
    ds = _dcmread(path)
    _check_image_dataset(ds, path)
    pixels = _pixels(ds, path)
    if pixels.ndim != 2:
        raise InputError(path, f"expected one 2-D slice per file in a series, got shape {pixels.shape}")
    if shape is not None and pixels.shape != tuple(shape):
        raise InputError(path, f"slice of shape {pixels.shape} in a series of {tuple(shape)}")
    return ds, pixels


def _series_meta(folder: Path, headers: list, ignored: list[str]) -> ImageMeta:
    """The ImageMeta of a series from its headers alone: slice order, geometry, the pixel-less headers.

    ``extra["files"]`` lists the files in slice order; ``datasets`` are the headers read
    without pixel data (``stop_before_pixels``).
    """
    planes = [_plane(ds) for _, ds in headers]
    has_position = [pl[0] is not None and pl[1] is not None for pl in planes]
    affine, along = None, None
    if all(has_position):
        orientation = planes[0][1]
        for (p, _), pl in zip(headers, planes):
            if not np.allclose(pl[1], orientation, atol=1e-4):
                raise InputError(p, "slice orientation differs from the rest of its series")
        normal = np.cross(orientation[:3], orientation[3:])
        order = np.argsort([float(np.dot(pl[0], normal)) for pl in planes], kind="stable")
    elif any(has_position):
        missing = next(p for (p, _), ok in zip(headers, has_position) if not ok)
        raise InputError(missing, "has no ImagePositionPatient/ImageOrientationPatient while the other "
                                  "slices of its series do; cannot place it")
    else:
        order = np.argsort([int(ds.get("InstanceNumber", i) or i) for i, (_, ds) in enumerate(headers)], kind="stable")
    headers = [headers[i] for i in order]
    planes = [planes[i] for i in order]
    pixel_spacing = planes[0][2] or [1.0, 1.0]
    if all(has_position):
        affine, along = _stack_geometry([pl[0] for pl in planes], planes[0][1], pixel_spacing, planes[0][3],
                                        [p.name for p, _ in headers], folder)
    first = headers[0][1]
    step = float(np.linalg.norm(affine[:3, 0])) if affine is not None else planes[0][3]
    meta = ImageMeta(source=folder, format="dicom-series", modality=str(first.get("Modality", "")) or None,
                     spacing=None if step is None else (step, *pixel_spacing), affine=affine,
                     space="LPS" if affine is not None else None, slice_axis=0,
                     datasets=[ds for _, ds in headers], dtype=_stored_dtype(first))
    meta.extra["files"] = [p for p, _ in headers]
    # along the slice normal, mm, ascending; None for a series without geometry
    meta.extra["positions"] = None if along is None else [float(x) for x in along]
    meta.extra["ignored"] = ignored
    return meta


def scan_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> ImageMeta:
    """What :func:`read_dicom_series` learns, without reading pixels: for streaming a large series.

    Same checks of the series and its geometry (the size and decodability of each slice are
    checked when :func:`iter_dicom_series` reads it). ``extra["files"]`` holds the files in
    slice order and ``extra["shape"]`` the volume's (slice, row, column) shape from the headers.
    """
    folder = Path(folder)
    headers, ignored, keys = _pick_series(folder, series_uid)
    for p, ds in headers:
        _check_image_dataset_header(ds, p)
    meta = _series_meta(folder, headers, ignored)
    meta.extra["folder_series"] = keys
    first = meta.datasets[0]
    meta.extra["shape"] = (len(headers), int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0))
    return meta


def _check_image_dataset_header(ds, path: Path) -> None:
    """The checks of :func:`_check_image_dataset` a pixel-less header allows (no pixel-data test)."""
    reason = _non_image_reason(ds)
    if reason:
        raise InputError(path, reason)
    if not ds.get("Rows") or not ds.get("Columns"):
        raise InputError(path, "DICOM file has no Rows/Columns (not an image)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(path, "expected one 2-D slice per file in a series, got a multi-frame file")


def iter_dicom_series(meta: ImageMeta):
    """Yield each slice of a scanned series (:func:`scan_dicom_series`) in order, physical float32 (rows, columns)."""
    shape = meta.extra["shape"][1:]
    for p in meta.extra["files"]:
        yield _read_series_slice(Path(p), shape)[1]


# ----------------------------------------------------------------------------- writing
def _stored_values(values: np.ndarray, slope: float | None, intercept: float | None
                   ) -> tuple[np.ndarray, float, float, bool]:
    """16-bit integers for ``values`` and the rescale (slope, intercept) that maps them back.

    The given rescale is kept when it covers the values (signed or unsigned storage); with
    none given, integral values that fit int16 are stored as they are; otherwise the range is
    spread over 0..65535.
    """
    lo, hi = float(values.min()), float(values.max())
    if slope is None:
        slope, intercept = 1.0, 0.0
        if not np.array_equal(values, np.rint(values)):
            slope, intercept = max((hi - lo) / 65535.0, 1e-12), lo
    for signed, (smin, smax) in ((True, (-32768, 32767)), (False, (0, 65535))):
        if (lo - intercept) / slope >= smin - 0.5 and (hi - intercept) / slope <= smax + 0.5:
            break
    else:
        signed, (smin, smax) = False, (0, 65535)
        intercept = lo
        slope = max((hi - lo) / 65535.0, 1e-12)
    stored = np.clip(np.rint((values - intercept) / slope), smin, smax)
    return stored.astype(np.int16 if signed else np.uint16), slope, intercept, signed


def _convert_padding(ds, old: tuple[float, float], new: tuple[float, float], signed: bool) -> None:
    """Keep PixelPaddingValue (and its range limit) meaning the same physical value under the new rescale."""
    from pydicom.dataelem import DataElement

    smin, smax = (-32768, 32767) if signed else (0, 65535)
    for keyword, tag in (("PixelPaddingValue", 0x00280120), ("PixelPaddingRangeLimit", 0x00280121)):
        if keyword not in ds:
            continue
        physical = float(ds[keyword].value) * old[0] + old[1]
        stored = (physical - new[1]) / new[0]
        del ds[keyword]
        if abs(stored - round(stored)) < 1e-6 and smin <= round(stored) <= smax:
            ds[tag] = DataElement(tag, "SS" if signed else "US", int(round(stored)))
        elif keyword == "PixelPaddingValue":
            ds.pop(0x00280121, None)  # a range limit without its padding value is meaningless
            break


def _set_pixels(ds, values: np.ndarray, old_rescale: tuple[float, float] | None) -> None:
    """Store physical ``values`` (one frame or frames) in ``ds`` with a 16-bit rescale; tags made consistent."""
    slope0, intercept0 = old_rescale if old_rescale is not None else (None, None)
    stored, slope, intercept, signed = _stored_values(values, slope0, intercept0)
    enhanced = "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds
    _convert_padding(ds, old_rescale or (1.0, 0.0), (slope, intercept), signed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if enhanced:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        for item in ds.get("PerFrameFunctionalGroupsSequence", []):
            if "PixelValueTransformationSequence" in item:
                del item.PixelValueTransformationSequence
        if "SharedFunctionalGroupsSequence" not in ds or not len(ds.SharedFunctionalGroupsSequence):
            ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        transform.RescaleType = "HU" if str(ds.get("Modality", "")).upper() == "CT" else "US"
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence([transform])
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            ds.pop(keyword, None)
    else:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                    "LargestPixelValueInSeries"):
        ds.pop(keyword, None)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"


def _code_item(code: tuple[str, str, str]):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _lossy_history(header) -> None:
    """Mark ``header`` as once lossy-compressed when its source file was stored with a lossy transfer
    syntax and says nothing itself (PS3.3 C.7.6.1.1.5: a derived image keeps the flag)."""
    if "LossyImageCompression" in header:
        return
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    method = next((m for prefix, m in _LOSSY_SYNTAXES if syntax == prefix), None)
    if method is not None:
        header.LossyImageCompression = "01"
        header.LossyImageCompressionMethod = method


def derive_dataset(header, values: np.ndarray, series_uid: str, derivation: Derivation | str,
                   series_number: int | None = None):
    """A new DICOM object from ``header`` holding ``values`` (physical units), derived as PS3.3 asks.

    New SOP Instance UID and ``series_uid``; ImageType DERIVED\\SECONDARY (the source's further
    values kept); SeriesNumber ``series_number`` (when given); SeriesDescription with the
    derivation's label; DerivationDescription and DerivationCodeSequence; SourceImageSequence
    referencing the source instance (when ``header`` has one); LossyImageCompression and its ratio
    and method kept (set when the source file was lossy-compressed without saying so);
    ContentDate/Time and InstanceCreationDate/Time now; SoftwareVersions; private elements removed;
    a rescale that covers ``values``; window, patient, study, geometry and BurnedInAnnotation kept.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    derivation = Derivation.of(derivation)
    ds = copy.deepcopy(header)  # Dataset.copy() is shallow: it would change the caller's headers
    frames = _frame_count(ds)
    expected = (int(ds.Rows), int(ds.Columns)) if frames == 1 else (frames, int(ds.Rows), int(ds.Columns))
    if values.shape != expected:
        raise InputError(None, f"image of shape {values.shape} where its DICOM header says {expected}")
    _lossy_history(ds)
    has_rescale = "RescaleSlope" in ds or _group_item(ds, 0, "PixelValueTransformationSequence") is not None
    # a header read from a file keeps its rescale (1, 0 when it has none); a header made from geometry has no pixels yet
    old = _rescale(ds, 0) if has_rescale or header.get("BitsAllocated") else None
    _set_pixels(ds, values, old)
    if old is not None and _rescale(ds, 0) != old:
        ds.pop("RealWorldValueMappingSequence", None)  # it maps the old stored values
    _drop_source_pixel_elements(ds)
    ds.remove_private_tags()
    source_class, source_instance = str(header.get("SOPClassUID", "") or ""), str(header.get("SOPInstanceUID", "") or "")
    if source_class and source_instance and header.get("BitsAllocated"):  # a real source instance, not made from geometry
        reference = Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source_class, source_instance
        reference.PurposeOfReferenceCodeSequence = Sequence([_code_item(SOURCE_FOR_PROCESSING)])
        ds.SourceImageSequence = Sequence([reference])
    sop_uid = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    further = [str(v) for v in (header.get("ImageType") or [])][2:]
    ds.ImageType = ["DERIVED", "SECONDARY", *further]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):  # enhanced objects
        for group in ds.get(groups, []):
            for keyword in _FRAME_TYPE_SEQUENCES:
                for item in group.get(keyword, []):
                    if item.get("FrameType"):
                        item.FrameType = ["DERIVED", "SECONDARY", *[str(v) for v in item.FrameType][2:]]
    if series_number is not None:
        ds.SeriesNumber = int(series_number)
    original = str(ds.get("SeriesDescription", "")).strip()
    ds.SeriesDescription = (f"{original} ({derivation.label})" if original else derivation.label)[:64]
    ds.DerivationDescription = (derivation.description or derivation.label)[:1024]
    ds.DerivationCodeSequence = Sequence([_code_item(code) for code in derivation.codes])
    now = dt.datetime.now()
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S.%f")
    if derivation.software:
        ds.SoftwareVersions = derivation.software[:64]
        contribution = Dataset()  # the equipment that made this instance from the source (PS3.3 C.7.5.1)
        contribution.PurposeOfReferenceCodeSequence = Sequence([_code_item(PROCESSING_EQUIPMENT)])
        contribution.Manufacturer = derivation.software.split()[0]
        contribution.SoftwareVersions = derivation.software[:64]
        contribution.ContributionDateTime = now.strftime("%Y%m%d%H%M%S.%f")
        contribution.ContributionDescription = (derivation.description or derivation.label)[:1024]
        ds.ContributingEquipmentSequence = Sequence([*ds.get("ContributingEquipmentSequence", []), contribution])
    ds.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta) if hasattr(ds, "file_meta") else \
        pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _drop_source_pixel_elements(ds) -> None:
    """Remove what describes the source's pixels only: thumbnails, a modality LUT, signatures, and overlay
    planes whose size is no longer the image's (after upsampling)."""
    for keyword in _SOURCE_PIXEL_ELEMENTS:
        ds.pop(keyword, None)
    for group in range(0x6000, 0x6020, 2):  # overlay planes
        rows, columns = ds.get((group, 0x0010)), ds.get((group, 0x0011))
        if rows is None and columns is None:
            continue
        if rows is None or columns is None or (int(rows.value), int(columns.value)) != (int(ds.Rows), int(ds.Columns)):
            for tag in [t for t in ds.keys() if t.group == group]:
                del ds[tag]


def folder_series_keys(folder: Path) -> list[tuple[str, int | None]]:
    """(StudyInstanceUID, SeriesNumber) of every readable DICOM file in ``folder`` (others are skipped)."""
    import pydicom

    keys = []
    try:
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return keys
    for path in files:
        if path.suffix.lower() not in DICOM_SUFFIXES and not looks_like_dicom(path):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True,
                                 specific_tags=["StudyInstanceUID", "SeriesNumber"])
        except Exception:  # a damaged file tells nothing about the study
            continue
        keys.append(_series_key(ds))
    return keys


def study_series_numbers(folder: Path, study_uid: str, known: list[tuple[str, int | None]] = ()) -> set[int]:
    """SeriesNumbers already used in study ``study_uid``: by ``known`` (study, number) pairs (e.g. every
    series of a folder), and by the first DICOM file of ``folder`` and of each folder beside it (up to
    256) in that study."""
    used = {number for study, number in known if number is not None and study == study_uid}
    folders = [folder]
    parent = folder.parent
    try:
        folders += sorted(p for p in parent.iterdir() if p.is_dir() and p != folder)[:256]
    except OSError:
        pass
    for candidate in folders:
        try:
            first = next((p for p in sorted(candidate.iterdir()) if p.is_file() and not p.name.startswith(".")
                          and (p.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(p))), None)
        except OSError:
            continue
        if first is None:
            continue
        try:
            ds = _dcmread(first, stop_before_pixels=True)
        except InputError:
            continue
        number = _integer(ds.get("SeriesNumber"))
        if number is not None and str(ds.get("StudyInstanceUID", "")) == study_uid:
            used.add(number)
    return used


def _integer(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def new_series_number(source_number, used: set[int]) -> int:
    """``source + k * SERIES_NUMBER_STEP`` for the first k >= 1 not in ``used`` (source 0 when it has none)."""
    base = _integer(source_number) or 0
    number = base + SERIES_NUMBER_STEP
    while number in used:
        number += SERIES_NUMBER_STEP
    return number


def with_pixel_grid(header, factor: int):
    """A copy of ``header`` for an image ``factor`` times finer in-plane: Rows, Columns and PixelSpacing
    (top level and functional groups) changed; position and orientation kept."""
    ds = copy.deepcopy(header)
    ds.Rows, ds.Columns = int(ds.Rows) * factor, int(ds.Columns) * factor
    holders = [ds] + [item for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
                      for group in ds.get(groups, []) for item in group.get("PixelMeasuresSequence", [])]
    for holder in holders:
        if holder.get("PixelSpacing") is not None and len(holder.PixelSpacing) == 2:
            holder.PixelSpacing = [f"{float(v) / factor:.10g}" for v in holder.PixelSpacing]
    return ds


def _check_writable(target: Path, values: np.ndarray, meta: ImageMeta | None) -> None:
    if not np.isfinite(values).all():
        raise InputError(target, "refusing to write NaN or infinite values to DICOM")
    refuse_input_target(target, None if meta is None else meta.source)


def write_dicom(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta,
                description: Derivation | str = "restored by restore-rwkv") -> Path:
    """Write ``array`` (physical units) as one DICOM file derived from the file ``meta`` was read from.

    Single-frame (rows, columns) or multi-frame (frames, rows, columns, e.g. enhanced CT: the
    rescale goes into the shared functional group); new Series and SOP Instance UIDs,
    ImageType DERIVED; patient, study, geometry and per-frame groups kept.
    """
    path = Path(path)
    values = np.asarray(array, dtype=np.float64)
    if meta is None or not meta.datasets or len(meta.datasets) != 1:
        raise InputError(path, "writing a DICOM file needs the header of the single DICOM file it derives from "
                               "(use write_dicom_series for a series)")
    _check_writable(path, values, meta)
    from pydicom.uid import generate_uid

    header = meta.datasets[0]
    used = set()
    if meta.source is not None:  # every file beside the source, and the first of each folder beside that
        folder = Path(meta.source).parent
        used = study_series_numbers(folder, str(header.get("StudyInstanceUID", "")), folder_series_keys(folder))
    number = new_series_number(header.get("SeriesNumber"), used)
    try:
        ds = derive_dataset(header, values, generate_uid(), description, number)
    except InputError as exc:
        raise InputError(path, exc.problem) from None
    with atomic_file(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


def _headers_from_geometry(volume: np.ndarray, meta: ImageMeta, modality: str | None, where: Path
                           ) -> tuple[np.ndarray, list]:
    """(slice, row, column) volume and fresh per-slice DICOM headers that carry ``meta``'s geometry."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    affine = meta.affine_in("LPS")
    if affine is None or volume.ndim != 3:
        raise InputError(where, "a new DICOM series needs a 3-D volume with a known affine (or DICOM headers)")
    axis = meta.slice_axis if meta.slice_axis is not None else 2
    rows_axis, cols_axis = [a for a in range(3) if a != axis]
    if float(np.dot(np.cross(affine[:3, cols_axis], affine[:3, rows_axis]), affine[:3, axis])) < 0:
        # swap the in-plane axes so the slice normal points along increasing slice index: the
        # series then reads back in the volume's slice order
        rows_axis, cols_axis = cols_axis, rows_axis
    volume = np.transpose(volume, (axis, rows_axis, cols_axis))
    down, right, through = affine[:3, rows_axis], affine[:3, cols_axis], affine[:3, axis]
    spacing = [float(np.linalg.norm(down)), float(np.linalg.norm(right))]
    row_cosine, column_cosine = right / spacing[1], down / spacing[0]
    if abs(float(np.dot(row_cosine, column_cosine))) > 1e-4:
        raise InputError(where, "the image's in-plane axes are not perpendicular (sheared affine); "
                                "DICOM cannot store that geometry")
    modality = (modality or meta.modality or "OT").upper()
    source = meta.datasets[0] if meta.datasets else None  # e.g. the header of a multi-frame file
    study, frame_of_reference = generate_uid(), generate_uid()
    headers = []
    for k in range(volume.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID = STORAGE_CLASSES.get(modality, STORAGE_CLASSES["OT"])
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Anonymous", "restore-rwkv"
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame_of_reference
        for keyword in _PATIENT_AND_STUDY if source is not None else ():
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in affine[:3, 3] + k * through]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [f"{s:.8g}" for s in spacing]
        ds.SliceThickness = f"{float(np.linalg.norm(through)):.8g}"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        if meta.source is not None:
            ds.SeriesDescription = f"from {Path(meta.source).name}"[:64]
        headers.append(ds)
    return volume, headers


def write_dicom_series(folder: str | os.PathLike, volume: np.ndarray, meta: ImageMeta,
                       description: Derivation | str = "restored by restore-rwkv", modality: str | None = None,
                       replace: bool = False) -> Path:
    """Write ``volume`` (physical units) as a DICOM series folder, whole or not at all.

    With ``meta`` of a DICOM series, ``volume`` is (slice, row, column) and each file is derived
    from the header of the slice it replaces: patient, study and geometry kept, new Series and
    SOP Instance UIDs, ImageType DERIVED\\SECONDARY, a SeriesDescription that says it was
    restored, the input's rescale when it covers the output range (else a new one), pixel
    padding converted to the new rescale. With ``meta`` of another format (NIfTI, ITK) the
    headers are made from its affine (converted to LPS) and slices are taken along
    ``meta.slice_axis``; ``modality`` (default ``meta.modality``, else ``OT``) names the storage class.
    Pixels are stored uncompressed as 16-bit integers. ``replace``: an existing folder is replaced
    once the new one is complete.
    """
    folder = Path(folder)
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim == 2:
        volume = volume[None]
    _check_writable(folder, volume, meta)
    if meta is not None and meta.format == "dicom-series" and meta.datasets:
        if len(meta.datasets) != volume.shape[0]:
            raise InputError(folder, f"{volume.shape[0]} slice(s) to write but {len(meta.datasets)} DICOM header(s) "
                                     "to derive them from")
        headers = meta.datasets
        used = _used_numbers(meta)
    else:
        volume, headers = _headers_from_geometry(volume, meta or ImageMeta(), modality, folder)
        used = set()
    return _write_derived(folder, headers, iter(volume), description, replace=replace, used_numbers=used)


def _write_derived(folder: Path, headers: list, slices, description: Derivation | str, replace: bool = False,
                   used_numbers: set[int] | None = None) -> Path:
    """Derive one file per header from the matching slice of the iterable ``slices``, staged, then renamed.

    The series gets a SeriesNumber that none of ``used_numbers`` (the study's) is (:func:`new_series_number`).
    """
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    number = new_series_number(headers[0].get("SeriesNumber") if headers else None, used_numbers or set())
    with atomic_folder(folder, replace=replace) as stage:
        index = -1
        for index, values in enumerate(slices):
            if index >= len(headers):
                raise InputError(folder, f"more slices to write than the {len(headers)} DICOM header(s) to derive them from")
            values = np.asarray(values, dtype=np.float64)
            if not np.isfinite(values).all():
                raise InputError(folder, f"slice {index}: refusing to write NaN or infinite values to DICOM")
            try:
                ds = derive_dataset(headers[index], values, series_uid, description, number)
            except InputError as exc:
                raise InputError(folder, f"slice {index}: {exc.problem}") from None
            ds.save_as(str(stage / f"IM{index + 1:05d}.dcm"), enforce_file_format=True)
        if index + 1 != len(headers):
            raise InputError(folder, f"{index + 1} slice(s) written but {len(headers)} DICOM header(s) to derive them from")
    return folder


def write_dicom_series_stream(folder: str | os.PathLike, slices, meta: ImageMeta,
                              description: Derivation | str = "restored by restore-rwkv", replace: bool = False) -> Path:
    """Write a derived series slice by slice from an iterable of (row, column) physical arrays.

    ``meta`` is a DICOM series' (:func:`scan_dicom_series` or :func:`read_dicom_series`); each
    slice is derived from the header at its index as in :func:`write_dicom_series` and saved
    into a staged folder at once, so memory holds one slice; the folder appears only when
    every slice is written (``replace``: an existing folder is replaced then).
    """
    folder = Path(folder)
    if meta is None or meta.format != "dicom-series" or not meta.datasets:
        raise InputError(folder, "streaming a DICOM series needs the headers of the series it derives from")
    refuse_input_target(folder, meta.source)
    return _write_derived(folder, meta.datasets, slices, description, replace=replace,
                          used_numbers=_used_numbers(meta))


def _used_numbers(meta: ImageMeta) -> set[int]:
    """SeriesNumbers of the study of the series ``meta`` was read from (its folder and the folders beside it)."""
    if meta.format != "dicom-series" or meta.source is None or not meta.datasets:
        return set()
    study = str(meta.datasets[0].get("StudyInstanceUID", ""))
    known = meta.extra.get("folder_series", []) + [_series_key(ds) for ds in meta.datasets[:1]]
    return study_series_numbers(Path(meta.source), study, known)


def _series_key(ds) -> tuple[str, int | None]:
    """(StudyInstanceUID, SeriesNumber) of a header."""
    return str(ds.get("StudyInstanceUID", "")), _integer(ds.get("SeriesNumber"))
