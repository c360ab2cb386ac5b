"""NIfTI-1/2 volumes through nibabel: affine (RAS), header and stored dtype kept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta, writer_inputs
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """A NIfTI image as stored (x, y, z[, t]); scaling applied (then float32), RAS affine."""
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
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    zooms = tuple(float(z) for z in header.get_zooms()[: data.ndim])
    slice_axis = int(np.argmax(np.abs(affine[2, :3]))) if data.ndim >= 3 else None
    meta = ImageMeta(source=path, format="nifti", spacing=zooms, affine=affine, space="RAS", slice_axis=slice_axis,
                     header=header, dtype=header.get_data_dtype())
    return data, meta


def read_nifti_canonical(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """A 3-D NIfTI volume reoriented to RAS+ (nibabel's closest canonical), float32; axis 2 is axial."""
    import nibabel as nib

    path = Path(path)
    data, meta = read_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D volume, got {data.ndim}-D data of shape {data.shape}")
    image = nib.as_closest_canonical(nib.Nifti1Image(data, meta.affine, meta.header))
    meta.affine = np.asarray(image.affine, dtype=np.float64)
    meta.header = image.header.copy()
    meta.spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    meta.slice_axis = 2
    return np.asarray(image.dataobj, dtype=np.float32), meta


def write_nifti(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write ``array`` (same axis order as the image ``meta`` describes) as NIfTI; returns the path.

    The affine of ``meta`` is converted to RAS whatever the format it came from (a DICOM
    series' LPS affine included), so every voxel keeps its world position; a NIfTI header of
    ``meta`` is kept (units, description, codes) with the dtype of ``array`` and no scaling.
    """
    import nibabel as nib

    path, array, affine = writer_inputs(path, array, meta, "RAS")
    header = meta.header.copy() if meta is not None and meta.header is not None else None
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine, header)
    image.header.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    if affine is not None:
        # scanner-based geometry (code 1) unless the source header said otherwise
        sform_code = int(header["sform_code"]) if header is not None and int(header["sform_code"]) > 0 else 1
        qform_code = int(header["qform_code"]) if header is not None and int(header["qform_code"]) > 0 else 1
        image.set_sform(affine, code=sform_code)
        image.set_qform(affine, code=qform_code)
    with atomic_file(path) as tmp:
        nib.save(image, str(tmp))
    return path
