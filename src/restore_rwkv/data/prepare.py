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
import os
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
from restore_rwkv.modality import TASKS
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


def check_output_folder(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` resolved (through symbolic links, so a link to scratch space is written through),
    checked before any work: creatable, and empty unless ``overwrite`` replaces an earlier
    ``prepare`` output (a folder holding ``manifest.csv`` or ``summary.json``)."""
    if not str(out).strip():
        raise InputError(None, "--out is empty")
    resolved = Path(out).resolve()
    check_writable_target(resolved, folder=True)
    if resolved.is_dir() and any(resolved.iterdir()):
        if not overwrite:
            raise InputError(out, "output exists and is not empty (choose another --out or pass --overwrite)")
        if not (resolved / "manifest.csv").exists() and not (resolved / "summary.json").exists():
            raise InputError(out, "is not a folder written by prepare (no manifest.csv or summary.json); "
                                  "refusing to replace it with --overwrite")
    return resolved


@contextlib.contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``out`` that becomes ``out`` when the block succeeds (removed otherwise).

    ``out`` is checked first (:func:`check_output_folder`).
    """
    with atomic_folder(check_output_folder(out, overwrite), replace=overwrite) as stage:
        yield stage


def check_out_apart_from_src(src: str | Path, out: str | Path) -> None:
    """Refuse an output folder that is, contains or lies inside the input folder."""
    src_r, out_r = Path(src).resolve(), Path(out).resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise InputError(out, f"output must be apart from the input folder {src}")


def check_job(seed: int, slices: int | None = None) -> None:
    """Refuse a negative seed or slice count before any work (one-line InputError)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(None, f"--seed must be an integer >= 0, got {seed!r}")
    if slices is not None and (not isinstance(slices, (int, np.integer)) or slices < 1):
        raise InputError(None, f"--slices must be an integer >= 1, got {slices!r}")


def _source_folder(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """``src`` as a Path, checked to be a folder apart from ``out``; ``out`` is checked before ``src`` is read."""
    check_out_apart_from_src(src, out)
    check_output_folder(out, overwrite)
    src = Path(src)
    if src.is_file():
        raise InputError(src, "is a file; --src takes a folder (put the file in a folder of its own)")
    if not src.is_dir():
        raise InputError(src, "no such folder")
    return src


def _visible_files(src: Path, ignored: list[Skipped]) -> list[Path]:
    """Files under ``src`` in sorted order; hidden files and folders are listed in ``ignored``."""
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        hidden = [part for part in rel.parts if part.startswith(".")]
        if hidden:
            if path.name.startswith(".") and (len(hidden) == 1):
                ignored.append(Skipped(str(path), "hidden"))
            continue
        if path.is_file():
            files.append(path)
    return files


def slice_seed(seed: int, number: int, index: int | None) -> int:
    """A seed for slice ``index`` of input ``number`` of a job seeded with ``seed`` (any size, no overflow)."""
    state = np.random.SeedSequence([int(seed), int(number), 0 if index is None else int(index) + 1])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def checked_degradation(task: str, **options: float):
    """``default_degradation(task, **options)``, tried once on a small image, so that a bad option is one
    InputError before any input is read rather than a crash half-way."""
    for name, value in options.items():
        if value is not None and (not np.isfinite(float(value)) or float(value) <= 0):
            raise InputError(None, f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    try:
        degrade = default_degradation(task, **{k: v for k, v in options.items() if v is not None})
        probe = np.full((16, 16), -1000.0 if task == "ct_denoise" else 1.0, np.float32)
        probe[4:12, 4:12] = 40.0 if task == "ct_denoise" else 2.0
        degrade(probe, seed=0)
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as exc:
        raise InputError(None, f"bad {task} degradation option: {exc}") from None
    return degrade


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
    scale: float | None = None


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
              meta: ImageMeta | None = None, slice_index: int | None = None, subject: str | None = None,
              scale: float | None = None) -> None:
        """Write one pair; with NIfTI output, ``meta`` and ``slice_index`` place the 2-D slice in the volume's world.
        ``scale`` (stored units per unit of the intensity policy, fitted on the whole input volume) goes
        into the manifest."""
        modality = TASKS[task].modality
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
                                (float(hq.min()), float(hq.max())), tuple(hq.shape), subject, scale))

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
            modality = TASKS[pair.task].modality
            staged.append(PairRecord(str(pair.lq), str(pair.hq), modality, pair.task, pair.split, scale=pair.scale))
            final = PairRecord(str(self.final_root / pair.lq.relative_to(self.stage)),
                               str(self.final_root / pair.hq.relative_to(self.stage)), modality, pair.task, pair.split,
                               scale=pair.scale)
            report.add(final, pair.lq_range, pair.hq_range, pair.shape)
        report.seconds = time.perf_counter() - started
        write_manifest(self.stage / "manifest.csv", staged, root=self.stage)
        with atomic_file(self.stage / "summary.json") as tmp:
            tmp.write_text(json.dumps(report.summary(), indent=2))
        return report


def volume_scale(task: str, lq_slices: Sequence[np.ndarray], label: str) -> float | None:
    """The default intensity policy's scale of one input volume, fitted on the LQ slices written for it (the
    model's inputs; ``--slices`` central ones, with IXI's default 100 of about 130 nearly the whole
    volume ``restore`` would fit on), or None when the policy needs no fit."""
    from restore_rwkv.data.intensity import input_scale
    from restore_rwkv.modality import get_convention

    convention = get_convention(TASKS[task].modality)
    if not convention.scaling.fitted or not lq_slices:
        return None
    stored = [np.asarray(s, np.float32) for s in lq_slices]  # as the pairs are written
    return input_scale(convention, None, stored, sum(s.size for s in stored), source=label)[0]


def _slice_meta(meta: ImageMeta | None, index: int | None) -> ImageMeta | None:
    """Geometry of slice ``index`` of the volume ``meta`` describes: its in-plane axes, moved to the slice."""
    if meta is not None and meta.affine is not None and index is None and meta.slice_axis is None:
        return ImageMeta(affine=np.asarray(meta.affine, np.float64), space=meta.space, format="nifti")  # a 2-D image
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
    check_job(seed, slices)
    src = _source_folder(src, out, overwrite)
    degrade = checked_degradation("mri_sr", scale=scale)
    ignored: list[Skipped] = []
    failures: list[Skipped] = []
    inputs: list[SourceInput] = []
    first_of: dict[str, Path] = {}
    for path in _visible_files(src, ignored):
        match = _IXI_NAME.match(path.name)
        if not match:
            ignored.append(Skipped(str(path), "not an IXI T2 volume (named like IXI002-Guys-0828-T2.nii.gz)"))
        elif match.group(1) in first_of:
            failures.append(Skipped(str(path), f"another T2 volume of subject {match.group(1)} "
                                               f"({first_of[match.group(1)]}) is already used"))
        else:
            first_of[match.group(1)] = path
            inputs.append(SourceInput(str(path), match.group(1), path))
    if not inputs:
        raise InputError(src, "no IXI T2 volumes (files named like IXI002-Guys-0828-T2.nii.gz)")

    def write_volume(writer: PairWriter, number: int, source: SourceInput) -> None:
        path = source.item
        volume, meta = read_nifti_canonical(path)
        check_finite(volume, path, "volume")
        indices = central_slices(volume, 2, slices)
        if not indices:
            raise InputError(path, "no slice holds tissue (the volume is empty or flat)")
        pairs = [(index, degrade(volume[:, :, index].astype(np.float32)), volume[:, :, index].astype(np.float32))
                 for index in indices]
        scale = volume_scale("mri_sr", [lq for _, lq, _ in pairs], str(path))
        for index, lq, hq in pairs:
            writer.write("mri_sr", None, f"{source.subject}_{index:03d}", lq, hq, meta, index,
                         subject=source.subject, scale=scale)

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, "IXI volumes", write_volume, split, seed,
                        failures=failures, ignored=ignored)


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

    The two series of a patient must share orientation, pixel spacing and in-plane origin;
    full-dose slices without a quarter-dose partner are counted in the notes. HU below -1024
    (out-of-field padding) become -1024 in both images of a pair.
    """
    check_job(seed)
    if not str(thickness).strip():
        raise InputError(None, "--thickness is empty (e.g. 1mm or 3mm)")
    thickness = str(thickness).strip().lower()
    src = _source_folder(src, out, overwrite)
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

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, "AAPM patients", write_patient, split, seed,
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


def _simulation_inputs(src: Path, series_uid: str | None, split_by: str
                       ) -> tuple[list[SourceInput], list[Skipped], list[Skipped]]:
    """The inputs under ``src``: one per DICOM series (files grouped by SeriesInstanceUID, across
    folders) and one per other image file. The subject of a series is its PatientID
    (``split_by="patient"``) or the series itself (``"series"``); of another file, the file."""
    from restore_rwkv.data.io.dicom import DICOM_SUFFIXES, _non_image_reason, looks_like_dicom

    failures: list[Skipped] = []
    ignored: list[Skipped] = []
    series: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    others: list[Path] = []
    for path in _visible_files(src, ignored):
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
    src = _source_folder(src, out, overwrite)
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

    return _write_pairs(src, out, fmt, overwrite, quiet, inputs, f"{task} inputs", write_input, split, seed,
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
