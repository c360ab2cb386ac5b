"""Medical image I/O, the scale of a scan under its intensity policy, datasets and dataset preparation
(the policies themselves live in ``restore_rwkv.modality``)."""

from restore_rwkv.data.datasets import (
    PairedSliceDataset,
    PairRecord,
    RandomPatchPairs,
    SimulatedPairDataset,
    TaskBalancedSampler,
    VolumeCache,
    central_slices,
    pair_folders,
    read_manifest,
    reference_layout,
    write_manifest,
)
from restore_rwkv.data.io import (
    IMAGE_SUFFIXES,
    ImageMeta,
    is_image_file,
    list_dicom_series,
    read_array,
    read_dicom,
    read_dicom_series,
    read_image,
    read_itk,
    read_nifti,
    read_nifti_canonical,
    read_picture,
    read_reference_bin,
    write_array,
    write_dicom,
    write_dicom_series,
    write_image,
    write_itk,
    write_nifti,
    write_picture,
    write_preview,
)
from restore_rwkv.data.prepare import PreparationReport, prepare_aapm, prepare_ixi, prepare_simulated

__all__ = [
    "IMAGE_SUFFIXES", "ImageMeta", "PairRecord", "PairedSliceDataset",
    "PreparationReport", "RandomPatchPairs", "SimulatedPairDataset", "TaskBalancedSampler", "VolumeCache",
    "central_slices", "is_image_file", "list_dicom_series", "pair_folders", "prepare_aapm",
"prepare_ixi", "prepare_simulated", "read_array", "read_dicom", "read_dicom_series",
    "read_image", "read_itk", "read_manifest", "read_nifti", "read_nifti_canonical", "read_picture",
    "read_reference_bin", "reference_layout", "write_array", "write_dicom", "write_dicom_series", "write_image",
    "write_itk", "write_manifest", "write_nifti", "write_picture", "write_preview",
]
