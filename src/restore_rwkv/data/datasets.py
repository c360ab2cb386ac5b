"""Datasets of (LQ, HQ) slice pairs for training and evaluation.

Items are dicts ``{"lq": (1, H, W) float32 in [0, 1], "hq": ..., "task": str, "modality": str,
"name": str, "scale": float}``: normalised with the modality's intensity policy
(``restore_rwkv.modality``), so one model can train on all tasks at once. ``scale`` (stored units per
unit of the policy) is the pair's: a manifest's ``scale`` column (``prepare`` fits it on the whole
input volume), else :func:`~restore_rwkv.data.intensity.input_scale` of the LQ file (a whole volume
when the pair is a slice of one); for pairs made on the fly, of the HQ file (there is no LQ volume).
Sources: a manifest (CSV/JSON with lq, hq, modality, task columns), paired folders, or HQ images
with a degradation applied on the fly.
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from restore_rwkv.data.intensity import input_scale
from restore_rwkv.data.io import ImageMeta, is_image_file, read_array, read_image
from restore_rwkv.modality import TASKS, ModalityConvention, get_convention
from restore_rwkv.utils.errors import InputError, check_finite
from restore_rwkv.utils.files import atomic_file


@dataclass(frozen=True)
class PairRecord:
    """One training or test pair: paths (and slice index inside a volume, if any)."""

    lq: str
    hq: str
    modality: str
    task: str
    split: str = ""
    lq_slice: int | None = None
    hq_slice: int | None = None
    scale: float | None = None  # stored units per unit of the intensity policy; None: fitted when read


def read_manifest(path: str | os.PathLike) -> list[PairRecord]:
    """Read a CSV or JSON manifest; relative paths are taken relative to the manifest's folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such manifest")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            rows = rows.get("pairs", rows) if isinstance(rows, dict) else rows
        else:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable manifest ({exc})") from None
    records = []
    for number, row in enumerate(rows, start=1):
        missing = [k for k in ("lq", "hq", "modality", "task") if not row.get(k)]
        if missing:
            raise InputError(path, f"row {number} lacks {', '.join(missing)}")
        if row["task"] not in TASKS:
            raise InputError(path, f"row {number}: unknown task {row['task']!r} (expected one of {sorted(TASKS)})")
        resolve = lambda p: str(p if os.path.isabs(p) else path.parent / p)  # noqa: E731
        slice_of = lambda v: None if v in (None, "", "None") else int(v)  # noqa: E731
        try:
            scale = None if row.get("scale") in (None, "", "None") else float(row["scale"])
        except (TypeError, ValueError):
            raise InputError(path, f"row {number}: scale {row.get('scale')!r} is not a number") from None
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise InputError(path, f"row {number}: scale must be a positive number, got {scale}")
        records.append(PairRecord(resolve(row["lq"]), resolve(row["hq"]), row["modality"], row["task"],
                                  row.get("split", "") or "", slice_of(row.get("lq_slice")),
                                  slice_of(row.get("hq_slice")), scale))
    return records


def write_manifest(path: str | os.PathLike, records: Sequence[PairRecord], root: str | os.PathLike | None = None) -> Path:
    """Write a CSV manifest (paths relative to ``root``, default the manifest's folder)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    fields = ["lq", "hq", "modality", "task", "split", "lq_slice", "hq_slice", "scale"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in records:
            writer.writerow({"lq": os.path.relpath(r.lq, base), "hq": os.path.relpath(r.hq, base),
                             "modality": r.modality, "task": r.task, "split": r.split,
                             "lq_slice": "" if r.lq_slice is None else r.lq_slice,
                             "hq_slice": "" if r.hq_slice is None else r.hq_slice,
                             "scale": "" if r.scale is None else repr(float(r.scale))})
    return path


def pair_folders(lq_dir: str | os.PathLike, hq_dir: str | os.PathLike, modality: str, task: str) -> list[PairRecord]:
    """Pair the files of two folders by relative path (same name in both)."""
    lq_dir, hq_dir = Path(lq_dir), Path(hq_dir)
    for d in (lq_dir, hq_dir):
        if not d.is_dir():
            raise InputError(d, "no such folder")
    lq_files = {p.relative_to(lq_dir) for p in lq_dir.rglob("*") if p.is_file() and is_image_file(p)}
    if not lq_files:
        raise InputError(lq_dir, "no image files in this folder")
    missing = sorted(str(p) for p in lq_files if not (hq_dir / p).exists())
    if missing:
        raise InputError(hq_dir, f"no HQ partner for {len(missing)} LQ file(s), e.g. {missing[0]}")
    return [PairRecord(str(lq_dir / p), str(hq_dir / p), modality, task) for p in sorted(lq_files)]


def reference_layout(root: str | os.PathLike, split: str, modalities: Sequence[str] = ("MRI", "CT", "PET"),
                     allow_pickle: bool = False) -> list[PairRecord]:
    """Pairs of the reference's layout ``ROOT/{MRI,CT,PET}/{split}/{LQ,HQ}/<same name>``.

    Its ``.bin`` files are pickles and need ``allow_pickle`` when read (see ``read_image``). A
    ``ROOT/manifest.csv`` written by ``prepare`` lends each pair its ``scale``.
    """
    task_of = {task.folder: task.name for task in TASKS.values()}
    scales: dict[str, float] = {}
    if (Path(root) / "manifest.csv").is_file():
        scales = {os.path.normpath(r.lq): r.scale for r in read_manifest(Path(root) / "manifest.csv")
                  if r.scale is not None}
    records = []
    for modality in modalities:
        base = Path(root) / modality / split
        if (base / "LQ").is_dir() and (base / "HQ").is_dir():
            lq_dir, hq_dir = base / "LQ", base / "HQ"
            names = sorted(p.name for p in lq_dir.iterdir() if p.is_file() and (is_image_file(p) or p.suffix == ".bin"))
            for name in names:
                if not (hq_dir / name).exists():
                    raise InputError(hq_dir / name, "HQ partner of an LQ file is missing")
                records.append(PairRecord(str(lq_dir / name), str(hq_dir / name), modality.lower(),
                                          task_of[modality], split,
                                          scale=scales.get(os.path.normpath(str(lq_dir / name)))))
    if not records:
        raise InputError(root, f"no {split}/LQ + {split}/HQ pairs under {', '.join(modalities)}")
    return records


def central_slices(volume: np.ndarray, axis: int, count: int, air_value: float | None = None,
                   min_tissue_fraction: float = 0.05) -> list[int]:
    """Indices of the central ``count`` slices along ``axis``, without those that are nearly all air.

    A slice counts as air when fewer than ``min_tissue_fraction`` of its pixels exceed
    ``air_value`` (default: 5 % of the volume's range above its minimum).
    """
    n = volume.shape[axis]
    start = max(0, (n - count) // 2)
    indices = list(range(start, min(n, start + count)))
    if air_value is None:
        lo, hi = float(np.min(volume)), float(np.max(volume))
        air_value = lo + 0.05 * (hi - lo)
    keep = []
    for i in indices:
        s = np.take(volume, i, axis=axis)
        if np.mean(s > air_value) >= min_tissue_fraction:
            keep.append(i)
    return keep


class VolumeCache:
    """The arrays of recently read files, up to ``max_bytes`` (least recently used dropped first).

    Datasets index slices of volumes; with this cache each volume is read once per process
    (each DataLoader worker has its own copy), not once per slice. ``.npy`` files are
    memory-mapped instead, so their slices are read on access and cost no cache space.
    """

    def __init__(self, max_bytes: int = 2 << 30, allow_pickle: bool = False) -> None:
        self.max_bytes, self.allow_pickle = int(max_bytes), allow_pickle
        self._arrays: OrderedDict[str, tuple[np.ndarray, ImageMeta]] = OrderedDict()
        self.reads = 0  # files read from disk (for tests and diagnostics)
        self._scales: dict[tuple[str, ModalityConvention], float] = {}

    def volume(self, path: str) -> tuple[np.ndarray, int | None]:
        """The array of ``path`` and its slice axis."""
        data, meta = self.image(path)
        return data, meta.slice_axis

    def image(self, path: str) -> tuple[np.ndarray, ImageMeta]:
        """The array of ``path`` and its metadata."""
        if path in self._arrays:
            self._arrays.move_to_end(path)
            return self._arrays[path]
        self.reads += 1
        if path.lower().endswith(".npy"):
            data, meta = read_array(path, mmap=True)
        else:
            data, meta = read_image(path, allow_pickle=self.allow_pickle)
        entry = (data, meta)
        if _resident_bytes(data) <= self.max_bytes:
            self._arrays[path] = entry
            while sum(_resident_bytes(a) for a, _ in self._arrays.values()) > self.max_bytes:
                self._arrays.popitem(last=False)
        return entry

    def slice(self, path: str, index: int | None) -> np.ndarray:
        """A 2-D float32 image: the file itself, or slice ``index`` along its slice axis; finite values checked."""
        data, meta = self.image(path)
        slice_axis = meta.slice_axis
        if index is not None:
            axis = slice_axis if slice_axis is not None else 0
            if not -data.shape[axis] <= index < data.shape[axis]:
                raise InputError(path, f"slice {index} out of range (the volume has {data.shape[axis]} along axis {axis})")
            data = np.take(data, index, axis=axis)
        data = np.squeeze(np.asarray(data, dtype=np.float32))
        if not data.flags.writeable:  # a slice of a memory-mapped file
            data = data.copy()
        if data.ndim != 2:
            raise InputError(path, f"expected a 2-D slice, got shape {data.shape} (give a slice index for volumes)")
        check_finite(data, path if index is None else f"{path}#{index}")
        return data

    def scale(self, path: str, convention: ModalityConvention) -> float:
        """The stored units per unit of ``convention`` of the image or volume in ``path`` (remembered per path)."""
        key = (path, convention)
        if key not in self._scales:
            data, meta = self.image(path)
            volume = np.squeeze(np.asarray(data))
            slices = volume[None] if volume.ndim < 3 else np.moveaxis(volume, meta.slice_axis or 0, 0)
            self._scales[key] = input_scale(convention, meta, slices, volume.size, source=path)[0]
        return self._scales[key]

    def __getstate__(self) -> dict:
        # workers start with an empty cache instead of a pickled copy of the parent's arrays
        return {**self.__dict__, "_arrays": OrderedDict()}


def _resident_bytes(array: np.ndarray) -> int:
    """Memory an array holds (0 for a memory map: the page cache holds its pages)."""
    return 0 if isinstance(array, np.memmap) else int(array.nbytes)


def item_name(path: str, index: int | None) -> str:
    """The name of a dataset item: the file name, with ``#slice`` for a slice of a volume."""
    name = Path(path).name
    return name if index is None else f"{name}#{index}"


def pair_scale(record: PairRecord, convention: ModalityConvention, cache: VolumeCache) -> float:
    """A pair's scale under ``convention``: the manifest's when ``prepare`` fitted it with this same
    (default) scaling, else fitted on the pair's LQ file (a whole volume for a slice of one)."""
    if record.scale is not None and convention.scaling == get_convention(convention.name).scaling:
        return float(record.scale)
    return cache.scale(record.lq, convention)


class PairedSliceDataset(Dataset):
    """(LQ, HQ) pairs from records (manifest, folders or reference layout), normalised per modality.

    ``conventions`` maps a record's modality to the policy to normalise with (default: the
    modality's); ``physical`` adds ``lq_units`` to each item (see the module doc)."""

    def __init__(self, records: Sequence[PairRecord], transform: Callable | None = None, allow_pickle: bool = False,
                 conventions: dict | None = None, physical: bool = False) -> None:
        if not records:
            raise ValueError("PairedSliceDataset needs at least one record")
        self.records, self.transform, self.allow_pickle = list(records), transform, allow_pickle
        self.conventions = conventions or {}
        self.physical = physical  # items also carry "lq_units": the LQ in the policy's unit, unclipped (evaluation)
        self.cache = VolumeCache(allow_pickle=allow_pickle)

    def __len__(self) -> int:
        return len(self.records)

    def tasks(self) -> list[str]:
        return [r.task for r in self.records]

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        convention = self.conventions.get(r.modality) or get_convention(r.modality)
        lq = self.cache.slice(r.lq, r.lq_slice)
        hq = self.cache.slice(r.hq, r.hq_slice)
        if lq.shape != hq.shape:
            raise InputError(r.lq, f"LQ shape {lq.shape} differs from HQ shape {hq.shape} ({r.hq})")
        scale = pair_scale(r, convention, self.cache)
        item = {"lq": torch.from_numpy(convention.normalize(lq, scale))[None],
                "hq": torch.from_numpy(convention.normalize(hq, scale))[None],
                "task": r.task, "modality": convention.name, "name": item_name(r.hq, r.hq_slice), "scale": float(scale)}
        if self.physical:
            item["lq_units"] = torch.from_numpy(np.asarray(lq / scale, dtype=np.float32))[None]
        return self.transform(item, index) if self.transform else item


class SimulatedPairDataset(Dataset):
    """HQ slices with LQ made on the fly by ``degrade(hq, seed) -> lq``, both in the policy's unit (the HQ
    file divided by its scale: SUV for PET in Bq/ml, as ``prepare`` converts it before it simulates).

    The seed of item i is ``seed + i`` (plus ``epoch * len(self)`` after ``set_epoch``), so a
    run is reproducible while each epoch sees fresh noise.
    """

    def __init__(self, hq_paths: Sequence[tuple[str, int | None]] | Sequence[str], modality: str, task: str,
                 degrade: Callable, seed: int = 0, transform: Callable | None = None, physical: bool = False) -> None:
        self.items = [(p, None) if isinstance(p, (str, os.PathLike)) else (str(p[0]), p[1]) for p in hq_paths]
        if not self.items:
            raise ValueError("SimulatedPairDataset needs at least one HQ image")
        self.convention = get_convention(modality)
        self.task, self.degrade, self.seed, self.transform, self.epoch = task, degrade, seed, transform, 0
        self.physical = physical  # items also carry "lq_units" (see PairedSliceDataset)
        self.cache = VolumeCache()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def tasks(self) -> list[str]:
        return [self.task] * len(self)

    def __getitem__(self, index: int) -> dict:
        path, slice_index = self.items[index]
        scale = self.cache.scale(str(path), self.convention)  # of the HQ file: no LQ volume exists
        hq = torch.from_numpy(self.cache.slice(str(path), slice_index)) / scale  # in the policy's unit, like prepare
        lq = self.degrade(hq, seed=self.seed + index + self.epoch * len(self))
        item = {"lq": self.convention.normalize(lq.float())[None], "hq": self.convention.normalize(hq.float())[None],
                "task": self.task, "modality": self.convention.name, "name": item_name(str(path), slice_index),
                "scale": float(scale)}
        if self.physical:
            item["lq_units"] = lq.float()[None]
        return self.transform(item, index) if self.transform else item


class RandomPatchPairs:
    """Transform: the same random crop (default 128x128), flips and 90-degree rotation on LQ and HQ.

    A crop whose HQ is flat (air or background only) is drawn again, up to ``flat_retries``
    times. Images smaller than the patch are reflect-padded. Randomness comes from ``seed`` and the
    item index (and ``epoch`` via ``set_epoch``), so workers and ranks agree.
    """

    def __init__(self, patch: int = 128, flips: bool = True, rotations: bool = True, seed: int = 0,
                 flat_retries: int = 8) -> None:
        self.patch, self.flips, self.rotations, self.seed, self.epoch = patch, flips, rotations, seed, 0
        self.flat_retries = int(flat_retries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, item: dict, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        lq, hq = item["lq"], item["hq"]
        h, w = hq.shape[-2:]
        ph, pw = max(0, self.patch - h), max(0, self.patch - w)
        if ph or pw:
            pad = (0, pw, 0, ph)
            lq = torch.nn.functional.pad(lq[None], pad, mode="reflect" if min(h, w) > max(ph, pw) else "replicate")[0]
            hq = torch.nn.functional.pad(hq[None], pad, mode="reflect" if min(h, w) > max(ph, pw) else "replicate")[0]
            h, w = hq.shape[-2:]
        for _ in range(1 + self.flat_retries):  # a flat reference patch (air, background) teaches nothing: redraw
            top, left = int(rng.integers(0, h - self.patch + 1)), int(rng.integers(0, w - self.patch + 1))
            crop = (slice(None), slice(top, top + self.patch), slice(left, left + self.patch))
            if float(hq[crop].max() - hq[crop].min()) > 1e-6:
                break
        lq, hq = lq[crop], hq[crop]
        if self.flips and rng.random() < 0.5:
            lq, hq = lq.flip(-1), hq.flip(-1)
        if self.flips and rng.random() < 0.5:
            lq, hq = lq.flip(-2), hq.flip(-2)
        if self.rotations:
            k = int(rng.integers(0, 4))
            lq, hq = torch.rot90(lq, k, (-2, -1)), torch.rot90(hq, k, (-2, -1))
        return {**item, "lq": lq.contiguous(), "hq": hq.contiguous()}


def check_task_weights(weights: Mapping[str, float]) -> None:
    """Raise ValueError unless every task weight is positive and finite."""
    if any(not (0 < w < float("inf")) for w in weights.values()):
        raise ValueError("task weights must be positive and finite")


class TaskBalancedSampler(Sampler[int]):
    """Indices that draw each task equally often, or in ``weights``' shares (all-in-one training),
    ``num_samples`` per epoch.

    ``tasks`` gives the task of every index of the dataset (e.g. ``dataset.tasks()`` or the
    concatenation over a ConcatDataset). ``weights`` (task -> relative share, default 1 each)
    draws some tasks more often than others. With ``num_replicas``/``rank`` each process of a
    distributed run gets a disjoint share of the same epoch's draw.
    """

    def __init__(self, tasks: Sequence[str], num_samples: int | None = None, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, weights: Mapping[str, float] | None = None) -> None:
        self.groups: dict[str, np.ndarray] = {}
        for i, t in enumerate(tasks):
            self.groups.setdefault(t, []).append(i)  # type: ignore[attr-defined]
        if not self.groups:
            raise ValueError("TaskBalancedSampler needs at least one item")
        self.groups = {t: np.asarray(v) for t, v in self.groups.items()}
        unknown = sorted(set(weights or {}) - set(self.groups))
        if unknown:
            raise ValueError(f"task weights for tasks the data does not have: {', '.join(unknown)}")
        check_task_weights(weights or {})
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.groups} if weights else None
        total = num_samples or len(tasks)
        self.per_replica = int(np.ceil(total / num_replicas))
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_replica

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        names = sorted(self.groups)
        total = self.per_replica * self.num_replicas
        if self.weights is None:
            task_of_draw = np.resize(np.arange(len(names)), total)
        else:  # each task's share of the epoch in proportion to its weight (largest remainders)
            share = np.array([self.weights[n] for n in names]) / sum(self.weights.values()) * total
            counts = np.floor(share).astype(int)
            counts[np.argsort(counts - share)[: total - counts.sum()]] += 1
            task_of_draw = np.repeat(np.arange(len(names)), counts)
        rng.shuffle(task_of_draw)
        draws = [int(rng.choice(self.groups[names[t]])) for t in task_of_draw]
        return iter(draws[self.rank :: self.num_replicas])
