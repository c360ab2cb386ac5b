"""Restoring images and volumes with trained weights: slices in batches, whole or tiled, files in their own terms.

``restore_array`` restores an array in its own units; ``restore_volume`` an array already in the
units of a given policy and scale; ``restore_file`` a file or DICOM series folder, written in the
input's format, geometry, units and stored dtype; ``restore_files`` a batch of them, failures
reported and the rest restored (docs/inference.md); each can average its outputs over rotations
and flips of the input (``SelfEnsemble``).
"""

from restore_rwkv.inference.ensemble import SELF_ENSEMBLE_SIZES, SelfEnsemble, with_self_ensemble
from restore_rwkv.inference.batch import BatchItem, expand_inputs, output_targets, restore_files, shard_indices
from restore_rwkv.inference.files import RestoreResult, output_dtype, restore_array, restore_file, to_dtype
from restore_rwkv.inference.preview import write_restore_preview
from restore_rwkv.inference.slices import (
    BYTES_PER_PIXEL_CHANNEL,
    SlicePlan,
    SliceStats,
    blend_ramp,
    default_max_memory,
    estimate_memory,
    forward_slices,
    inference_tile,
    model_input,
    plan_slices,
    restore_slices,
    restore_volume,
    tile_starts,
)
from restore_rwkv.utils.devices import PRECISIONS, resolve_device

__all__ = [
    "BYTES_PER_PIXEL_CHANNEL", "BatchItem", "PRECISIONS", "RestoreResult", "SELF_ENSEMBLE_SIZES", "SelfEnsemble",
    "SlicePlan", "SliceStats", "blend_ramp", "default_max_memory", "estimate_memory", "expand_inputs",
    "forward_slices", "inference_tile", "model_input", "output_dtype", "output_targets", "plan_slices",
    "resolve_device", "restore_array", "restore_file", "restore_files", "restore_slices", "restore_volume",
    "shard_indices", "tile_starts", "to_dtype", "with_self_ensemble", "write_restore_preview",
]
