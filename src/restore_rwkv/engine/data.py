"""Datasets from a config's data sources, and an endless sampler whose items carry their epoch.

The trainer creates one DataLoader iterator for the whole run. Its sampler yields
``(epoch, index)`` pairs, this rank's share of each epoch's order, starting at any sample
(resume); the dataset wrapper hands the epoch to the dataset and its transform before each
item. So every worker process, persistent or not, draws the same patches and noise as a
single process would, and a resumed run continues the exact same stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from torch.utils.data import Dataset, Sampler

from restore_rwkv.data.datasets import (
    PairedSliceDataset,
    RandomPatchPairs,
    SimulatedPairDataset,
    TaskBalancedSampler,
    read_manifest,
    reference_layout,
)
from restore_rwkv.data.io import is_image_file, read_image
from restore_rwkv.modality import TASKS
from restore_rwkv.engine.config import DataSource
from restore_rwkv.utils.errors import InputError


def _spread(items: list, count: int | None) -> list:
    """``count`` items evenly spread over ``items`` (all when count is None or larger)."""
    if count is None or count >= len(items):
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def build_dataset(source: DataSource, patch_size: int | None, seed: int, conventions: dict | None = None,
                  physical: bool = False) -> Dataset:
    """The dataset ``source`` describes; ``patch_size`` adds random patches (training), None keeps whole slices;
    ``physical`` adds each input in the policy's unit (``lq_units``: validation scores as ``evaluate`` does)."""
    transform = RandomPatchPairs(patch_size, seed=seed) if patch_size else None
    if source.hq:
        return _simulated(source, transform, seed, physical)
    if source.root:
        records = reference_layout(source.root, source.split)
    else:
        records = [r for r in read_manifest(source.manifest) if r.split == source.split]
        if not records:
            raise InputError(source.manifest, f"no pairs of split {source.split!r}")
    if source.tasks:
        records = [r for r in records if r.task in source.tasks]
        if not records:
            raise InputError(source.root or source.manifest, f"no pairs of the tasks {source.tasks} in {source.split}")
    records = _spread(records, source.max_images)
    return PairedSliceDataset(records, transform=transform, conventions=conventions, physical=physical)


def _simulated(source: DataSource, transform, seed: int, physical: bool = False) -> Dataset:
    from restore_rwkv.physics import default_degradation

    files: list[Path] = []
    for entry in source.hq:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "no such HQ file or folder")
    items: list[tuple[str, int | None]] = []
    for path in files:
        data, meta = read_image(path)
        shape = np.squeeze(np.asarray(data)).shape
        if len(shape) == 3:
            axis = meta.slice_axis if meta.slice_axis is not None else 0
            items.extend((str(path), i) for i in range(shape[axis]))
        else:
            items.append((str(path), None))
    if not items:
        raise InputError(source.hq[0], "no HQ images")
    try:
        degrade = default_degradation(source.simulate, **source.degradation)
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"data degradation: {exc}") from None
    return SimulatedPairDataset(_spread(items, source.max_images), TASKS[source.simulate].modality, source.simulate, degrade,
                                seed=seed, transform=transform, physical=physical)


def dataset_tasks(dataset: Dataset) -> list[str]:
    """The task of every item."""
    return list(dataset.tasks()) if hasattr(dataset, "tasks") else []


class EpochItems(Dataset):
    """Items addressed as ``(epoch, index)``: the epoch reaches the dataset and its transform first."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        for target in (self.dataset, getattr(self.dataset, "transform", None)):
            if target is not None and hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        return self.dataset[index]


class EndlessEpochSampler(Sampler):
    """This rank's ``(epoch, index)`` stream, epoch after epoch, from sample ``start`` of that stream.

    Each epoch is a seeded permutation of the dataset (padded by wrapping to a multiple of
    the world size, then every ``world_size``-th index from ``rank``), or with ``tasks`` a
    :class:`TaskBalancedSampler` draw that gives every task the same share (or ``task_weights``' shares).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 tasks: list[str] | None = None, task_weights: Mapping[str, float] | None = None) -> None:
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start
        self.balanced = (TaskBalancedSampler(tasks, seed=seed, num_replicas=world_size, rank=rank, weights=task_weights)
                         if tasks else None)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.balanced is not None:
            self.balanced.set_epoch(epoch)
            return list(self.balanced)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        total = -(-self.size // self.world_size) * self.world_size
        order = np.resize(order, total)
        return [int(i) for i in order[self.rank :: self.world_size]]

    @property
    def per_epoch(self) -> int:
        return len(self.epoch_order(0))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            for index in self.epoch_order(epoch)[offset:]:
                yield (epoch, index)
            epoch, offset = epoch + 1, 0
