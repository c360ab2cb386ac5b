"""Dataset preparation: raw IXI / AAPM-Mayo downloads, any HQ folder, and the offline demo set.

Every preparer writes ``ROOT/{MRI,CT,PET}/{train,validation,test}/{LQ,HQ}/<name>.npy`` (or
``.nii.gz``), float32 in physical units (MRI intensity, CT HU, PET SUV), plus
``ROOT/manifest.csv`` (one row per pair) and ``ROOT/summary.json``. The output appears
only when the whole job succeeded (it is built in a hidden sibling folder and renamed).

Inputs are read first and split afterwards: subjects are assigned to train / validation /
test only among the inputs that were read successfully, so a skipped input never empties a
split. Every input that is not used is listed in ``summary.json`` (``failures``) with its
reason; files that are not inputs of the job at all are listed under ``ignored``. A split
that would still be empty is an error, unless the split ratios ask for it (``--split 1,0,0``).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from restore_rwkv.data.datasets import PairRecord, central_slices, write_manifest
from restore_rwkv.data.io import (
    ImageMeta,
    file_suffix,
    is_image_file,
    read_dicom_series,
    read_image,
    read_nifti_canonical,
    write_array,
    write_nifti,
)
from restore_rwkv.data.modality import TASKS
from restore_rwkv.physics import DEGRADATION_OPTIONS, default_degradation
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import atomic_file, atomic_folder, check_writable_target
from restore_rwkv.utils.progress import progress_bar

SPLITS = ("train", "validation", "test")
FOLDER = {"mri": "MRI", "ct": "CT", "pet": "PET"}
IXI_SPLIT = (405, 59, 114)
AAPM_SPLIT = (8, 1, 1)
SIMULATE_SPLIT = (8, 1, 1)
CT_AIR_HU = -1024.0  # the floor of the CT convention; stored values below it are out-of-field padding


def split_counts(n: int, reference: Sequence[float]) -> tuple[int, int, int]:
    """Split n subjects like ``reference`` (train, validation, test ratios), with every split whose
    ratio is > 0 non-empty; raises ValueError when n is too small for that."""
    ratios = [float(r) for r in reference]
    if len(ratios) != 3 or any(r < 0 or not np.isfinite(r) for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three numbers >= 0 with a positive sum, got {tuple(reference)}")
    wanted = [i for i in range(3) if ratios[i] > 0]
    if n < len(wanted):
        names = ", ".join(SPLITS[i] for i in wanted)
        raise ValueError(f"{n} subject(s) cannot fill the {len(wanted)} splits {names}")
    if n == sum(ratios) and all(r.is_integer() for r in ratios):
        return tuple(int(r) for r in ratios)  # type: ignore[return-value]
    ideal = [n * r / sum(ratios) for r in ratios]
    counts = [max(1, int(round(ideal[i]))) if i in wanted else 0 for i in range(3)]
    while sum(counts) != n:  # largest remainder, never below one subject per wanted split
        if sum(counts) < n:
            i = max(wanted, key=lambda j: ideal[j] - counts[j])
            counts[i] += 1
        else:
            i = max((j for j in wanted if counts[j] > 1), key=lambda j: counts[j] - ideal[j])
            counts[i] -= 1
    return tuple(counts)  # type: ignore[return-value]


def split_subjects(subjects: Sequence[str], reference: Sequence[float], seed: int = 0) -> dict[str, str]:
    """Subject -> split, by a fixed-seed permutation of the sorted subject ids."""
    ordered = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_train, n_val, _ = split_counts(len(ordered), reference)
    out = {}
    for rank, i in enumerate(order):
        out[ordered[i]] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
    return out


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"8,1,1"`` (train, validation, test ratios) -> (8.0, 1.0, 1.0); 0 asks for an empty split."""
    parts = [p for p in str(text).replace(":", ",").split(",")] if isinstance(text, str) else list(text)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(None, f"--split takes three numbers train,validation,test (e.g. 8,1,1), got {text!r}") from None
    if len(values) != 3 or any(v < 0 or not np.isfinite(v) for v in values) or sum(values) <= 0:
        raise InputError(None, f"--split takes three numbers >= 0 with a positive sum, got {text!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Skipped:
    """An input (or a file) that was not used, and why."""

    input: str
    reason: str

    def __str__(self) -> str:
        return f"{self.input}: {self.reason}"

    def as_dict(self) -> dict:
        return {"input": self.input, "reason": self.reason}


@dataclass(frozen=True)
class SourceInput:
    """One input of a preparer: ``label`` names it in reports, ``subject`` is its unit of splitting."""

    label: str
    subject: str
    item: object = None


@dataclass
class PreparationReport:
    """What a preparer wrote, what it skipped and why."""

    root: Path
    records: list[PairRecord] = field(default_factory=list)
    failures: list[Skipped] = field(default_factory=list)
    ignored: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: int = 0
    subjects: dict = field(default_factory=dict)
    split_ratios: tuple | None = None
    ranges: dict = field(default_factory=lambda: defaultdict(lambda: [np.inf, -np.inf]))
    shapes: dict = field(default_factory=lambda: defaultdict(set))
    seconds: float = 0.0

    def add(self, record: PairRecord, lq_range: tuple[float, float], hq_range: tuple[float, float],
            shape: tuple[int, ...]) -> None:
        self.records.append(record)
        for kind, (lo, hi) in (("LQ", lq_range), ("HQ", hq_range)):
            r = self.ranges[(record.task, kind)]
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        self.shapes[record.task].add(tuple(shape))

    def summary(self) -> dict:
        counts: dict = defaultdict(lambda: defaultdict(int))
        for r in self.records:
            counts[r.task][r.split] += 1
        return {
            "root": str(self.root),
            "pairs": {t: dict(c) for t, c in counts.items()},
            "inputs": {"found": self.inputs, "used": self.inputs - len(self.failures), "skipped": len(self.failures)},
            "subjects": self.subjects,
            "split_ratios": list(self.split_ratios) if self.split_ratios else None,
            "shapes": {t: sorted(list(s)) for t, s in self.shapes.items()},
            "ranges": {f"{t} {k}": [round(v[0], 4), round(v[1], 4)] for (t, k), v in self.ranges.items()},
            "failures": [f.as_dict() for f in self.failures],
            "ignored": [f.as_dict() for f in self.ignored],
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }

    def text(self) -> str:
        s = self.summary()
        used = f" from {s['inputs']['used']} of {self.inputs} inputs" if self.inputs else ""
        lines = [f"Prepared {sum(sum(c.values()) for c in s['pairs'].values())} pairs{used} in {s['root']} "
                 f"({s['seconds']} s)"]
        for task, c in s["pairs"].items():
            parts = ", ".join(f"{split} {c.get(split, 0)}" for split in SPLITS)
            shapes = ", ".join("x".join(map(str, sh)) for sh in s["shapes"][task])
            lq, hq = s["ranges"].get(f"{task} LQ"), s["ranges"].get(f"{task} HQ")
            lines.append(f"  {task}: {parts}; size {shapes}; HQ range {hq}, LQ range {lq}")
        if self.subjects:
            lines.append("  subjects: " + ", ".join(f"{k} {v}" for k, v in self.subjects.items()))
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.failures:
            lines.append(f"  skipped {len(self.failures)} input(s):")
            lines.extend(f"    {f}" for f in self.failures)
        if self.ignored:
            shown = "; ".join(str(f) for f in self.ignored[:3])
            more = f"; ... ({len(self.ignored) - 3} more)" if len(self.ignored) > 3 else ""
            lines.append(f"  ignored {len(self.ignored)} file(s) or folder(s) that are not inputs "
                         f"(listed in summary.json): {shown}{more}")
        return "\n".join(lines)


@contextlib.contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``out`` that becomes ``out`` when the block succeeds (removed otherwise).

    ``out`` is checked before anything is done: it must be creatable (no file in its way, a
    parent we may write to) and empty unless ``overwrite``.
    """
    out = Path(out)
    check_writable_target(out, folder=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
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
    if src.is_file():
        raise InputError(src, "is a file; --src takes a folder (put the file in a folder of its own)")
    if not src.is_dir():
        raise InputError(src, "no such folder")
    check_out_apart_from_src(src, out)
    return src


@dataclass
class _Pair:
    task: str
    split: str | None
    lq: Path  # where the files are now, inside the stage
    hq: Path
    lq_range: tuple[float, float]
    hq_range: tuple[float, float]
    shape: tuple[int, ...]
    subject: str | None


class PairWriter:
    """Writes pairs into the reference layout and records them for the manifest.

    A pair written with ``split=None`` waits in a hidden folder of the stage until
    :meth:`assign_splits` moves it to its subject's split.
    """

    def __init__(self, stage: Path, final_root: Path, fmt: str = "npy") -> None:
        if fmt not in ("npy", "nifti"):
            raise ValueError(f"format must be 'npy' or 'nifti', got {fmt!r}")
        self.stage, self.final_root, self.fmt = stage, Path(final_root), fmt
        self.pairs: list[_Pair] = []

    def write(self, task: str, split: str | None, name: str, lq: np.ndarray, hq: np.ndarray,
              meta: ImageMeta | None = None, slice_index: int | None = None, subject: str | None = None) -> None:
        """Write one pair; with NIfTI output, ``meta`` and ``slice_index`` place the 2-D slice in the volume's world."""
        modality = TASKS[task]
        lq, hq = np.asarray(lq, np.float32), np.asarray(hq, np.float32)
        check_finite(hq, None, f"HQ image {name}")
        check_finite(lq, None, f"LQ image {name}")
        suffix = ".npy" if self.fmt == "npy" else ".nii.gz"
        base = self.stage / FOLDER[modality] / split if split else self.stage / ".pending" / FOLDER[modality]
        paths = []
        for kind, array in (("LQ", lq), ("HQ", hq)):
            path = base / kind / f"{name}{suffix}"
            if path.exists():
                raise InputError(None, f"two pairs would be named {name!r}")
            if self.fmt == "npy":
                write_array(path, array)
            else:
                write_nifti(path, array, _slice_meta(meta, slice_index))
            paths.append(path)
        self.pairs.append(_Pair(task, split, paths[0], paths[1], (float(lq.min()), float(lq.max())),
                                (float(hq.min()), float(hq.max())), tuple(hq.shape), subject))

    def mark(self) -> int:
        """A bookmark for :meth:`discard`."""
        return len(self.pairs)

    def discard(self, mark: int) -> None:
        """Delete the pairs written since ``mark`` (an input that failed half-way leaves nothing)."""
        for pair in self.pairs[mark:]:
            pair.lq.unlink(missing_ok=True)
            pair.hq.unlink(missing_ok=True)
        del self.pairs[mark:]

    def assign_splits(self, split_of: dict[str, str]) -> None:
        """Move every waiting pair into the split of its subject."""
        for pair in self.pairs:
            if pair.split is not None:
                continue
            pair.split = split_of[pair.subject]
            for attr in ("lq", "hq"):
                old = getattr(pair, attr)
                rel = old.relative_to(self.stage / ".pending")  # MODALITY/KIND/name
                new = self.stage / rel.parts[0] / pair.split / Path(*rel.parts[1:])
                new.parent.mkdir(parents=True, exist_ok=True)
                old.replace(new)
                setattr(pair, attr, new)
        shutil.rmtree(self.stage / ".pending", ignore_errors=True)

    def finish(self, started: float, failures: Sequence[Skipped] = (), ignored: Sequence[Skipped] = (),
               inputs: int = 0, notes: Sequence[str] = (), split_ratios: Sequence[float] | None = None,
               subjects: dict | None = None) -> PreparationReport:
        """Write ``manifest.csv`` and ``summary.json`` into the stage; returns the report (final paths)."""
        report = PreparationReport(self.final_root, failures=list(failures), ignored=list(ignored),
                                   notes=list(notes), inputs=inputs, subjects=dict(subjects or {}),
                                   split_ratios=tuple(split_ratios) if split_ratios else None)
        staged = []
        for pair in self.pairs:
            modality = TASKS[pair.task]
            staged.append(PairRecord(str(pair.lq), str(pair.hq), modality, pair.task, pair.split))
            final = PairRecord(str(self.final_root / pair.lq.relative_to(self.stage)),
                               str(self.final_root / pair.hq.relative_to(self.stage)), modality, pair.task, pair.split)
            report.add(final, pair.lq_range, pair.hq_range, pair.shape)
        report.seconds = time.perf_counter() - started
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


def _reason(exc: InputError, label: str) -> str:
    """The problem of ``exc`` without the path when the path is the input itself."""
    return exc.problem if exc.path is None or label == exc.path or label.startswith(f"{exc.path} (") else str(exc)


def _write_pairs(src: Path, out: str | Path, fmt: str, overwrite: bool, quiet: bool, inputs: Sequence[SourceInput],
                 desc: str, write_input: Callable[[PairWriter, int, SourceInput], None],
                 split: Sequence[float], seed: int, failures: Sequence[Skipped] = (),
                 ignored: Sequence[Skipped] = (), notes: Callable[[], list[str]] | None = None) -> PreparationReport:
    """Run ``write_input(writer, number, input)`` for each input into staged output, then split.

    An input that raises InputError is reported (with ``failures`` found before reading) and
    whatever it wrote is deleted; subjects are split over the inputs that succeeded; no usable
    input, or an empty split that ``split`` asks to fill, fails the whole job (nothing written).
    ``notes()`` gives remarks for the summary once every input was read.
    """
    started = time.perf_counter()
    total = len(inputs) + len(failures)
    failures = list(failures)
    with staged_output(out, overwrite) as stage:
        writer = PairWriter(stage, Path(out), fmt)
        used: set[str] = set()
        for number, source in enumerate(progress_bar(inputs, desc=desc, quiet=quiet)):
            mark = writer.mark()
            try:
                write_input(writer, number, source)
                if writer.mark() == mark:
                    raise InputError(source.label, "gave no usable slice")
            except InputError as exc:
                writer.discard(mark)
                failures.append(Skipped(source.label, _reason(exc, source.label)))
            else:
                used.add(source.subject)
        if not used:
            reasons = "; ".join(str(f) for f in failures[:3]) + (f"; ... ({len(failures) - 3} more)"
                                                                 if len(failures) > 3 else "")
            raise InputError(src, f"no usable {desc} ({len(failures)} skipped: {reasons})")
        try:
            split_of = split_subjects(sorted(used), split, seed)
        except ValueError as exc:
            skipped = f"; {len(failures)} input(s) skipped, first: {failures[0]}" if failures else ""
            raise InputError(src, f"{exc}{skipped}; give split ratios with 0 for the splits you do not want "
                                  "(e.g. --split 1,0,0)") from None
        writer.assign_splits(split_of)
        subjects = {name: sum(1 for v in split_of.values() if v == name) for name in SPLITS}
        report = writer.finish(started, failures, ignored, inputs=total, notes=notes() if notes else [], split_ratios=split,
                               subjects=subjects)
    return report


# ----------------------------------------------------------------------------- IXI
_IXI_NAME = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-T2\.nii(\.gz)?$")


def prepare_ixi(src: str | Path, out: str | Path, scale: float = 4.0, slices: int = 100, seed: int = 0,
                fmt: str = "npy", overwrite: bool = False, quiet: bool = False,
                split: Sequence[float] = IXI_SPLIT) -> PreparationReport:
    """IXI T2 volumes -> central axial slices, LQ by k-space truncation, split by subject (405/59/114 scaled)."""
    from restore_rwkv.physics import KSpaceTruncation

    src = _source_folder(src, out)
    nifti = sorted(p for p in src.rglob("*") if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")))
    files = [p for p in nifti if _IXI_NAME.match(p.name)]
    ignored = [Skipped(str(p), "not an IXI T2 volume (named like IXI002-Guys-0828-T2.nii.gz)")
               for p in nifti if not _IXI_NAME.match(p.name)]
    if not files:
        raise InputError(src, "no IXI T2 volumes (files named like IXI002-Guys-0828-T2.nii.gz)")
    inputs = [SourceInput(str(p), _IXI_NAME.match(p.name).group(1), p) for p in files]
    degrade = KSpaceTruncation(scale)

    def write_volume(writer: PairWriter, number: int, source: SourceInput) -> None:
        path = source.item
        volume, meta = read_nifti_canonical(path)
        check_finite(volume, path, "volume")
        indices = central_slices(volume, 2, slices)
        if not indices:
            raise InputError(path, "no slice holds tissue (the volume is empty or flat)")
        for index in indices:
            hq = volume[:, :, index].astype(np.float32)
            writer.write("mri_sr", None, f"{source.subject}_{index:03d}", degrade(hq), hq, meta, index,
                         subject=source.subject)

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, "IXI volumes", write_volume, split, seed,
                        ignored=ignored)


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


def ct_air_floor(*images: np.ndarray) -> tuple[np.ndarray, ...]:
    """CT images (HU) with values below -1024 HU (out-of-field padding such as -2000 or -3024) set to -1024."""
    return tuple(np.maximum(np.asarray(image, np.float32), np.float32(CT_AIR_HU)) for image in images)


def prepare_aapm(src: str | Path, out: str | Path, thickness: str = "1mm", seed: int = 0, fmt: str = "npy",
                 overwrite: bool = False, quiet: bool = False,
                 split: Sequence[float] = AAPM_SPLIT) -> PreparationReport:
    """AAPM-Mayo patients (full_/quarter_<thickness> DICOM folders) -> pairs by slice position, split 8/1/1 scaled.

    HU below -1024 (out-of-field padding) become -1024 in both images of a pair.
    """
    src = _source_folder(src, out)
    inputs, failures, ignored = [], [], []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        full, quarter = _dose_folders(folder, thickness)
        if full and quarter:
            inputs.append(SourceInput(str(folder), folder.name, (full, quarter)))
        elif full or quarter:
            missing = f"quarter_{thickness}" if full else f"full_{thickness}"
            failures.append(Skipped(str(folder), f"no {missing} sub-folder to pair with"))
        else:
            ignored.append(Skipped(str(folder), f"no full_{thickness} or quarter_{thickness} sub-folder"))
    if not inputs:
        found = f" ({'; '.join(str(f) for f in failures[:3])})" if failures else ""
        raise InputError(src, f"no patient folder with full_{thickness} and quarter_{thickness} sub-folders{found}")

    def write_patient(writer: PairWriter, number: int, source: SourceInput) -> None:
        full_dir, quarter_dir = source.item
        full, full_meta = read_dicom_series(full_dir)
        quarter, quarter_meta = read_dicom_series(quarter_dir)
        for volume, meta in ((full, full_meta), (quarter, quarter_meta)):
            if meta.extra.get("positions") is None:
                raise InputError(meta.source, "slices have no ImagePositionPatient; cannot pair them by position")
        pairs = _pair_by_position(full_meta.extra["positions"], quarter_meta.extra["positions"],
                                  full_meta.spacing[0] if full_meta.spacing else 1.0)
        if not pairs:
            raise InputError(source.label, "no full-dose slice has a quarter-dose partner at the same position")
        if full.shape[1:] != quarter.shape[1:]:
            raise InputError(quarter_dir, f"slice size {quarter.shape[1:]} differs from the full dose's {full.shape[1:]}")
        check_finite(full, full_dir, "series")
        check_finite(quarter, quarter_dir, "series")
        for i, j in pairs:
            hq, lq = ct_air_floor(full[i], quarter[j])
            writer.write("ct_denoise", None, f"{source.subject}_{i:04d}", lq, hq, subject=source.subject)

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, "AAPM patients", write_patient, split, seed,
                        failures=failures, ignored=ignored)


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


def _simulation_inputs(src: Path, series_uid: str | None) -> tuple[list[SourceInput], list[Skipped], list[Skipped]]:
    """The inputs under ``src``: one per DICOM series (files grouped by folder and SeriesInstanceUID;
    subject = PatientID) and one per other image file (subject = the file)."""
    from restore_rwkv.data.io.dicom import DICOM_SUFFIXES, _non_image_reason, looks_like_dicom

    inputs: list[SourceInput] = []
    failures: list[Skipped] = []
    ignored: list[Skipped] = []
    series: dict[tuple[Path, str], list[tuple[Path, object]]] = defaultdict(list)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(src).parts):
            continue
        rel = path.relative_to(src)
        if file_suffix(path) in DICOM_SUFFIXES or (not is_image_file(path) and looks_like_dicom(path)) \
                or path.name.upper() == "DICOMDIR":
            try:
                header = _dicom_header(path)
            except InputError as exc:
                failures.append(Skipped(str(path), _reason(exc, str(path))))
                continue
            reason = _non_image_reason(header)
            if reason:
                ignored.append(Skipped(str(path), reason))
                continue
            uid = str(header.get("SeriesInstanceUID", "")) or f"(no series UID) {path.name}"
            if series_uid is not None and uid != series_uid:
                ignored.append(Skipped(str(path), f"series {uid} is not the chosen --series-uid"))
                continue
            series[(path.parent, uid)].append((path, header))
        elif is_image_file(path):
            stem = _safe_name(str(rel.with_name(rel.name[: len(rel.name) - len(file_suffix(path))])).replace("/", "_"))
            inputs.append(SourceInput(str(path), stem, ("file", path, stem)))
        else:
            ignored.append(Skipped(str(path), "not an image file"))
    names: set[str] = set()
    for (folder, uid), items in sorted(series.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        header = items[0][1]
        patient = str(header.get("PatientID", "") or "").strip() or folder.name
        number = str(header.get("SeriesNumber", "") or "").strip() or uid.rsplit(".", 1)[-1][-6:]
        name = f"{_safe_name(patient)}_{_safe_name(number)}"
        if name in names:
            name = f"{name}-{_safe_name(uid.rsplit('.', 1)[-1][-6:])}"
        names.add(name)
        label = f"{folder} (series {uid})" if len(items) > 1 else str(items[0][0])
        inputs.append(SourceInput(label, f"patient:{patient}", ("series", [p for p, _ in items], name)))
    if series_uid is not None and not series:
        raise InputError(src, f"no DICOM image of series {series_uid}")
    return inputs, failures, ignored


def prepare_simulated(task: str, src: str | Path, out: str | Path, slices: int = 100, seed: int = 0,
                      split: Sequence[float] = SIMULATE_SPLIT, fmt: str = "npy", overwrite: bool = False,
                      quiet: bool = False, series_uid: str | None = None, force: bool = False,
                      **options) -> PreparationReport:
    """Any folder of HQ images, volumes and DICOM series -> (LQ, HQ) pairs by ``task``'s degradation.

    DICOM files are grouped into series (by folder and SeriesInstanceUID) and split by
    patient (PatientID); other files are split by file. Pairs are named
    ``<patient>_<series number>_<slice>`` (DICOM) or ``<file>_<slice>``. For CT the pixel
    spacing comes from each image's metadata unless ``pixel_size_mm`` is given (0.7 mm when an
    image has none; counted in the notes), HU below -1024 become -1024 in both images, and LQ
    equals HQ on that out-of-field padding. A DICOM whose Modality is not the task's (an MR
    given to ``ct_denoise``) is refused unless ``force``.
    """
    from restore_rwkv.data.io import read_dicom, read_dicom_files
    from restore_rwkv.data.modality import TASK_DICOM_MODALITIES, resolve_task

    try:
        task = resolve_task(task)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    src = _source_folder(src, out)
    inputs, failures, ignored = _simulation_inputs(src, series_uid)
    if not inputs:
        found = f" ({'; '.join(str(f) for f in (failures + ignored)[:3])})" if failures or ignored else ""
        raise InputError(src, f"no image files in this folder{found}")
    fixed_pixel = options.pop("pixel_size_mm", None)
    default_degradation(task, **options)  # unknown options fail here, before any work
    degradations: dict[float, object] = {}
    no_spacing: list[str] = []

    def degradation_for(pixel_mm: float | None):
        key = round(float(pixel_mm), 6) if pixel_mm is not None else None
        if key not in degradations:
            extra = {"pixel_size_mm": key} if task == "ct_denoise" and key is not None else {}
            degradations[key] = default_degradation(task, **options, **extra)
        return degradations[key]

    def write_input(writer: PairWriter, number: int, source: SourceInput) -> None:
        kind, what, name = source.item
        if kind == "file":
            data, meta = read_image(what)
        elif len(what) == 1:
            data, meta = read_dicom(what[0])
        else:
            data, meta = read_dicom_files(what, source=what[0].parent)
        expected = TASK_DICOM_MODALITIES[task]
        if meta.modality and meta.modality.upper() not in expected and not force:
            raise InputError(source.label, f"is a {meta.modality} image, not {'/'.join(expected)} as task {task} "
                                           "needs (pass --force to use it anyway)")
        data = np.squeeze(np.asarray(data, dtype=np.float32))
        if data.ndim not in (2, 3):
            raise InputError(source.label, f"expected a 2-D image or a 3-D volume, got shape {data.shape}")
        check_finite(data, source.label)
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
            images = [(None, data)]
        else:
            indices = central_slices(data, axis, slices)
            if not indices:
                raise InputError(source.label, "no slice holds signal (the volume is empty or flat)")
            images = [(i, np.take(data, i, axis=axis)) for i in indices]
        for index, image in images:
            slice_seed = (seed * 1_000_003 + number) * 10_007 + (index or 0)
            if task == "ct_denoise":
                padding = image < CT_AIR_HU
                (hq,) = ct_air_floor(image)
                square, crop = _square(hq, CT_AIR_HU)
                lq = np.asarray(degrade(square, seed=slice_seed), np.float32)[crop]
                lq[padding] = hq[padding]  # no signal outside the scan field: both images agree there
            else:
                hq = image
                lq = degrade(hq, seed=slice_seed)
            suffix = "" if index is None else f"_{index:03d}"
            writer.write(task, None, f"{name}{suffix}", lq, hq, meta if fmt == "nifti" else None, index,
                         subject=source.subject)

    def notes() -> list[str]:
        if not no_spacing:
            return []
        return [f"{len(no_spacing)} input(s) have no pixel spacing in their metadata; the CT simulation took "
                f"{DEGRADATION_OPTIONS['ct_denoise']['pixel_size_mm']} mm for them (set --pixel-size-mm): "
                + ", ".join(no_spacing[:3]) + (" ..." if len(no_spacing) > 3 else "")]

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, f"{task} inputs", write_input, split, seed,
                        failures=failures, ignored=ignored, notes=notes)
