"""Dataset preparation: raw IXI / AAPM-Mayo downloads, any HQ folder, and the offline demo set.

Every preparer writes ``ROOT/{MRI,CT,PET}/{train,validation,test}/{LQ,HQ}/<name>.npy`` (or
``.nii.gz``), float32 in physical units (MRI intensity, CT HU, PET SUV), plus
``ROOT/manifest.csv`` (one row per pair) and ``ROOT/summary.json``. The output appears
only when the whole job succeeded (it is built in a hidden sibling folder and renamed);
inputs that cannot be used are reported and skipped.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from restore_rwkv.data.datasets import PairRecord, central_slices, write_manifest
from restore_rwkv.data.io import (
    ImageMeta,
    is_image_file,
    read_dicom_series,
    read_image,
    read_nifti_canonical,
    write_array,
    write_nifti,
)
from restore_rwkv.data.modality import TASKS
from restore_rwkv.physics import default_degradation
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import atomic_file, atomic_folder
from restore_rwkv.utils.progress import progress_bar

SPLITS = ("train", "validation", "test")
FOLDER = {"mri": "MRI", "ct": "CT", "pet": "PET"}
IXI_SPLIT = (405, 59, 114)
AAPM_SPLIT = (8, 1, 1)


def split_counts(n: int, reference: Sequence[int]) -> tuple[int, int, int]:
    """Split n subjects like ``reference`` (train, validation, test), scaled, with each split non-empty when n >= 3."""
    total = sum(reference)
    if n == total:
        return tuple(reference)  # type: ignore[return-value]
    if n < 3:
        return (n, 0, 0)
    val = max(1, int(round(n * reference[1] / total)))
    test = max(1, int(round(n * reference[2] / total)))
    return (n - val - test, val, test)


def split_subjects(subjects: Sequence[str], reference: Sequence[int], seed: int = 0) -> dict[str, str]:
    """Subject -> split, by a fixed-seed permutation of the sorted subject ids."""
    ordered = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_train, n_val, _ = split_counts(len(ordered), reference)
    out = {}
    for rank, i in enumerate(order):
        out[ordered[i]] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
    return out


@dataclass
class PreparationReport:
    """What a preparer wrote and what it skipped."""

    root: Path
    records: list[PairRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ranges: dict = field(default_factory=lambda: defaultdict(lambda: [np.inf, -np.inf]))
    shapes: dict = field(default_factory=lambda: defaultdict(set))
    seconds: float = 0.0

    def add(self, record: PairRecord, lq: np.ndarray, hq: np.ndarray) -> None:
        self.records.append(record)
        for kind, a in (("LQ", lq), ("HQ", hq)):
            r = self.ranges[(record.task, kind)]
            r[0], r[1] = min(r[0], float(a.min())), max(r[1], float(a.max()))
        self.shapes[record.task].add(tuple(hq.shape))

    def summary(self) -> dict:
        counts: dict = defaultdict(lambda: defaultdict(int))
        for r in self.records:
            counts[r.task][r.split] += 1
        return {
            "root": str(self.root),
            "pairs": {t: dict(c) for t, c in counts.items()},
            "shapes": {t: sorted(list(s)) for t, s in self.shapes.items()},
            "ranges": {f"{t} {k}": [round(v[0], 4), round(v[1], 4)] for (t, k), v in self.ranges.items()},
            "failures": self.failures,
            "seconds": round(self.seconds, 1),
        }

    def text(self) -> str:
        s = self.summary()
        lines = [f"Prepared {sum(sum(c.values()) for c in s['pairs'].values())} pairs in {s['root']} "
                 f"({s['seconds']} s)"]
        for task, c in s["pairs"].items():
            parts = ", ".join(f"{split} {c.get(split, 0)}" for split in SPLITS)
            shapes = ", ".join("x".join(map(str, sh)) for sh in s["shapes"][task])
            lq, hq = s["ranges"].get(f"{task} LQ"), s["ranges"].get(f"{task} HQ")
            lines.append(f"  {task}: {parts}; size {shapes}; HQ range {hq}, LQ range {lq}")
        if self.failures:
            lines.append(f"  skipped {len(self.failures)} input(s):")
            lines.extend(f"    {f}" for f in self.failures)
        return "\n".join(lines)


@contextlib.contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``out`` that becomes ``out`` when the block succeeds (removed otherwise)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite or not out.is_dir():
            raise InputError(out, "output exists and is not empty (choose another --out or pass --overwrite)")
    with atomic_folder(out, replace=overwrite) as stage:
        yield stage


def check_out_apart_from_src(src: str | Path, out: str | Path) -> None:
    """Refuse an output folder that is, contains or lies inside the input folder."""
    src_r, out_r = Path(src).resolve(), Path(out).resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise InputError(out, f"output must be apart from the input folder {src}")


def _source_folder(src: str | Path, out: str | Path) -> Path:
    """``src`` as a Path, checked to be a folder apart from ``out``."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "no such folder")
    check_out_apart_from_src(src, out)
    return src


class PairWriter:
    """Writes pairs into the reference layout and records them for the manifest."""

    def __init__(self, stage: Path, final_root: Path, fmt: str = "npy") -> None:
        if fmt not in ("npy", "nifti"):
            raise ValueError(f"format must be 'npy' or 'nifti', got {fmt!r}")
        self.stage, self.report, self.fmt = stage, PreparationReport(final_root), fmt

    def write(self, task: str, split: str, name: str, lq: np.ndarray, hq: np.ndarray,
              meta: ImageMeta | None = None, slice_index: int | None = None) -> PairRecord:
        """Write one pair; with NIfTI output, ``meta`` and ``slice_index`` place the 2-D slice in the volume's world."""
        modality = TASKS[task]
        lq, hq = np.asarray(lq, np.float32), np.asarray(hq, np.float32)
        suffix = ".npy" if self.fmt == "npy" else ".nii.gz"
        paths = []
        for kind, array in (("LQ", lq), ("HQ", hq)):
            path = self.stage / FOLDER[modality] / split / kind / f"{name}{suffix}"
            if self.fmt == "npy":
                write_array(path, array)
            else:
                write_nifti(path, array, _slice_meta(meta, slice_index))
            paths.append(str(self.report.root / path.relative_to(self.stage)))
        record = PairRecord(paths[0], paths[1], modality, task, split)
        self.report.add(record, lq, hq)
        return record

    def finish(self, started: float) -> PreparationReport:
        report = self.report
        report.seconds = time.perf_counter() - started
        staged = [PairRecord(str(self.stage / Path(r.lq).relative_to(report.root)),
                             str(self.stage / Path(r.hq).relative_to(report.root)), r.modality, r.task, r.split)
                  for r in report.records]
        write_manifest(self.stage / "manifest.csv", staged, root=self.stage)
        with atomic_file(self.stage / "summary.json") as tmp:
            tmp.write_text(json.dumps(report.summary(), indent=2))
        return report


def _slice_meta(meta: ImageMeta | None, index: int | None) -> ImageMeta | None:
    """Geometry of slice ``index`` of the volume ``meta`` describes: its in-plane axes, moved to the slice."""
    if meta is None or meta.affine is None or index is None or meta.slice_axis is None:
        return None
    axis = meta.slice_axis
    affine = np.asarray(meta.affine, dtype=np.float64)
    columns = [a for a in range(3) if a != axis] + [axis, 3]
    sliced = affine[:, columns].copy()
    sliced[:3, 3] = affine[:3, 3] + index * affine[:3, axis]
    return ImageMeta(affine=sliced, space=meta.space, format="nifti")


def _write_pairs(src: Path, out: str | Path, fmt: str, overwrite: bool, quiet: bool, inputs: Sequence,
                 desc: str, write_input: Callable[[PairWriter, int, object], None]) -> PreparationReport:
    """Run ``write_input(writer, number, item)`` for each input into staged output; inputs that raise
    InputError are reported and skipped, and a job with no usable input fails whole."""
    started = time.perf_counter()
    with staged_output(out, overwrite) as stage:
        writer = PairWriter(stage, Path(out), fmt)
        for number, item in enumerate(progress_bar(inputs, desc=desc, quiet=quiet)):
            try:
                write_input(writer, number, item)
            except InputError as exc:
                writer.report.failures.append(str(exc))
        if not writer.report.records:
            raise InputError(src, f"no usable {desc}: " + "; ".join(writer.report.failures))
        report = writer.finish(started)
    return report


# ----------------------------------------------------------------------------- IXI
_IXI_NAME = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-T2\.nii(\.gz)?$")


def prepare_ixi(src: str | Path, out: str | Path, scale: float = 4.0, slices: int = 100, seed: int = 0,
                fmt: str = "npy", overwrite: bool = False, quiet: bool = False) -> PreparationReport:
    """IXI T2 volumes -> central axial slices, LQ by k-space truncation, split by subject (405/59/114 scaled)."""
    from restore_rwkv.physics import KSpaceTruncation

    src = _source_folder(src, out)
    files = sorted(p for p in src.rglob("*") if _IXI_NAME.match(p.name))
    if not files:
        raise InputError(src, "no IXI T2 volumes (files named like IXI002-Guys-0828-T2.nii.gz)")
    subjects = {p: _IXI_NAME.match(p.name).group(1) for p in files}
    split_of = split_subjects(list(subjects.values()), IXI_SPLIT, seed)
    degrade = KSpaceTruncation(scale)

    def write_volume(writer: PairWriter, number: int, path: Path) -> None:
        volume, meta = read_nifti_canonical(path)
        for index in central_slices(volume, 2, slices):
            hq = volume[:, :, index].astype(np.float32)
            check_finite(hq, path, f"slice {index}")
            lq = degrade(hq)
            writer.write("mri_sr", split_of[subjects[path]], f"{subjects[path]}_{index:03d}", lq, hq, meta, index)

    return _write_pairs(src, out, fmt, overwrite, quiet, files, "IXI volumes", write_volume)


# ----------------------------------------------------------------------------- AAPM-Mayo
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
                 overwrite: bool = False, quiet: bool = False) -> PreparationReport:
    """AAPM-Mayo patients (full_/quarter_<thickness> DICOM folders) -> pairs by slice position, split 8/1/1 scaled."""
    src = _source_folder(src, out)
    patients = sorted(p for p in src.iterdir() if p.is_dir() and all(_dose_folders(p, thickness)))
    if not patients:
        raise InputError(src, f"no patient folder with full_{thickness} and quarter_{thickness} sub-folders")
    split_of = split_subjects([p.name for p in patients], AAPM_SPLIT, seed)

    def write_patient(writer: PairWriter, number: int, patient: Path) -> None:
        full_dir, quarter_dir = _dose_folders(patient, thickness)
        full, full_meta = read_dicom_series(full_dir)
        quarter, quarter_meta = read_dicom_series(quarter_dir)
        pairs = _pair_by_position(full_meta.extra["positions"], quarter_meta.extra["positions"],
                                  full_meta.spacing[0] if full_meta.spacing else 1.0)
        if not pairs:
            raise InputError(patient, "no full-dose slice has a quarter-dose partner at the same position")
        for i, j in pairs:
            check_finite(full[i], full_meta.extra["files"][i])
            check_finite(quarter[j], quarter_meta.extra["files"][j])
            if full[i].shape != quarter[j].shape:
                raise InputError(quarter_meta.extra["files"][j], "slice size differs from its full-dose partner")
            writer.write("ct_denoise", split_of[patient.name], f"{patient.name}_{i:04d}", quarter[j], full[i])

    return _write_pairs(src, out, fmt, overwrite, quiet, patients, "AAPM patients", write_patient)


def _pair_by_position(full: Sequence[float], quarter: Sequence[float], spacing: float) -> list[tuple[int, int]]:
    """Index pairs whose slice positions agree to within a quarter of the slice spacing."""
    quarter_arr = np.asarray(quarter)
    pairs = []
    for i, z in enumerate(full):
        j = int(np.argmin(np.abs(quarter_arr - z)))
        if abs(quarter_arr[j] - z) <= 0.25 * max(abs(spacing), 1e-3):
            pairs.append((i, j))
    return pairs


# ----------------------------------------------------------------------------- simulate
def _square(image: np.ndarray, fill: float) -> np.ndarray:
    h, w = image.shape
    if h == w:
        return image
    n = max(h, w)
    out = np.full((n, n), fill, dtype=image.dtype)
    out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = image
    return out


def _input_slices(path: Path, slices: int) -> list[tuple[str, np.ndarray]]:
    data, meta = read_image(path)
    data = np.squeeze(np.asarray(data, dtype=np.float32))
    if data.ndim == 2:
        return [("", data)]
    if data.ndim != 3:
        raise InputError(path, f"expected a 2-D image or a 3-D volume, got shape {data.shape}")
    axis = meta.slice_axis if meta.slice_axis is not None else 0
    return [(f"_{i:03d}", np.take(data, i, axis=axis)) for i in central_slices(data, axis, slices)]


def prepare_simulated(task: str, src: str | Path, out: str | Path, slices: int = 100, seed: int = 0,
                      split: Sequence[int] = (8, 1, 1), fmt: str = "npy", overwrite: bool = False,
                      quiet: bool = False, **options) -> PreparationReport:
    """Any folder of HQ images or volumes -> (LQ, HQ) pairs by ``task``'s degradation; split by file."""
    src = _source_folder(src, out)
    files = sorted(p for p in src.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise InputError(src, "no image files in this folder")
    degrade = default_degradation(task, **options)
    split_of = split_subjects([str(p) for p in files], split, seed)
    fill = {"ct_denoise": -1000.0}.get(task, 0.0)

    def write_file(writer: PairWriter, number: int, path: Path) -> None:
        for suffix, image in _input_slices(path, slices):
            check_finite(image, path)
            hq = _square(image, fill) if task != "mri_sr" else image
            lq = degrade(hq, seed=seed * 1_000_003 + number)
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name.split(".")[0]) + suffix
            writer.write(task, split_of[str(path)], f"{number:04d}_{name}", lq, hq)

    return _write_pairs(src, out, fmt, overwrite, quiet, files, f"{task} inputs", write_file)
