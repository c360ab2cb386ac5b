"""``prepare aapm``: AAPM-Mayo full- and quarter-dose CT series -> CT denoising pairs by slice position."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from restore_rwkv.data.io import (
    ImageMeta,
    read_dicom_series,
)
from restore_rwkv.data.prepare.writer import (
    AAPM_SPLIT,
    PairWriter,
    PreparationReport,
    Skipped,
    SourceInput,
    check_job,
    ct_air_floor,
    source_folder,
    write_pairs,
)
from restore_rwkv.utils.errors import InputError, check_finite


def _dose_folders(patient: Path, thickness: str) -> tuple[Path | None, Path | None]:
    full = quarter = None
    for d in sorted(p for p in patient.rglob("*") if p.is_dir()):
        name = d.name.lower()
        if thickness not in name:
            continue
        if "full" in name and full is None:
            full = d
        elif "quarter" in name and quarter is None:
            quarter = d
    return full, quarter


def prepare_aapm(src: str | Path, out: str | Path, thickness: str = "1mm", seed: int = 0, fmt: str = "npy",
                 overwrite: bool = False, quiet: bool = False,
                 split: Sequence[float] = AAPM_SPLIT) -> PreparationReport:
    """AAPM-Mayo patients (full_/quarter_<thickness> DICOM folders) -> pairs by slice position, split 8/1/1 scaled.

    The two series of a patient must share orientation, pixel spacing and in-plane origin;
    full-dose slices without a quarter-dose partner are counted in the notes. HU below -1024
    (out-of-field padding) become -1024 in both images of a pair.
    """
    check_job(seed)
    if not str(thickness).strip():
        raise InputError(None, "--thickness is empty (e.g. 1mm or 3mm)")
    thickness = str(thickness).strip().lower()
    src = source_folder(src, out, overwrite)
    inputs, failures, ignored = [], [], []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            ignored.append(Skipped(str(entry), "hidden"))
            continue
        if not entry.is_dir():
            ignored.append(Skipped(str(entry), "not a patient folder"))
            continue
        full, quarter = _dose_folders(entry, thickness)
        if full and quarter:
            inputs.append(SourceInput(str(entry), entry.name, (full, quarter)))
        elif full or quarter:
            missing = f"quarter_{thickness}" if full else f"full_{thickness}"
            failures.append(Skipped(str(entry), f"no {missing} sub-folder to pair with"))
        else:
            found = sorted(d.name for d in entry.rglob("*") if d.is_dir() and re.search("full|quarter", d.name, re.I))
            seen = f" (it has {', '.join(found[:4])})" if found else ""
            ignored.append(Skipped(str(entry), f"no full_{thickness} or quarter_{thickness} sub-folder{seen}"))
    if not inputs:
        found = f" ({'; '.join(str(f) for f in (failures + ignored)[:3])})" if failures or ignored else ""
        raise InputError(src, f"no patient folder with full_{thickness} and quarter_{thickness} sub-folders{found}")
    unpaired: list[str] = []

    def write_patient(writer: PairWriter, number: int, source: SourceInput) -> None:
        full_dir, quarter_dir = source.item
        full, full_meta = read_dicom_series(full_dir)
        quarter, quarter_meta = read_dicom_series(quarter_dir)
        for meta in (full_meta, quarter_meta):
            if meta.extra.get("positions") is None:
                raise InputError(meta.source, "slices have no ImagePositionPatient; cannot pair them by position")
        if full.shape[1:] != quarter.shape[1:]:
            raise InputError(quarter_dir, f"slice size {quarter.shape[1:]} differs from the full dose's {full.shape[1:]}")
        _check_same_plane(full_meta, quarter_meta, quarter_dir)
        pairs = _pair_by_position(full_meta.extra["positions"], quarter_meta.extra["positions"],
                                  full_meta.spacing[0] if full_meta.spacing else 1.0)
        if not pairs:
            raise InputError(source.label, "no full-dose slice has a quarter-dose partner at the same position")
        check_finite(full, full_dir, "series")
        check_finite(quarter, quarter_dir, "series")
        if len(pairs) < len(full):
            unpaired.append(f"{source.subject}: {len(full) - len(pairs)} of {len(full)} full-dose slices")
        for i, j in pairs:
            hq, lq = ct_air_floor(full[i], quarter[j])
            writer.write("ct_denoise", None, f"{source.subject}_{i:04d}", lq, hq, full_meta if fmt == "nifti" else None,
                         i, subject=source.subject)

    def notes() -> list[str]:
        if not unpaired:
            return []
        return ["full-dose slices without a quarter-dose partner at the same position were left out: "
                + "; ".join(unpaired)]

    return write_pairs(src, out, fmt, overwrite, quiet, inputs, "AAPM patients", write_patient, split, seed,
                        failures=failures, ignored=ignored, notes=notes)


def _check_same_plane(full: ImageMeta, quarter: ImageMeta, where: Path) -> None:
    """Refuse a quarter-dose series whose rows and columns do not lie on the full dose's pixels."""
    if full.affine is None or quarter.affine is None:
        return
    a, b = np.asarray(full.affine, float), np.asarray(quarter.affine, float)
    pixel = float(min(np.linalg.norm(a[:3, 1]), np.linalg.norm(a[:3, 2])))
    if not np.allclose(a[:3, 1:3], b[:3, 1:3], atol=1e-3 * max(pixel, 1e-6) + 1e-4):
        raise InputError(where, "pixel spacing or orientation differs from the full-dose series "
                                f"(row/column steps {np.round(b[:3, 1:3].T, 4).tolist()} vs "
                                f"{np.round(a[:3, 1:3].T, 4).tolist()} mm)")
    normal = np.cross(a[:3, 1], a[:3, 2])
    normal /= np.linalg.norm(normal)
    offset = b[:3, 3] - a[:3, 3]
    in_plane = offset - np.dot(offset, normal) * normal
    if np.linalg.norm(in_plane) > 0.5 * pixel:
        raise InputError(where, f"in-plane origin is {np.linalg.norm(in_plane):.2f} mm off the full-dose series'; "
                                "the images would not overlay")


def _pair_by_position(full: Sequence[float], quarter: Sequence[float], spacing: float) -> list[tuple[int, int]]:
    """Index pairs whose slice positions agree to within a quarter of the slice spacing."""
    quarter_arr = np.asarray(quarter)
    pairs = []
    for i, z in enumerate(full):
        j = int(np.argmin(np.abs(quarter_arr - z)))
        if abs(quarter_arr[j] - z) <= 0.25 * max(abs(spacing), 1e-3):
            pairs.append((i, j))
    return pairs


