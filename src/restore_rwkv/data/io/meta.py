"""``ImageMeta``: what a reader learnt besides the pixels, with its world coordinate space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from restore_rwkv.utils.files import refuse_input_target

# RAS (NIfTI: +x right, +y anterior, +z superior) and LPS (DICOM, ITK: +x left, +y posterior,
# +z superior) differ by the sign of x and y.
FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACES = ("RAS", "LPS")


@dataclass
class ImageMeta:
    """Metadata of an image read from a file.

    Attributes:
        source: the file or folder read.
        format: ``nifti``, ``dicom``, ``dicom-series``, ``itk``, ``png``, ``tiff``, ``npy``, ``npz``, ``bin``.
        modality: ``CT``, ``MR``, ``PT`` ... when the file says so, else None.
        spacing: voxel size along each array axis (mm), when known.
        affine: 4x4 matrix from array index (in the array's own axis order) to world mm, in ``space``.
        space: ``"RAS"`` (NIfTI) or ``"LPS"`` (DICOM, ITK): the world coordinates of ``affine``.
        slice_axis: the array axis that holds slices of a volume (None for a 2-D image).
        header: the NIfTI header (nibabel), kept for writing NIfTI.
        datasets: DICOM headers without pixel data, one per slice (series) or one per file.
        dtype: the stored dtype of the pixels.
        extra: anything format-specific (DICOM file list and slice positions, NPZ keys, ...).
    """

    source: Path | None = None
    format: str = "npy"
    modality: str | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    space: str | None = None
    slice_axis: int | None = None
    header: Any = None
    datasets: list | None = None
    dtype: np.dtype | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.space is not None and self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.affine is not None and self.space is None:
            raise ValueError("an affine needs its coordinate space ('RAS' or 'LPS')")

    def affine_in(self, space: str) -> np.ndarray | None:
        """The index -> world affine in ``space`` (``"RAS"`` or ``"LPS"``), or None when unknown."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if self.affine is None:
            return None
        affine = np.asarray(self.affine, dtype=np.float64)
        return affine.copy() if space == self.space else FLIP_XY @ affine


def voxel_centres(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (..., 3) of every voxel centre of an array of ``shape`` (2-D or 3-D)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    index = np.stack(list(grids) + [np.zeros(shape)] * (3 - len(shape)) + [np.ones(shape)], axis=-1)
    return (index @ np.asarray(affine, dtype=np.float64).T)[..., :3]


def writer_inputs(path, array, meta: ImageMeta | None, space: str) -> tuple[Path, np.ndarray, np.ndarray | None]:
    """What a geometry-aware writer starts from: the target path (checked not to be the input), the
    array (float16 widened to float32, which NIfTI and ITK lack) and ``meta``'s affine in ``space``."""
    path = Path(path)
    refuse_input_target(path, None if meta is None else meta.source)
    array = np.asarray(array)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return path, array, (meta.affine_in(space) if meta is not None else None)
