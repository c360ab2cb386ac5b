"""Restoring images and volumes with trained weights: slices in batches, whole or tiled, files in their own terms.

``restore_volume`` restores an array; ``restore_file`` a file or DICOM series folder, written
in the input's format, geometry, units and stored dtype (docs/inference.md).
"""

from restore_rwkv.inference.files import RestoreResult, choose_convention, output_dtype, restore_file, to_dtype
from restore_rwkv.inference.preview import write_restore_preview
from restore_rwkv.inference.slices import (
    BYTES_PER_PIXEL_CHANNEL,
    SlicePlan,
    blend_ramp,
    default_max_memory,
    estimate_memory,
    forward_slices,
    inference_tile,
    plan_slices,
    restore_slices,
    restore_volume,
    tile_starts,
)
from restore_rwkv.utils.devices import PRECISIONS, resolve_device

__all__ = [
    "BYTES_PER_PIXEL_CHANNEL", "PRECISIONS", "RestoreResult", "SlicePlan", "blend_ramp", "choose_convention",
    "default_max_memory", "estimate_memory", "forward_slices", "inference_tile", "output_dtype", "plan_slices", "resolve_device", "restore_file",
    "restore_slices", "restore_volume", "tile_starts", "to_dtype", "write_restore_preview",
]
