"""Restoring image files: read, restore slice by slice, write in the input's terms.

The output keeps the input's geometry and metadata (docs/data.md: the writers convert the
affine to their own space), its physical units and its stored dtype (integers are rounded
and clipped to the dtype's range; DICOM to the range its rescale covers). A DICOM series
written as a DICOM series is streamed: headers first, then read, restore and write one
batch of slices at a time, so memory does not grow with the number of slices.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from restore_rwkv.data.io import (
    ImageMeta,
    file_suffix,
    iter_dicom_series,
    read_image,
    scan_dicom_series,
    write_dicom_series_stream,
    write_image,
)
from restore_rwkv.data.modality import ModalityConvention, get_convention
from restore_rwkv.inference.slices import (default_max_memory, inference_tile, plan_slices, resolve_device,
                                          restore_slices)
from restore_rwkv.metrics import resolve_convention
from restore_rwkv.models.card import ModelCard, load_model, resolve_weights, weights_name
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import refuse_input_target

# DICOM Modality values -> convention names
_DICOM_MODALITIES = {"CT": "ct", "MR": "mri", "PT": "pet", "PET": "pet"}


@dataclass
class RestoreResult:
    """What :func:`restore_file` did: paths, shape, slicing, and the slices kept for a preview.

    ``kept`` maps a slice index to ``(input, output)`` 2-D arrays in physical units.
    """

    input: Path
    output: Path
    shape: tuple[int, ...]
    axis: int | None
    modality: str
    tile: int | None
    seconds: float
    streamed: bool
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)


def choose_convention(card: ModelCard, image_modality: str | None, modality: str | None = None,
                      force: bool = False, source: Any = None) -> ModalityConvention:
    """The convention to restore with: ``modality`` (override), else the image's, else the card's only one.

    Refused (InputError naming ``source``) unless ``force``: a convention the card lacks, or an
    image whose DICOM Modality is not the chosen convention's. With ``force`` a modality the card
    lacks gets its default convention.
    """
    known = {get_convention(name).name: entry for name, entry in card.conventions.items()}
    label = str(image_modality or "").upper()
    if label in ("", "OT"):  # not said, or "other" (secondary captures): nothing to check against
        image_modality = None
    image = _DICOM_MODALITIES.get(label) if image_modality else None
    if modality is not None:
        try:
            wanted = get_convention(modality).name
        except ValueError as exc:
            raise InputError(None, f"--modality: {exc}") from None
    elif image is not None:
        wanted = image
    elif len(known) == 1:
        wanted = next(iter(known))
    else:
        raise InputError(source, f"the image does not say its modality and the weights know several "
                                 f"({', '.join(sorted(known))}); choose one with --modality")
    if image_modality and image != wanted and not force:
        raise InputError(source, f"DICOM Modality {image_modality} does not match the {wanted} convention "
                                 f"(weights trained on {', '.join(sorted(known))}); --force restores it anyway")
    if wanted not in known:
        if not force:
            raise InputError(source, f"the weights were trained on {', '.join(sorted(known))}, not {wanted} "
                                     "(--force restores it anyway with the default convention)")
        return get_convention(wanted)
    return resolve_convention(known[wanted], wanted)


def output_dtype(values: np.ndarray, meta: ImageMeta) -> np.dtype:
    """The dtype to write restored values of an image read as ``values`` with ``meta``.

    An integer array as read keeps its dtype. A float array whose file stored integers
    (``meta.dtype``, e.g. DICOM or scaled NIfTI) and whose values are all whole numbers gets
    int16, or int32 when its range does not fit int16; other float arrays keep a float dtype
    (float32 at least).
    """
    if values.dtype.kind in "iu":
        return values.dtype
    stored = np.dtype(meta.dtype) if meta.dtype is not None else values.dtype
    if stored.kind in "iu" and np.array_equal(values, np.rint(values)):
        info = np.iinfo(np.int16)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return np.dtype(np.int16) if info.min <= low and high <= info.max else np.dtype(np.int32)
    return np.dtype(np.float64) if values.dtype == np.float64 else np.dtype(np.float32)


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: integers rounded and clipped to the dtype's range; floats cast."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return np.asarray(values, dtype=dtype)


def dicom_value_range(header, stored: np.dtype | None) -> tuple[float, float] | None:
    """Physical values a DICOM header's rescale covers with its stored integer dtype (None: unknown)."""
    if stored is None or np.dtype(stored).kind not in "iu" or np.dtype(stored).itemsize > 2:
        return None
    slope, intercept = header.get("RescaleSlope"), header.get("RescaleIntercept")
    slope = float(slope) if slope not in (None, "") else 1.0
    intercept = float(intercept) if intercept not in (None, "") else 0.0
    info = np.iinfo(stored)
    ends = (info.min * slope + intercept, info.max * slope + intercept)
    return min(ends), max(ends)


def _is_series_output(path: Path) -> bool:
    return not file_suffix(path)


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    refuse_input_target(output, source)
    if output.exists() and not overwrite:
        if output.is_file() or any(output.iterdir()):
            raise InputError(output, "exists (--overwrite replaces it)")


def _model_label(card: ModelCard, weights: Path | None) -> str:
    name = weights_name(weights) if weights is not None else card.model
    return f"restored by restore-rwkv {name}"


def restore_file(input: str | os.PathLike, output: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                 model: nn.Module | None = None, card: ModelCard | None = None, modality: str | None = None,
                 axis: int | None = None, batch_size: int = 4, device: str | torch.device = "auto",
                 precision: str = "fp32", max_memory: int | None = None, tile: int | None = None,
                 force: bool = False, overwrite: bool = False, series_uid: str | None = None,
                 keep_slices: int = 0, model_name: str | None = None, quiet: bool = True) -> RestoreResult:
    """Restore one image file or DICOM series folder ``input`` into ``output``.

    The model comes from ``weights`` (file, card, folder or shipped name) or is given as
    ``model`` with its ``card``. The output format follows ``output``'s suffix; no suffix means
    a DICOM series folder (derived from the input's headers, or built from its geometry). A
    volume is cut along ``axis`` (default: ``meta.slice_axis``, the acquisition plane). The
    convention comes from the card (:func:`choose_convention`; ``modality`` and ``force``).
    ``keep_slices`` evenly spaced (input, output) slices are kept in the result for a preview.
    ``model_name`` names the model in a DICOM output's SeriesDescription (default: the weights' file stem).
    Slices run in tiles of ``tile`` pixels; by default of the card's training patch size
    (:func:`~restore_rwkv.inference.slices.inference_tile`; 0: whole slices).
    Bad input raises InputError naming the file before anything is written; outputs are
    written under a temporary name and renamed; an existing ``output`` needs ``overwrite``.
    """
    start = time.perf_counter()
    source, output = Path(input), Path(output)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    _check_output(output, source, overwrite)
    device = resolve_device(device)
    weights_path = None
    if model is None:
        if weights is None:
            raise ValueError("restore_file needs weights or a model with its card")
        weights_path = resolve_weights(weights)
        model, card = load_model(weights_path, device)
    elif card is None:
        raise ValueError("a model given directly needs its card (for the intensity convention)")
    model.eval()
    tile = inference_tile(card.patch_size, tile)
    budget = default_max_memory(device) if max_memory is None else int(max_memory)
    description = f"restored by restore-rwkv {model_name}" if model_name else _model_label(card, weights_path)

    if source.is_dir() and _is_series_output(output):
        meta = scan_dicom_series(source, series_uid=series_uid)
        convention = choose_convention(card, meta.modality, modality, force, source)
        if axis not in (None, 0):
            raise InputError(source, "a DICOM series is streamed slice by slice in its own plane (axis 0); "
                                     "write another format (e.g. OUT.nii.gz) to restore along another axis")
        shape = tuple(meta.extra["shape"])
        count = shape[0]
        keep = _kept_indices(count, keep_slices)
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        inputs: dict[int, np.ndarray] = {}

        def source_slices():
            for k, image in enumerate(iter_dicom_series(meta)):
                check_finite(image, meta.extra["files"][k])
                if k in keep:
                    inputs[k] = image
                yield image

        def written():
            restored = restore_slices(model, source_slices(), convention, batch_size, device, precision, budget,
                                      tile, total=count, quiet=quiet)
            for k, values in enumerate(restored):
                limits = dicom_value_range(meta.datasets[k], meta.dtype)
                if limits is not None:
                    values = np.clip(values, *limits)
                if k in keep:
                    kept[k] = (inputs.pop(k), values)
                yield values

        write_dicom_series_stream(output, written(), meta, description=description, replace=overwrite)
        plan = plan_slices(model, shape[1], shape[2], batch_size, budget, tile)
        return RestoreResult(source, output, shape, 0, convention.name, plan.tile, time.perf_counter() - start,
                             True, kept)

    values, meta = read_image(source, series_uid=series_uid)
    values = np.asarray(values)
    if values.ndim not in (2, 3):
        raise InputError(source, f"expected a 2-D image or 3-D volume, got {values.ndim}-D data of shape "
                                 f"{values.shape} (4-D series are not restored)")
    if values.dtype.kind not in "iuf":
        raise InputError(source, f"cannot restore {values.dtype} data")
    check_finite(values, source)
    convention = choose_convention(card, meta.modality, modality, force, source)
    if values.ndim == 3:
        axis = meta.slice_axis if axis is None else int(axis)
        axis = 0 if axis is None else axis
        if not -3 <= axis < 3:
            raise InputError(source, f"--axis {axis}: a volume has axes 0, 1 and 2")
        axis %= 3
        slices = np.moveaxis(values, axis, 0)
    else:
        axis, slices = None, values[None]
    count = slices.shape[0]
    keep = _kept_indices(count, keep_slices)
    restored_slices = np.empty(slices.shape, dtype=np.float32)
    for k, restored in enumerate(restore_slices(model, slices, convention, batch_size, device, precision, budget,
                                                tile, total=count, quiet=quiet)):
        restored_slices[k] = restored
    restored = restored_slices[0] if axis is None else np.moveaxis(restored_slices, 0, axis)
    dicom_out = _is_series_output(output) or file_suffix(output) in (".dcm", ".ima", ".dicom")
    if dicom_out:
        header = meta.datasets[0] if meta.datasets else None
        limits = dicom_value_range(header, meta.dtype) if header is not None else None
        out_values = np.clip(restored, *limits) if limits is not None else restored
    else:
        out_values = to_dtype(restored, output_dtype(values, meta))
    if _is_series_output(output):
        from restore_rwkv.data.io import write_dicom_series

        write_dicom_series(output, out_values, meta, description=description, replace=overwrite)
    elif dicom_out and meta.format == "dicom":
        from restore_rwkv.data.io import write_dicom

        write_dicom(output, out_values, meta, description=description)
    else:
        write_image(output, out_values, meta)
    kept = {k: (np.asarray(slices[k], dtype=np.float32), restored_slices[k]) for k in keep}
    plan = plan_slices(model, slices.shape[1], slices.shape[2], batch_size, budget, tile)
    return RestoreResult(source, output, tuple(values.shape), axis, convention.name, plan.tile,
                         time.perf_counter() - start, False, kept)


def _kept_indices(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` evenly spaced slice indices of ``count`` (the middle one first when one)."""
    if wanted <= 0 or count == 0:
        return []
    if wanted == 1:
        return [count // 2]
    return sorted({int(round(v)) for v in np.linspace(0.15 * (count - 1), 0.85 * (count - 1), wanted)})


def kept_slices_of(array: np.ndarray, meta: ImageMeta, axis: int | None, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Slices ``indices`` of ``array`` along ``axis`` (a reference's, for the preview), float32."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        return {k: array for k in indices}
    slices = np.moveaxis(array, 0 if axis is None else axis, 0)
    return {k: slices[k] for k in indices}
