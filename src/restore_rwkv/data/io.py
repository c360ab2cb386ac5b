"""Readers and writers of medical images that carry (array, metadata).

Readers return ``(array, ImageMeta)``; writers take the array and the metadata of the image
it came from, so geometry survives a round trip. Array axes stay in each format's own
order: NIfTI as nibabel gives them (x, y, z), a DICOM series and ITK images as
(slice, row, column); ``ImageMeta.slice_axis`` says which axis holds the slices.

Every failure a user can cause raises :class:`~restore_rwkv.utils.errors.InputError`
naming the file; writers go through a temporary name and never replace the input.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from restore_rwkv.utils.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_SUFFIXES = (".png", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")

# DICOM objects that carry no image to restore, even when they hold pixel data (RT dose grids).
_NON_IMAGE_MODALITIES = {"RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTIMAGE", "SR", "KO", "PR", "SEG", "REG", "DOC"}


@dataclass
class ImageMeta:
    """What a reader learnt besides the pixels.

    Attributes:
        source: the file or folder read.
        format: ``nifti``, ``dicom``, ``dicom-series``, ``itk``, ``png``, ``tiff``, ``npy``, ``npz``, ``bin``.
        modality: ``CT``, ``MR``, ``PT`` ... when the file says so, else None.
        spacing: voxel size along each array axis (mm), when known.
        affine: 4x4 index -> world matrix (RAS for NIfTI, LPS for DICOM and ITK), when known.
        slice_axis: the array axis that holds slices of a volume (None for a 2-D image).
        header: the NIfTI header (nibabel), kept for writing.
        datasets: DICOM headers without pixel data, one per slice in array order.
        dtype: the stored dtype of the pixels.
        extra: anything format-specific (e.g. ITK direction, NPZ keys).
    """

    source: Path | None = None
    format: str = "npy"
    modality: str | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    slice_axis: int | None = None
    header: Any = None
    datasets: list | None = None
    dtype: np.dtype | None = None
    extra: dict = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read any supported image; a folder is read as one DICOM series.

    ``allow_pickle`` is needed for the reference's ``.bin`` files (pickles can run code).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return read_dicom_series(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return read_itk(path)
    if suffix in PICTURE_SUFFIXES:
        return read_picture(path)
    if suffix in ARRAY_SUFFIXES:
        return read_array(path)
    if suffix == ".bin":
        return read_reference_bin(path, allow_pickle=allow_pickle)
    if suffix in DICOM_SUFFIXES or _looks_like_dicom(path):
        return read_dicom(path)
    raise InputError(path, f"unsupported file type {suffix or '(no extension)'!r}")


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# ----------------------------------------------------------------------------- NIfTI
def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """A NIfTI volume with its affine and header (scaling applied, stored dtype recorded)."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    header = image.header.copy()
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        data = data.astype(np.float32)  # nibabel applied the scaling through dataobj
    affine = image.affine.copy()
    zooms = tuple(float(z) for z in header.get_zooms()[: data.ndim])
    slice_axis = int(np.argmax(np.abs(affine[2, :3]))) if data.ndim >= 3 else None
    meta = ImageMeta(source=path, format="nifti", spacing=zooms, affine=affine, slice_axis=slice_axis,
                     header=header, dtype=header.get_data_dtype())
    return data, meta


def write_nifti(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write ``array`` with the affine and header of ``meta`` (when given); returns the path."""
    import nibabel as nib

    path = Path(path)
    _refuse_input(path, meta)
    array = np.asarray(array)
    if meta is not None and meta.header is not None and meta.affine is not None:
        header = meta.header.copy()
        header.set_data_dtype(array.dtype)
        image = nib.Nifti1Image(array, meta.affine, header)
        image.header.set_slope_inter(1.0, 0.0)
    else:
        affine = meta.affine if meta is not None and meta.affine is not None else np.eye(4)
        image = nib.Nifti1Image(array, affine)
    with _atomic_file(path) as tmp:
        nib.save(image, str(tmp))
    return path


# ----------------------------------------------------------------------------- DICOM
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


def _check_image_dataset(ds, path: Path) -> None:
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality in _NON_IMAGE_MODALITIES:
        kind = getattr(getattr(ds, "SOPClassUID", None), "name", modality)
        raise InputError(path, f"DICOM object is not an image to restore ({kind}, modality {modality})")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(path, "DICOM file holds no pixel data")


def _pixels(ds, path: Path) -> np.ndarray:
    """Pixel values in physical units (rescale slope/intercept applied, e.g. HU for CT)."""
    try:
        stored = ds.pixel_array
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"cannot decode the DICOM pixel data ({message})") from None
    if stored.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        raise InputError(path, "colour DICOM images are not supported")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return (stored.astype(np.float32) * slope + intercept).astype(np.float32)


def _stored_dtype(ds) -> np.dtype:
    bits = int(getattr(ds, "BitsAllocated", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    return np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}") if bits in (8, 16, 32) else np.dtype(np.float32)


def _strip_pixels(ds):
    header = copy.deepcopy(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    return header


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """One DICOM image file (single or multi-frame), in physical units."""
    path = Path(path)
    ds = _dcmread(path)
    _check_image_dataset(ds, path)
    data = _pixels(ds, path)
    spacing = tuple(float(s) for s in getattr(ds, "PixelSpacing", [])) or None
    meta = ImageMeta(source=path, format="dicom", modality=str(getattr(ds, "Modality", "")) or None,
                     spacing=spacing, slice_axis=0 if data.ndim == 3 else None,
                     datasets=[_strip_pixels(ds)], dtype=_stored_dtype(ds))
    return data, meta


def _slice_normal(ds) -> np.ndarray | None:
    orientation = getattr(ds, "ImageOrientationPatient", None)
    if orientation is None or len(orientation) != 6:
        return None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """A folder of single-frame DICOM images of one series, as a (slice, row, column) volume.

    Slices are ordered by their position along the slice normal (ImagePositionPatient
    projected on the cross product of ImageOrientationPatient), not by file name; files that
    are not DICOM are ignored. With several series in the folder, ``series_uid`` picks one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for p in files:
        if _suffix(p) not in DICOM_SUFFIXES and not _looks_like_dicom(p):
            continue
        headers.append((p, _dcmread(p, stop_before_pixels=True)))
    if not headers:
        raise InputError(folder, "no DICOM files in this folder")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if series_uid is not None:
        headers = [(p, ds) for p, ds in headers if str(getattr(ds, "SeriesInstanceUID", "")) == series_uid]
        if not headers:
            raise InputError(folder, f"no DICOM file of series {series_uid}")
    elif len(series) > 1:
        raise InputError(folder, f"holds {len(series)} DICOM series; pick one with series_uid")
    normal = _slice_normal(headers[0][1])
    if normal is not None and all(getattr(ds, "ImagePositionPatient", None) is not None for _, ds in headers):
        key = [float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for _, ds in headers]
    else:
        key = [float(getattr(ds, "InstanceNumber", i)) for i, (_, ds) in enumerate(headers)]
    order = np.argsort(key, kind="stable")
    headers = [headers[i] for i in order]
    positions = np.asarray(key)[order]
    slices, datasets = [], []
    for p, _ in headers:
        ds = _dcmread(p)
        _check_image_dataset(ds, p)
        pixels = _pixels(ds, p)
        if pixels.ndim != 2:
            raise InputError(p, f"expected one 2-D slice per file in a series, got shape {pixels.shape}")
        if slices and pixels.shape != slices[0].shape:
            raise InputError(p, f"slice of shape {pixels.shape} in a series of {slices[0].shape}")
        slices.append(pixels)
        datasets.append(_strip_pixels(ds))
    volume = np.stack(slices)
    first = datasets[0]
    pixel_spacing = [float(s) for s in getattr(first, "PixelSpacing", [1.0, 1.0])]
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine = None
    if normal is not None and getattr(first, "ImagePositionPatient", None) is not None:
        orientation = np.asarray(first.ImageOrientationPatient, float)
        affine = np.eye(4)
        affine[:3, 0] = normal * step
        affine[:3, 1] = orientation[3:] * pixel_spacing[0]
        affine[:3, 2] = orientation[:3] * pixel_spacing[1]
        affine[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    meta = ImageMeta(source=folder, format="dicom-series", modality=str(getattr(first, "Modality", "")) or None,
                     spacing=(abs(step), *pixel_spacing), affine=affine, slice_axis=0, datasets=datasets,
                     dtype=_stored_dtype(first))
    meta.extra["files"] = [p for p, _ in headers]
    meta.extra["positions"] = [float(x) for x in positions]  # along the slice normal, mm, ascending
    return volume, meta


def _stored_values(values: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, float, float, bool]:
    """Integers for ``values`` under a rescale that fits 16 bits: the input's when it does, else a new one."""
    lo, hi = float(values.min()), float(values.max())
    for signed, (smin, smax) in ((True, (-32768, 32767)), (False, (0, 65535))):
        if (lo - intercept) / slope >= smin and (hi - intercept) / slope <= smax:
            break
    else:
        signed, (smin, smax) = False, (0, 65535)
        intercept = lo
        slope = max((hi - lo) / 65535.0, 1e-12)
    stored = np.clip(np.rint((values - intercept) / slope), smin, smax)
    return stored.astype(np.int16 if signed else np.uint16), slope, intercept, signed


def write_dicom_series(folder: str | os.PathLike, volume: np.ndarray, meta: ImageMeta,
                       description: str = "restored by restore-rwkv") -> Path:
    """Write ``volume`` (slice, row, column; physical units) as a series derived from ``meta.datasets``.

    Each file keeps the input's patient, study and geometry tags; the series gets a new
    SeriesInstanceUID, every image a new SOPInstanceUID, ImageType DERIVED\\SECONDARY, and
    a SeriesDescription that says it was restored. Pixels are stored uncompressed as 16-bit
    integers with the input's rescale when it covers the output range, else a new one.
    The folder is written whole or not at all.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim == 2:
        volume = volume[None]
    if meta.datasets is None or len(meta.datasets) != volume.shape[0]:
        count = 0 if meta.datasets is None else len(meta.datasets)
        raise InputError(folder, f"{volume.shape[0]} slice(s) to write but {count} DICOM header(s) to derive them from")
    check = np.isfinite(volume)
    if not check.all():
        raise InputError(folder, "refusing to write NaN or infinite values to DICOM")
    if folder.exists() and any(folder.iterdir()):
        raise InputError(folder, "output folder exists and is not empty")
    if meta.source is not None and folder.resolve() == Path(meta.source).resolve():
        raise InputError(folder, "refusing to write over the input series")
    series_uid = generate_uid()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for index, (header, values) in enumerate(zip(meta.datasets, volume)):
            ds = copy.deepcopy(header)  # Dataset.copy() is shallow: it would change the caller's headers
            if values.shape != (int(ds.Rows), int(ds.Columns)):
                raise InputError(folder, f"slice {index} has shape {values.shape}, its header says "
                                 f"{(int(ds.Rows), int(ds.Columns))}")
            slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
            intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
            stored, slope, intercept, signed = _stored_values(values, slope, intercept)
            sop_uid = generate_uid()
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = sop_uid
            ds.ImageType = ["DERIVED", "SECONDARY"]
            original = str(getattr(ds, "SeriesDescription", "")).strip()
            ds.SeriesDescription = (f"{original} ({description})" if original else description)[:64]
            ds.DerivationDescription = description[:1024]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleIntercept = f"{intercept:.10g}"
            for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "LossyImageCompression",
                            "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
                if keyword in ds:
                    delattr(ds, keyword)
            ds.PixelData = stored.tobytes()
            ds["PixelData"].VR = "OW"
            ds.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta) if hasattr(ds, "file_meta") else \
                pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.save_as(str(tmp / f"IM{index + 1:05d}.dcm"), enforce_file_format=True)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ----------------------------------------------------------------------------- ITK (MetaImage, NRRD)
def read_itk(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """MetaImage (.mha/.mhd) or NRRD through SimpleITK, as (slice, row, column) with LPS geometry."""
    sitk = _simpleitk(path)
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable {_suffix(path)} image ({str(exc).strip().splitlines()[-1]})") from None
    data = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    spacing = tuple(reversed(image.GetSpacing()))
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    affine = None
    if dim == 3:
        affine = np.eye(4)
        # array axis a (slice, row, column) is ITK index axis 2 - a
        for a in range(3):
            affine[:3, a] = direction[:, 2 - a] * image.GetSpacing()[2 - a]
        affine[:3, 3] = image.GetOrigin()
    meta = ImageMeta(source=path, format="itk", spacing=spacing, affine=affine,
                     slice_axis=0 if data.ndim == 3 else None, dtype=data.dtype,
                     extra={"origin": image.GetOrigin(), "direction": image.GetDirection(),
                            "itk_spacing": image.GetSpacing()})
    return data, meta


def write_itk(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write MetaImage or NRRD (by suffix), keeping spacing, origin and direction from ``meta``."""
    sitk = _simpleitk(path)
    path = Path(path)
    _refuse_input(path, meta)
    image = sitk.GetImageFromArray(np.asarray(array))
    if meta is not None and meta.extra.get("itk_spacing") is not None:
        image.SetSpacing(meta.extra["itk_spacing"])
        image.SetOrigin(meta.extra["origin"])
        image.SetDirection(meta.extra["direction"])
    with _atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp))
    return path


def _simpleitk(path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise InputError(path, "reading MetaImage/NRRD needs SimpleITK: pip install 'restore-rwkv[itk]'") from None
    return sitk


# ----------------------------------------------------------------------------- pictures and arrays
def read_picture(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """PNG (8/16-bit) or TIFF (any bit depth, one page or a stack), values as stored."""
    path = Path(path)
    try:
        if _suffix(path) == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                data = np.asarray(image)
            if image.mode == "I" and data.max(initial=0) <= 65535 and data.min(initial=0) >= 0:
                data = data.astype(np.uint16)  # Pillow widens 16-bit PNG to int32
            fmt = "png"
        else:
            import tifffile

            data = tifffile.imread(path)
            fmt = "tiff"
    except Exception as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3 and data.shape[-1] in (3, 4) and fmt == "png":
        raise InputError(path, "colour pictures are not supported; save a single-channel image")
    return data, ImageMeta(source=path, format=fmt, slice_axis=0 if data.ndim == 3 else None, dtype=data.dtype)


def write_picture(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write a 2-D uint8/uint16 array as PNG, or any 2-D/3-D array as TIFF, values unchanged."""
    path = Path(path)
    _refuse_input(path, meta)
    array = np.asarray(array)
    with _atomic_file(path) as tmp:
        if _suffix(path) == ".png":
            from PIL import Image

            if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
                raise InputError(path, f"PNG holds 2-D uint8 or uint16 images, got {array.dtype} {array.shape}")
            Image.fromarray(array).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, array)
    return path


def write_preview(path: str | os.PathLike, image: np.ndarray, modality: str | None = None,
                  window: tuple[float, float] | None = None) -> Path:
    """An 8-bit PNG of a 2-D image in physical units, through the modality's preview window."""
    from restore_rwkv.data.modality import get_convention

    image = np.asarray(image, dtype=np.float64)
    if window is None:
        window = get_convention(modality).preview_window if modality else (float(image.min()), float(image.max()))
    lo, hi = window
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return write_picture(path, np.rint(scaled * 255).astype(np.uint8))


def read_array(path: str | os.PathLike, key: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """NPY, or one array of an NPZ (``key``, else ``image``, else the only or first array); never unpickles."""
    path = Path(path)
    try:
        if _suffix(path) == ".npy":
            data = np.load(path, allow_pickle=False)
            meta = ImageMeta(source=path, format="npy")
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                if not keys:
                    raise InputError(path, "NPZ archive holds no arrays")
                chosen = key or ("image" if "image" in keys else keys[0])
                if chosen not in keys:
                    raise InputError(path, f"NPZ archive has no array {chosen!r} (has {keys})")
                data = archive[chosen]
            meta = ImageMeta(source=path, format="npz", extra={"keys": keys, "key": chosen})
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a readable NumPy file ({type(exc).__name__}: {exc})") from None
    if data.dtype == object:
        raise InputError(path, "array of Python objects; only numeric arrays are read")
    meta.dtype, meta.slice_axis = data.dtype, (0 if data.ndim == 3 else None)
    return data, meta


def write_array(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write ``.npy`` (or ``.npz`` with the array under ``image``)."""
    path = Path(path)
    _refuse_input(path, meta)
    with _atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            if _suffix(path) == ".npz":
                np.savez_compressed(fh, image=np.asarray(array))
            else:
                np.save(fh, np.asarray(array), allow_pickle=False)
    return path


def read_reference_bin(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """A training file of the reference implementation: a pickled 2-D array (or a dict holding one).

    Unpickling can run arbitrary code, so it happens only with ``allow_pickle=True``.
    """
    path = Path(path)
    if not allow_pickle:
        raise InputError(path, "reference .bin files are Python pickles, which can run code; "
                               "pass allow_pickle=True only for files you trust")
    import pickle

    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - explicit opt-in above
    except Exception as exc:
        raise InputError(path, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        arrays = [v for v in obj.values() if isinstance(v, np.ndarray)]
        obj = arrays[0] if len(arrays) == 1 else obj.get("image", obj.get("img"))
    if hasattr(obj, "numpy"):
        obj = obj.numpy()
    if not isinstance(obj, np.ndarray) or obj.dtype == object:
        raise InputError(path, f"pickle holds {type(obj).__name__}, not a numeric array")
    return obj, ImageMeta(source=path, format="bin", dtype=obj.dtype, slice_axis=0 if obj.ndim == 3 else None)


def write_image(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write by suffix: NIfTI, MetaImage/NRRD, PNG/TIFF, NPY/NPZ (a DICOM series: ``write_dicom_series``)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(path, array, meta)
    if suffix in ITK_SUFFIXES:
        return write_itk(path, array, meta)
    if suffix in PICTURE_SUFFIXES:
        return write_picture(path, array, meta)
    if suffix in ARRAY_SUFFIXES:
        return write_array(path, array, meta)
    raise InputError(path, f"cannot write {suffix or '(no extension)'!r} files")


# ----------------------------------------------------------------------------- helpers
def _refuse_input(path: Path, meta: ImageMeta | None) -> None:
    if meta is not None and meta.source is not None and Path(meta.source).exists():
        if path.exists() and path.resolve() == Path(meta.source).resolve():
            raise InputError(path, "refusing to overwrite the input file")


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
