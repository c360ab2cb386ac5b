"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) through SimpleITK (extra ``itk``), LPS geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta, writer_inputs
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def _simpleitk(path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise InputError(path, "reading MetaImage/NRRD needs SimpleITK: pip install 'restore-rwkv[itk]'") from None
    return sitk


def read_itk(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """A MetaImage or NRRD image as SimpleITK's array: (slice, row, column) for 3-D, with an LPS affine.

    Array axis ``a`` is ITK index axis ``dim - 1 - a``; the affine maps array indices to LPS mm.
    """
    sitk = _simpleitk(path)
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable {path.suffix.lower()} image ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"images with {image.GetNumberOfComponentsPerPixel()} components per pixel are not supported")
    data = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    if dim > 3:
        raise InputError(path, f"{dim}-D images are not supported")
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    itk_spacing, origin = image.GetSpacing(), image.GetOrigin()
    affine = np.eye(4)
    for a in range(dim):
        d = dim - 1 - a
        affine[:dim, a] = direction[:, d] * itk_spacing[d]
    affine[:dim, 3] = origin
    meta = ImageMeta(source=path, format="itk", spacing=tuple(reversed(itk_spacing)), affine=affine, space="LPS",
                     slice_axis=0 if data.ndim == 3 else None, dtype=data.dtype)
    return data, meta


def _itk_geometry(affine: np.ndarray, ndim: int) -> tuple[list[float], list[float], list[float]]:
    """ITK spacing, origin and row-major direction for an array of ``ndim`` axes under ``affine`` (LPS)."""
    spacing, columns = [], []
    for d in range(ndim):
        column = affine[:ndim, ndim - 1 - d]
        norm = float(np.linalg.norm(column))
        spacing.append(norm)
        columns.append(column / norm)
    direction = np.stack(columns, axis=1)
    return spacing, [float(v) for v in affine[:ndim, 3]], [float(v) for v in direction.ravel()]


def write_itk(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write MetaImage or NRRD (by suffix) with ``meta``'s geometry converted to LPS.

    Any array axis order works (a NIfTI's (x, y, z) included): spacing, direction and origin are
    derived from the affine so every voxel keeps its world position. A 2-D array whose
    geometry leaves the z = 0 plane (e.g. one oblique DICOM slice) is written as a
    one-slice 3-D image, as ITK itself reads such a slice.
    """
    sitk = _simpleitk(path)
    path, array, affine = writer_inputs(path, array, meta, "LPS")
    if affine is not None and array.ndim == 2:
        off_plane = np.abs(affine[2, :2]).max() > 1e-9 or abs(affine[2, 3]) > 1e-9 or np.abs(affine[:2, 2]).max() > 1e-9
        if off_plane:
            array = array[None]
            # array axis 0 is the new slice axis: the slice normal; rows and columns keep theirs
            affine = affine[:, [2, 0, 1, 3]]
    image = sitk.GetImageFromArray(array)
    if affine is not None:
        spacing, origin, direction = _itk_geometry(affine, array.ndim)
        try:
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(direction)
        except Exception as exc:
            raise InputError(path, f"ITK cannot store this geometry ({str(exc).strip().splitlines()[-1]})") from None
    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp))
    return path
