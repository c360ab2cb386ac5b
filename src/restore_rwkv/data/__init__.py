"""Medical image I/O, modality conventions, datasets and dataset preparation."""

from restore_rwkv.data.datasets import (
    PairedSliceDataset,
    PairRecord,
    RandomPatchPairs,
    SimulatedPairDataset,
    TaskBalancedSampler,
    central_slices,
    pair_folders,
    read_manifest,
    reference_layout,
    write_manifest,
)
from restore_rwkv.data.io import (
    ImageMeta,
    read_image,
    write_dicom_series,
    write_image,
    write_nifti,
    write_preview,
)
from restore_rwkv.data.modality import CONVENTIONS, TASKS, ModalityConvention, get_convention

__all__ = [
    "CONVENTIONS", "ImageMeta", "ModalityConvention", "PairRecord", "PairedSliceDataset", "RandomPatchPairs",
    "SimulatedPairDataset", "TASKS", "TaskBalancedSampler", "central_slices", "get_convention", "pair_folders",
    "read_image", "read_manifest", "reference_layout", "write_dicom_series", "write_image", "write_manifest",
    "write_nifti", "write_preview",
]
