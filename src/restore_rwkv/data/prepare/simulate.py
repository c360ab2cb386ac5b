"""``prepare simulate``: any HQ images, volumes and DICOM series -> pairs by a task's degradation."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from restore_rwkv.data.datasets import central_slices
from restore_rwkv.data.io import (
    ImageMeta,
    file_suffix,
    is_image_file,
    read_image,
)
from restore_rwkv.data.prepare.writer import (
    CT_AIR_HU,
    SIMULATE_SPLIT,
    PairWriter,
    PreparationReport,
    Skipped,
    SourceInput,
    check_job,
    checked_degradation,
    ct_air_floor,
    failure_reason,
    slice_seed,
    source_folder,
    visible_files,
    volume_scale,
    write_pairs,
)
from restore_rwkv.modality import TASKS
from restore_rwkv.physics import DEGRADATION_OPTIONS, default_degradation
from restore_rwkv.utils.errors import InputError, check_finite


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-.") or "unnamed"


def _square(image: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``image`` centred on a square canvas of ``fill``, and the slices that crop it back."""
    h, w = image.shape
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    crop = (slice(top, top + h), slice(left, left + w))
    if h == w:
        return image, crop
    out = np.full((n, n), fill, dtype=image.dtype)
    out[crop] = image
    return out, crop


def _in_plane_spacing(meta: ImageMeta, ndim: int) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm of the slices of an image read with ``meta``, when known."""
    if meta.spacing is None:
        return None
    spacing = [float(v) for v in meta.spacing]
    if ndim == 3 and len(spacing) == 3:
        spacing.pop(meta.slice_axis if meta.slice_axis is not None else 0)
    if len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return spacing[0], spacing[1]


def _dicom_header(path: Path):
    """The header of a DICOM file without its pixels (InputError for a damaged file)."""
    from restore_rwkv.data.io.dicom import _dcmread

    return _dcmread(path, stop_before_pixels=True)


def _simulation_inputs(src: Path, series_uid: str | None, split_by: str
                       ) -> tuple[list[SourceInput], list[Skipped], list[Skipped]]:
    """The inputs under ``src``: one per DICOM series (files grouped by SeriesInstanceUID, across
    folders) and one per other image file. The subject of a series is its PatientID
    (``split_by="patient"``) or the series itself (``"series"``); of another file, the file."""
    from restore_rwkv.data.io.dicom import (
        DICOM_SUFFIXES,
        _non_image_reason,
        looks_like_dicom,
    )

    failures: list[Skipped] = []
    ignored: list[Skipped] = []
    series: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    others: list[Path] = []
    for path in visible_files(src, ignored):
        if file_suffix(path) in DICOM_SUFFIXES or (not is_image_file(path) and looks_like_dicom(path)) \
                or path.name.upper() == "DICOMDIR":
            try:
                header = _dicom_header(path)
            except InputError as exc:
                failures.append(Skipped(str(path), failure_reason(exc, str(path))))
                continue
            reason = _non_image_reason(header)
            if reason:
                ignored.append(Skipped(str(path), reason))
                continue
            uid = str(header.get("SeriesInstanceUID", "")) or f"(no series UID) {path}"
            if series_uid is not None and uid != series_uid:
                ignored.append(Skipped(str(path), f"series {uid} is not the chosen --series-uid"))
                continue
            series[uid].append((path, header))
        elif series_uid is not None and is_image_file(path):
            ignored.append(Skipped(str(path), "not a DICOM file of the chosen --series-uid"))
        elif is_image_file(path):
            others.append(path)
        else:
            ignored.append(Skipped(str(path), "not an image file"))
    if series_uid is not None and not series:
        raise InputError(src, f"no DICOM image of series {series_uid}")

    inputs: list[SourceInput] = []
    names: set[str] = set()

    def unique(name: str, alternative: str) -> str:
        if name in names:
            name = f"{name}-{alternative}"
        while name in names:
            name += "-"
        names.add(name)
        return name

    stems = [_safe_name(str(p.relative_to(src))[: len(str(p.relative_to(src))) - len(file_suffix(p))]
                        .replace(os.sep, "_")) for p in others]
    for path, stem in zip(others, stems):
        name = stem if stems.count(stem) == 1 else f"{stem}-{file_suffix(path).lstrip('.').replace('.', '-')}"
        name = unique(name, "file")
        inputs.append(SourceInput(str(path), f"file:{name}", ("file", path, name)))
    for uid, items in sorted(series.items(), key=lambda kv: (str(kv[1][0][0]), kv[0])):
        header = items[0][1]
        folders = sorted({str(p.parent) for p, _ in items})
        patient = str(header.get("PatientID", "") or "").strip() or Path(folders[0]).name
        number = str(header.get("SeriesNumber", "") or "").strip() or uid.rsplit(".", 1)[-1][-6:]
        name = unique(f"{_safe_name(patient)}_{_safe_name(number)}", _safe_name(uid.rsplit(".", 1)[-1][-6:]))
        where = os.path.commonpath(folders)
        label = f"{where} (series {uid})" if len(items) > 1 else str(items[0][0])
        subject = f"patient:{patient}" if split_by == "patient" else f"series:{uid}"
        inputs.append(SourceInput(label, subject, ("series", [p for p, _ in items], name)))
    return inputs, failures, ignored


def _pet_to_suv(data: np.ndarray, meta: ImageMeta, label: str, force: bool, notes: list[str]) -> np.ndarray:
    """PET DICOM values in SUV (``data.intensity.pet_header_scale``: Bq/ml converted with the header's
    weight and dose, GML kept); with ``force`` a header that cannot say keeps its stored values."""
    from restore_rwkv.data.intensity import pet_header_scale

    try:
        found = pet_header_scale(meta, label, advice="pass --force to keep them as stored")
    except InputError as exc:
        if not force:
            raise
        notes.append(f"{label}: kept in stored units ({exc.problem})")
        return data
    if found is None:
        return data
    scale, how = found
    if scale != 1.0:
        notes.append(f"{label}: {how}")
    return data * np.float32(1.0 / scale)


def prepare_simulated(task: str, src: str | Path, out: str | Path, slices: int = 100, seed: int = 0,
                      split: Sequence[float] = SIMULATE_SPLIT, fmt: str = "npy", overwrite: bool = False,
                      quiet: bool = False, series_uid: str | None = None, force: bool = False,
                      split_by: str = "patient", **options) -> PreparationReport:
    """Any folder of HQ images, volumes and DICOM series -> (LQ, HQ) pairs by ``task``'s degradation.

    DICOM files are grouped into series (by SeriesInstanceUID, across folders) and split by
    patient (PatientID; ``split_by="series"`` for anonymised data that share one ID); other
    files are split by file. Pairs are named ``<patient>_<series number>_<slice>`` (DICOM) or
    ``<file>_<slice>``. For CT the pixel spacing comes from each image's metadata unless
    ``pixel_size_mm`` is given (0.7 mm when an image has none; counted in the notes), HU below
    -1024 become -1024 in both images, and LQ equals HQ on that out-of-field padding. PET DICOM
    in Bq/ml is converted to SUV. A DICOM whose Modality is not the task's (an MR given to
    ``ct_denoise``), PET without SUV information, or a ``src`` that is itself a ``prepare``
    output are refused unless ``force``.
    """
    from restore_rwkv.data.io import read_dicom, read_dicom_files
    from restore_rwkv.modality import get_task

    try:
        task = get_task(task).name
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if split_by not in ("patient", "series"):
        raise InputError(None, f"--split-by must be 'patient' or 'series', got {split_by!r}")
    check_job(seed, slices)
    src = source_folder(src, out, overwrite)
    if (src / "manifest.csv").exists() and (src / "summary.json").exists() and not force:
        raise InputError(src, "is the output of an earlier prepare (manifest.csv, summary.json); its LQ images "
                              "would be degraded again (pass --force to use it anyway)")
    fixed_pixel = options.pop("pixel_size_mm", None)
    if fixed_pixel is not None and (not np.isfinite(float(fixed_pixel)) or float(fixed_pixel) <= 0):
        raise InputError(None, f"--pixel-size-mm must be a finite number > 0, got {fixed_pixel}")
    checked_degradation(task, **options)  # a bad option fails here, before any input is read
    inputs, failures, ignored = _simulation_inputs(src, series_uid, split_by)
    if not inputs:
        found = f" ({'; '.join(str(f) for f in (failures + ignored)[:3])})" if failures or ignored else ""
        raise InputError(src, f"no image files in this folder{found}")
    degradations: dict[float | None, object] = {}
    no_spacing: list[str] = []
    remarks: list[str] = []

    def degradation_for(pixel_mm: float | None):
        key = round(float(pixel_mm), 6) if pixel_mm is not None else None
        if key not in degradations:
            extra = {"pixel_size_mm": key} if task == "ct_denoise" and key is not None else {}
            degradations[key] = default_degradation(task, **options, **extra)
        return degradations[key]

    def read(source: SourceInput) -> tuple[np.ndarray, ImageMeta]:
        kind, what, _ = source.item
        if kind == "file":
            return read_image(what)
        if len(what) == 1:
            return read_dicom(what[0])
        return read_dicom_files(what, source=what[0].parent)

    def write_input(writer: PairWriter, number: int, source: SourceInput) -> None:
        name = source.item[2]
        data, meta = read(source)
        expected = TASKS[task].dicom_modalities
        if meta.modality and meta.modality.upper() not in expected and not force:
            raise InputError(source.label, f"is a {meta.modality} image, not {'/'.join(expected)} as task {task} "
                                           "needs (pass --force to use it anyway)")
        data = np.asarray(data)
        if data.dtype.kind == "c":
            raise InputError(source.label, "holds complex values; give magnitude images")
        if data.dtype.kind not in "biuf":
            raise InputError(source.label, f"holds {data.dtype} values, not numbers")
        data = np.squeeze(data.astype(np.float32, copy=False))
        if data.ndim not in (2, 3) or min(data.shape) < 2:
            raise InputError(source.label, f"expected a 2-D image or a 3-D volume, got shape {data.shape}")
        check_finite(data, source.label)
        if task == "pet":
            data = _pet_to_suv(data, meta, source.label, force, remarks)
        axis = (meta.slice_axis if meta.slice_axis is not None else 0) if data.ndim == 3 else None
        pixel_mm = fixed_pixel
        if task == "ct_denoise" and pixel_mm is None:
            spacing = _in_plane_spacing(meta, data.ndim)
            if spacing is None:
                no_spacing.append(source.label)
            elif abs(spacing[0] - spacing[1]) > 0.01 * max(spacing):
                raise InputError(source.label, f"pixels are not square ({spacing[0]:g} x {spacing[1]:g} mm); "
                                               "the CT simulation needs square pixels")
            else:
                pixel_mm = spacing[0]
        degrade = degradation_for(pixel_mm)
        if axis is None:
            if float(data.max()) == float(data.min()):
                raise InputError(source.label, "the image is flat (one value everywhere)")
            images = [(None, data)]
        else:
            indices = central_slices(data, axis, slices)
            if not indices:
                raise InputError(source.label, "no slice holds signal (the volume is empty or flat)")
            images = [(i, np.take(data, i, axis=axis)) for i in indices]
        pairs = []
        for index, image in images:
            try:
                hq, lq = _simulate_slice(task, degrade, image, slice_seed(seed, number, index))
            except ValueError as exc:
                raise InputError(source.label, f"simulation failed ({exc})") from None
            pairs.append((index, lq, hq))
        scale = volume_scale(task, [lq for _, lq, _ in pairs], source.label)
        for index, lq, hq in pairs:
            suffix = "" if index is None else f"_{index:03d}"
            writer.write(task, None, f"{name}{suffix}", lq, hq, meta if fmt == "nifti" else None, index,
                         subject=source.subject, scale=scale)

    def notes() -> list[str]:
        out = list(remarks)
        if no_spacing:
            out.append(f"{len(no_spacing)} input(s) have no pixel spacing in their metadata; the CT simulation took "
                       f"{DEGRADATION_OPTIONS['ct_denoise']['pixel_size_mm']} mm for them (set --pixel-size-mm): "
                       + ", ".join(no_spacing[:3]) + (" ..." if len(no_spacing) > 3 else ""))
        return out

    return write_pairs(src, out, fmt, overwrite, quiet, inputs, f"{task} inputs", write_input, split, seed,
                        failures=failures, ignored=ignored, notes=notes)


def _simulate_slice(task: str, degrade, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(HQ, LQ) of one slice. CT: padding below -1024 HU becomes air in both, LQ equals HQ there;
    CT and PET slices are simulated on a square canvas (air / zero) and cropped back."""
    if task == "ct_denoise":
        padding = image < CT_AIR_HU
        (hq,) = ct_air_floor(image)
        square, crop = _square(hq, CT_AIR_HU)
        lq = np.asarray(degrade(square, seed=seed), np.float32)[crop]
        lq[padding] = hq[padding]  # no signal outside the scan field: both images agree there
        return hq, lq
    if task == "pet":
        square, crop = _square(image, 0.0)
        return image, np.asarray(degrade(square, seed=seed), np.float32)[crop]
    return image, degrade(image, seed=seed)
