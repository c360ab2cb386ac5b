"""Readers and writers of medical images that carry ``(array, ImageMeta)``.

Readers return the array in the format's own axis order (NIfTI as nibabel gives it, (x, y,
z); a DICOM series, multi-frame DICOM and ITK images as (slice, row, column)) and an
``ImageMeta`` whose affine maps array indices to world millimetres in a stated space (RAS
for NIfTI, LPS for DICOM and ITK). Writers convert that geometry to their own space, so an
image read from one format and written to another keeps every voxel's world position.

One module per format family (``nifti``, ``dicom``, ``itk``, ``picture``, ``arrays``) and one
table from suffixes to them (``registry``). Every failure a user can cause raises
:class:`~restore_rwkv.utils.errors.InputError` naming the file; writers go through a
temporary name (``restore_rwkv.utils.files``) and never replace the input.
"""

from restore_rwkv.data.io.arrays import read_array, read_reference_bin, write_array
from restore_rwkv.data.io.dicom import (
    iter_dicom_series,
    list_dicom_series,
    read_dicom,
    read_dicom_files,
    read_dicom_series,
    scan_dicom_series,
    write_dicom,
    write_dicom_series,
    write_dicom_series_stream,
)
from restore_rwkv.data.io.itk import read_itk, write_itk
from restore_rwkv.data.io.meta import ImageMeta, voxel_centres
from restore_rwkv.data.io.nifti import read_nifti, read_nifti_canonical, write_nifti
from restore_rwkv.data.io.picture import read_picture, write_picture, write_preview
from restore_rwkv.data.io.registry import (
    FORMATS,
    IMAGE_SUFFIXES,
    ImageFormat,
    file_suffix,
    format_of,
    is_image_file,
    read_image,
    write_image,
)

__all__ = [
    "FORMATS", "IMAGE_SUFFIXES", "ImageFormat", "ImageMeta", "file_suffix", "format_of", "is_image_file",
    "iter_dicom_series", "list_dicom_series", "read_array", "read_dicom", "read_dicom_files", "read_dicom_series", "read_image", "read_itk", "read_nifti",
    "read_nifti_canonical", "read_picture", "read_reference_bin", "scan_dicom_series", "voxel_centres", "write_array", "write_dicom",
    "write_dicom_series", "write_dicom_series_stream", "write_image", "write_itk", "write_nifti", "write_picture", "write_preview",
]
