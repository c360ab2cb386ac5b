"""One table from file suffixes to readers and writers, and the two entry points over it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from restore_rwkv.data.io import arrays, dicom, itk, nifti, picture
from restore_rwkv.data.io.meta import ImageMeta
from restore_rwkv.utils.errors import InputError


@dataclass(frozen=True)
class ImageFormat:
    """A file format: its name, suffixes (lower case), reader and writer (None: cannot write)."""

    name: str
    suffixes: tuple[str, ...]
    reader: Callable[..., tuple[np.ndarray, ImageMeta]]
    writer: Callable[..., Path] | None


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("nifti", (".nii", ".nii.gz"), nifti.read_nifti, nifti.write_nifti),
    ImageFormat("dicom", dicom.DICOM_SUFFIXES, dicom.read_dicom, dicom.write_dicom),
    ImageFormat("itk", itk.ITK_SUFFIXES, itk.read_itk, itk.write_itk),
    ImageFormat("picture", picture.PICTURE_SUFFIXES, picture.read_picture, picture.write_picture),
    ImageFormat("array", arrays.ARRAY_SUFFIXES, arrays.read_array, arrays.write_array),
    ImageFormat("reference-bin", (".bin",), arrays.read_reference_bin, None),
)
# Suffixes of files that hold images (the reference's .bin pickles are not listed: they need an opt-in).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS if f.name != "reference-bin" for s in f.suffixes)


def file_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix that names a format (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def format_of(path: str | os.PathLike) -> ImageFormat | None:
    """The format of ``path`` by its suffix (a DICOM file without suffix by its preamble), else None."""
    suffix = file_suffix(path)
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    if Path(path).is_file() and dicom.looks_like_dicom(Path(path)):
        return FORMATS[1]
    return None


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose suffix is one of IMAGE_SUFFIXES (what dataset and preparation scans pick up)."""
    return file_suffix(path) in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike, *, allow_pickle: bool = False,
               series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read any supported image as ``(array, ImageMeta)``; a folder is read as one DICOM series.

    ``series_uid`` picks a series in a folder holding several; ``allow_pickle`` is needed for
    the reference's ``.bin`` files (pickles can run code).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return dicom.read_dicom_series(path, series_uid=series_uid)
    fmt = format_of(path)
    if fmt is None:
        raise InputError(path, f"unsupported file type {file_suffix(path) or '(no extension)'!r}")
    if fmt.name == "reference-bin":
        return fmt.reader(path, allow_pickle=allow_pickle)
    return fmt.reader(path)


def write_image(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write by suffix (NIfTI, DICOM file, MetaImage/NRRD, PNG/TIFF, NPY/NPZ); no suffix: a DICOM series folder.

    Geometry in ``meta`` is converted to the target format's coordinate space.
    """
    path = Path(path)
    if not file_suffix(path):
        return dicom.write_dicom_series(path, array, meta)
    fmt = format_of(path)
    if fmt is None or fmt.writer is None:
        raise InputError(path, f"cannot write {file_suffix(path)!r} files")
    return fmt.writer(path, array, meta)
