"""Restoring arrays and image files in their own terms: units, geometry, stored dtype and metadata.

:func:`restore_array` is the in-memory entry point (an array in, the restored array in the same
units out); :func:`restore_file` reads a file or DICOM series, restores it the same way and writes
it in the input's format, geometry (docs/data.md: the writers convert the affine to their own
space), units and stored dtype (integers are rounded to the dtype, widened to int32 when int16
cannot hold the values; DICOM gets a rescale that covers them). A DICOM series written as a DICOM
series is streamed: headers first, then read, restore and write one batch of slices at a time,
so memory does not grow with the number of slices (an MR scale fit reads the series once more).

Intensities follow the card's policy for the image's modality (``restore_rwkv.modality``): the
scale of the scan (``restore_rwkv.data.intensity.input_scale``: PET units from the DICOM header
or ``pet_scale``, the MR fit on the model's input volume) divides the values before the network
and multiplies its output; values outside the normalisation range keep the input's value.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from restore_rwkv.data.intensity import input_scale
from restore_rwkv.data.io import (
    ImageMeta,
    file_suffix,
    iter_dicom_series,
    read_image,
    scan_dicom_series,
    write_dicom_series_stream,
    write_image,
)
from restore_rwkv.data.io.dicom import SPATIAL_RESAMPLING, Derivation, with_pixel_grid, IMAGE_PROCESSING
from restore_rwkv.inference.ensemble import check_self_ensemble, with_self_ensemble
from restore_rwkv.inference.slices import (SliceStats, as_slices, default_max_memory, inference_tile, model_input,
                                          plan_slices, resolve_device, restore_slices, restore_volume, slicing_axis)
from restore_rwkv.modality import ModalityConvention
from restore_rwkv.models.card import ModelCard, load_model, resolve_weights, weights_name
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import refuse_input_target


@dataclass
class RestoreResult:
    """What :func:`restore_file` did.

    ``shape`` is the input's; ``axis`` the slicing axis (None for a 2-D image); ``modality`` the
    policy's modality; ``scale`` the stored units per unit of the policy and ``scale_note`` how it
    was found; ``outside`` the voxels outside the normalisation range whose input values were kept;
    ``upsample`` the in-plane zero-fill factor. ``kept`` maps a slice index to ``(input, output)``
    2-D arrays in stored units (the input zero-filled when upsampled), for a preview;
    ``self_ensemble`` the transforms each slice was averaged over (``inference.ensemble``).
    """

    input: Path
    output: Path
    shape: tuple[int, ...]
    axis: int | None
    modality: str
    tile: int | None
    seconds: float
    streamed: bool
    scale: float = 1.0
    scale_note: str = ""
    outside: int = 0
    upsample: int = 1
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    self_ensemble: int = 1


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
    """``values`` in ``dtype``: integers rounded, the dtype widened (int32, then float32) rather than
    clipping values it cannot hold; floats cast."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        rounded = np.rint(values)
        low, high = (float(rounded.min()), float(rounded.max())) if rounded.size else (0.0, 0.0)
        for candidate in (dtype, np.dtype(np.int32)):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return rounded.astype(candidate)
        return np.asarray(values, dtype=np.float32)
    return np.asarray(values, dtype=dtype)


def _is_series_output(path: Path) -> bool:
    return not file_suffix(path)


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    refuse_input_target(output, source)
    if output.exists() and not overwrite:
        if output.is_file() or any(output.iterdir()):
            raise InputError(output, "exists (--overwrite replaces it)")


def check_upsample(upsample: int, convention: ModalityConvention | None = None, source: Any = None) -> int:
    """``upsample`` as an int (1: none); refused unless a whole number >= 1, and above 1 unless the
    policy is MRI's (zero-filling k-space is how an MR acquisition's matrix grows)."""
    if isinstance(upsample, bool) or int(upsample) != upsample or int(upsample) < 1:
        raise InputError(None, f"--upsample must be a whole number >= 1; got {upsample!r}")
    upsample = int(upsample)
    if upsample > 1 and convention is not None and convention.name != "mri":
        raise InputError(source, f"--upsample zero-fills MR k-space; this is a {convention.name} image "
                                 "(super-resolution is the MRI task)")
    return upsample


def _load(weights, model: nn.Module | None, card: ModelCard | None, device: torch.device
          ) -> tuple[nn.Module, ModelCard, Path | None]:
    if model is None:
        if weights is None:
            raise ValueError("restoring needs weights or a model with its card")
        path = resolve_weights(weights)
        model, card = load_model(path, device)
        return model, card, path
    if card is None:
        raise ValueError("a model given directly needs its card (for the intensity policy)")
    return model.eval(), card, None


def _upsampled_meta(meta: ImageMeta, axis: int | None, factor: int) -> ImageMeta:
    """``meta`` for the image zero-filled ``factor`` times in-plane: in-plane affine columns and spacing
    divided by ``factor``, the first voxel's centre kept (``physics.mri.zero_fill``), DICOM headers
    with the new Rows, Columns and PixelSpacing."""
    if factor == 1:
        return meta
    out = copy.copy(meta)
    in_plane = [a for a in range(3) if a != axis] if axis is not None else [0, 1]
    if meta.affine is not None:
        affine = np.array(meta.affine, dtype=np.float64)
        for a in in_plane:
            affine[:3, a] /= factor
        out.affine = affine
    if meta.spacing is not None:
        out.spacing = tuple(s / factor if a in in_plane else s for a, s in enumerate(meta.spacing))
    if meta.datasets:
        out.datasets = [with_pixel_grid(ds, factor) for ds in meta.datasets]
    out.extra = dict(meta.extra)
    if "shape" in meta.extra:
        count, rows, columns = meta.extra["shape"]
        out.extra["shape"] = (count, rows * factor, columns * factor)
    return out


def _derivation(card: ModelCard, name: str, convention: ModalityConvention, scale_note: str,
                upsample: int, self_ensemble: int = 1) -> Derivation:
    from restore_rwkv import __version__

    label = f"restored by restore-rwkv {name}"
    steps = f"{card.task} model {name} ({card.model}, restore-rwkv {__version__})"
    grid = f"; k-space zero-filled x{upsample} in-plane first" if upsample > 1 else ""
    if self_ensemble > 1:
        steps += f", averaged over {self_ensemble} rotations/flips of each slice"
    low, high = (f"{v:g}" for v in convention.keep_bounds)
    text = (f"Restored by the {steps}{grid}; intensities in {convention.unit} for the network ({scale_note}), "
            f"written back in the source's units; values below {low} or above {high} {convention.unit} "
            "kept from the source")
    codes = (IMAGE_PROCESSING, SPATIAL_RESAMPLING) if upsample > 1 else (IMAGE_PROCESSING,)
    return Derivation(label=label, description=text, codes=codes, software=f"restore-rwkv {__version__}")


def restore_array(array: np.ndarray, weights: str | os.PathLike | None = None, *, model: nn.Module | None = None,
                  card: ModelCard | None = None, modality: str | None = None,
                  spacing: Sequence[float] | None = None, units: str | None = None, scale: float | None = None,
                  axis: int | None = None, upsample: int = 1, tile: int | None = None, batch_size: int = 4,
                  device: str | torch.device = "auto", precision: str = "fp32", max_memory: int | None = None,
                  force: bool = False, quiet: bool = True, self_ensemble: int = 1) -> np.ndarray:
    """A 2-D image or 3-D volume restored, float32 in the input's units (what a viewer plug-in calls).

    ``weights``: a weights file, card, folder or shipped name (or give ``model`` with its ``card``).
    ``modality`` (``ct``, ``mri``, ``pet``) picks the card's policy when it knows several. ``units``:
    CT ``HU``; PET ``SUV``/``g/ml`` (the default) or ``Bq/ml`` with ``scale`` (Bq/ml per SUV); MR
    values in any unit (the policy fits its scale, so restore(a x) = a restore(x)). ``scale`` sets
    the stored units per unit of the policy instead. A volume is cut into slices along ``axis``,
    default the axis whose ``spacing`` (per array axis, mm) is largest when one is, else 0.
    ``upsample`` N zero-fills each slice's k-space to N times its matrix first (MRI ``x N``
    super-resolution of a low-resolution acquisition); the in-plane axes come back N times longer
    and the spacing is divided by N (the first voxel's centre stays). Values outside the policy's
    range keep the input's value. Slices run in tiles of ``tile`` pixels, by default the card's
    ``default_tile`` (0: whole slices). ``self_ensemble`` N (1, 2, 4, 8) averages each slice's output
    over N rotations/flips of it (``inference.ensemble``; N times the time). Raises InputError for
    input that cannot be right.
    """
    check_self_ensemble(self_ensemble)
    values = np.asarray(array)
    if values.ndim not in (2, 3):
        raise InputError(None, f"expected a 2-D image or 3-D volume, got shape {values.shape}")
    if values.dtype.kind not in "iuf":
        raise InputError(None, f"cannot restore {values.dtype} data")
    check_finite(values, None)
    device = resolve_device(device)
    model, card, _ = _load(weights, model, card, device)
    model = with_self_ensemble(model, self_ensemble)
    convention = card.convention_for(None, modality, force)
    upsample = check_upsample(upsample, convention)
    default_axis = None
    if spacing is not None and values.ndim == 3:
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3:
            raise InputError(None, f"spacing must give one value per array axis (3); got {spacing}")
        largest = int(np.argmax(spacing))
        default_axis = largest if sum(s == spacing[largest] for s in spacing) == 1 else None
    axis = slicing_axis(values.ndim, axis, default_axis)
    slices = as_slices(values, axis)
    found, _ = input_scale(convention, None, (model_input(s, upsample) for s in slices),
                           slices.size * upsample ** 2, scale=scale, units=units)
    restored, _, _ = _restore_stack(model, card, slices, convention, found, upsample, tile, batch_size, device,
                                    precision, max_memory, quiet, keep=())
    return restored[0] if axis is None else np.moveaxis(restored, 0, axis)


def _restore_stack(model: nn.Module, card: ModelCard, slices: np.ndarray, convention: ModalityConvention,
                   scale: float, upsample: int, tile: int | None, batch_size: int, device: torch.device,
                   precision: str, max_memory: int | None, quiet: bool, keep: Sequence[int]
                   ) -> tuple[np.ndarray, SliceStats, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """(N, H, W) stored values restored: (N, H·up, W·up) float32, the stats, and the kept (input, output) slices."""
    stats = SliceStats()
    out = restore_volume(model, slices, convention, 0, batch_size, device, precision, max_memory,
                         inference_tile(card.default_tile, tile), quiet, scale, upsample, stats)
    kept = {k: (model_input(np.asarray(slices[k], dtype=np.float32), upsample), out[k]) for k in keep}
    return out, stats, kept


def restore_file(input: str | os.PathLike, output: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                 model: nn.Module | None = None, card: ModelCard | None = None, modality: str | None = None,
                 axis: int | None = None, batch_size: int = 4, device: str | torch.device = "auto",
                 precision: str = "fp32", max_memory: int | None = None, tile: int | None = None,
                 force: bool = False, overwrite: bool = False, series_uid: str | None = None,
                 keep_slices: int = 0, model_name: str | None = None, quiet: bool = True,
                 pet_scale: float | None = None, upsample: int = 1, self_ensemble: int = 1) -> RestoreResult:
    """Restore one image file or DICOM series folder ``input`` into ``output``.

    The model comes from ``weights`` (file, card, folder or shipped name) or is given as
    ``model`` with its ``card``. The output format follows ``output``'s suffix; no suffix means
    a DICOM series folder (derived from the input's headers as PS3.3 asks, or built from its
    geometry). A volume is cut along ``axis`` (default: ``meta.slice_axis``, the acquisition
    plane). The intensity policy comes from the card (``ModelCard.convention_for``; ``modality``
    and ``force``); ``pet_scale`` gives PET's stored units per SUV where the file cannot.
    ``upsample`` N zero-fills each slice to N times its matrix first (see :func:`restore_array`);
    the output's geometry follows (spacing / N, the first voxel's centre kept; DICOM Rows,
    Columns and PixelSpacing). ``keep_slices`` evenly spaced (input, output) slices are kept in
    the result for a preview. ``model_name`` names the model in a DICOM output (default: the
    weights' name). Slices run in tiles of ``tile`` pixels; by default the card's ``default_tile``
    (:func:`~restore_rwkv.inference.slices.inference_tile`; 0: whole slices). ``self_ensemble`` N
    averages each slice's output over N rotations/flips (see :func:`restore_array`; the derived
    DICOM's description says so).
    Bad input raises InputError naming the file before anything is written; outputs are
    written under a temporary name and renamed; an existing ``output`` needs ``overwrite``.
    """
    start = time.perf_counter()
    source, output = Path(input), Path(output)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    _check_output(output, source, overwrite)
    check_upsample(upsample)
    inference_tile(None, tile)
    check_self_ensemble(self_ensemble)
    device = resolve_device(device)
    model, card, weights_path = _load(weights, model, card, device)
    model = with_self_ensemble(model, self_ensemble)
    name = model_name or (weights_name(weights_path) if weights_path is not None else card.model)

    if source.is_dir() and _is_series_output(output):
        return _restore_series_stream(source, output, model, card, name, start, modality=modality, axis=axis,
                                      batch_size=batch_size, device=device, precision=precision,
                                      max_memory=max_memory, tile=tile, force=force, overwrite=overwrite,
                                      series_uid=series_uid, keep_slices=keep_slices, quiet=quiet,
                                      pet_scale=pet_scale, upsample=upsample, self_ensemble=self_ensemble)

    values, meta = read_image(source, series_uid=series_uid)
    values = np.asarray(values)
    if values.ndim not in (2, 3):
        raise InputError(source, f"expected a 2-D image or 3-D volume, got {values.ndim}-D data of shape "
                                 f"{values.shape} (4-D series are not restored)")
    if values.dtype.kind not in "iuf":
        raise InputError(source, f"cannot restore {values.dtype} data")
    check_finite(values, source)
    convention = card.convention_for(meta.modality, modality, force, source)
    upsample = check_upsample(upsample, convention, source)
    try:
        axis = slicing_axis(values.ndim, axis, meta.slice_axis)
    except ValueError:
        raise InputError(source, f"--axis {axis}: a volume has axes 0, 1 and 2") from None
    slices = as_slices(values, axis)
    scale, note = input_scale(convention, meta, (model_input(s, upsample) for s in slices),
                              slices.size * upsample ** 2, scale=_pet_only(pet_scale, convention), source=source)
    keep = _kept_indices(slices.shape[0], keep_slices)
    restored_slices, stats, kept = _restore_stack(model, card, slices, convention, scale, upsample, tile,
                                                  batch_size, device, precision, max_memory, quiet, keep)
    restored = restored_slices[0] if axis is None else np.moveaxis(restored_slices, 0, axis)
    out_meta = _upsampled_meta(meta, axis, upsample)
    derivation = _derivation(card, name, convention, note, upsample, self_ensemble)
    dicom_out = _is_series_output(output) or file_suffix(output) in (".dcm", ".ima", ".dicom")
    out_values = restored if dicom_out else to_dtype(restored, output_dtype(values, meta))
    if _is_series_output(output):
        from restore_rwkv.data.io import write_dicom_series

        write_dicom_series(output, out_values, out_meta, description=derivation, replace=overwrite)
    elif dicom_out and meta.format == "dicom":
        from restore_rwkv.data.io import write_dicom

        write_dicom(output, out_values, out_meta, description=derivation)
    else:
        write_image(output, out_values, out_meta)
    plan = plan_slices(model, restored_slices.shape[1], restored_slices.shape[2], batch_size,
                       default_max_memory(device) if max_memory is None else max_memory,
                       inference_tile(card.default_tile, tile))
    return RestoreResult(source, output, tuple(values.shape), axis, convention.name, plan.tile,
                         time.perf_counter() - start, False, scale, note, stats.outside, upsample, kept,
                         self_ensemble)


def _restore_series_stream(source: Path, output: Path, model: nn.Module, card: ModelCard, name: str, start: float,
                           *, modality, axis, batch_size, device, precision, max_memory, tile, force, overwrite,
                           series_uid, keep_slices, quiet, pet_scale, upsample, self_ensemble) -> RestoreResult:
    """A DICOM series folder restored into a derived DICOM series folder, a batch of slices at a time."""
    meta = scan_dicom_series(source, series_uid=series_uid)
    convention = card.convention_for(meta.modality, modality, force, source)
    upsample = check_upsample(upsample, convention, source)
    if axis not in (None, 0):
        raise InputError(source, "a DICOM series is streamed slice by slice in its own plane (axis 0); "
                                 "write another format (e.g. OUT.nii.gz) to restore along another axis")
    count, rows, columns = meta.extra["shape"]
    files = meta.extra["files"]

    def slices():
        for k, image in enumerate(iter_dicom_series(meta)):
            check_finite(image, files[k])
            yield image

    # an MR scale is fitted on the whole volume before the first slice is restored: one more pass over the files
    scale, note = input_scale(convention, meta, (model_input(s, upsample) for s in slices()),
                              count * rows * columns * upsample ** 2, scale=_pet_only(pet_scale, convention),
                              source=source)
    keep = _kept_indices(count, keep_slices)
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    inputs: dict[int, np.ndarray] = {}
    stats = SliceStats()
    tile_side = inference_tile(card.default_tile, tile)
    budget = default_max_memory(device) if max_memory is None else int(max_memory)

    def remembered():
        for k, image in enumerate(slices()):
            if k in keep:
                inputs[k] = model_input(image, upsample)
            yield image

    def written():
        for k, values in enumerate(restore_slices(model, remembered(), convention, batch_size, device, precision,
                                                  budget, tile_side, total=count, quiet=quiet, scale=scale,
                                                  upsample=upsample, stats=stats)):
            if k in keep:
                kept[k] = (inputs.pop(k), values)
            yield values

    out_meta = _upsampled_meta(meta, 0, upsample)
    write_dicom_series_stream(output, written(), out_meta, description=_derivation(card, name, convention, note,
                                                                                      upsample, self_ensemble),
                              replace=overwrite)
    plan = plan_slices(model, rows * upsample, columns * upsample, batch_size, budget, tile_side)
    return RestoreResult(source, output, (count, rows, columns), 0, convention.name, plan.tile,
                         time.perf_counter() - start, True, scale, note, stats.outside, upsample, kept,
                         self_ensemble)


def _pet_only(pet_scale: float | None, convention: ModalityConvention) -> float | None:
    """``pet_scale`` for a PET image; None for the others (a batch may mix modalities)."""
    return pet_scale if convention.scaling.kind == "suv" else None


def _kept_indices(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` evenly spaced slice indices of ``count`` (the middle one first when one)."""
    if wanted <= 0 or count == 0:
        return []
    if wanted == 1:
        return [count // 2]
    return sorted({int(round(v)) for v in np.linspace(0.15 * (count - 1), 0.85 * (count - 1), wanted)})


def kept_slices_of(array: np.ndarray, axis: int | None, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Slices ``indices`` of ``array`` along ``axis`` (a reference's, for the preview), float32."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        return {k: array for k in indices}
    slices = np.moveaxis(array, 0 if axis is None else axis, 0)
    return {k: slices[k] for k in indices}
