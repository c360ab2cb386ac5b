"""What every preparer shares: split rules, the report, output checks, the pair writer and the loop that
reads inputs, turns them into pairs, splits the subjects and writes the layout (``write_pairs``)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from restore_rwkv.data.datasets import PairRecord, write_manifest
from restore_rwkv.data.io import (
    ImageMeta,
    write_array,
    write_nifti,
)
from restore_rwkv.modality import TASKS
from restore_rwkv.physics import default_degradation
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import atomic_file, atomic_folder, check_writable_target, refuse_replacing_foreign_folder
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
        refuse_replacing_foreign_folder(out, ("manifest.csv", "summary.json"), "prepare")
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


def source_folder(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """``src`` as a Path, checked to be a folder apart from ``out``; ``out`` is checked before ``src`` is read."""
    check_out_apart_from_src(src, out)
    check_output_folder(out, overwrite)
    src = Path(src)
    if src.is_file():
        raise InputError(src, "is a file; --src takes a folder (put the file in a folder of its own)")
    if not src.is_dir():
        raise InputError(src, "no such folder")
    return src


def visible_files(src: Path, ignored: list[Skipped]) -> list[Path]:
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
                write_nifti(path, array, slice_meta(meta, slice_index))
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


def slice_meta(meta: ImageMeta | None, index: int | None) -> ImageMeta | None:
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


def failure_reason(exc: InputError, label: str) -> str:
    """The problem of ``exc`` without the path when the path is the input itself."""
    return exc.problem if exc.path is None or label == exc.path or label.startswith(f"{exc.path} (") else str(exc)


def write_pairs(src: Path, out: str | Path, fmt: str, overwrite: bool, quiet: bool, inputs: Sequence[SourceInput],
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
                failures.append(Skipped(source.label, failure_reason(exc, source.label)))
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


def ct_air_floor(*images: np.ndarray) -> tuple[np.ndarray, ...]:
    """CT images (HU) with values below -1024 HU (out-of-field padding such as -2000 or -3024) set to -1024."""
    return tuple(np.maximum(np.asarray(image, np.float32), np.float32(CT_AIR_HU)) for image in images)
