"""Restoring many inputs: which inputs a command line names, where each output goes, and a loop
that reports each input's failure and carries on with the rest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from restore_rwkv.data.io import file_suffix, is_image_file, read_image
from restore_rwkv.data.io.dicom import DICOM_SUFFIXES, looks_like_dicom
from restore_rwkv.inference.ensemble import check_self_ensemble
from restore_rwkv.inference.files import RestoreResult, kept_slices_of, restore_file
from restore_rwkv.inference.preview import write_restore_preview
from restore_rwkv.inference.slices import resolve_device
from restore_rwkv.models.card import load_model, resolve_weights, weights_name
from restore_rwkv.utils.errors import InputError


@dataclass
class BatchItem:
    """One input of a batch: where it went, and its result or the one-line reason it failed."""

    source: Path
    target: Path
    result: RestoreResult | None = None
    error: str | None = None
    preview: Path | None = None


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(p))
               for p in folder.iterdir())


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], bool, list[str]]:
    """(inputs to restore, whether OUT is a folder of outputs, notes on files left out).

    A folder holding DICOM files is one series; any other folder is a batch: its image files
    and the series folders inside it.
    """
    items: list[Path] = []
    notes: list[str] = []
    batch = len(inputs) > 1
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise InputError(path, "no such file or folder")
        if path.is_dir() and not _holds_dicom(path):
            batch = True
            found = []
            for child in sorted(path.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    if _holds_dicom(child):
                        found.append(child)
                elif is_image_file(child) or looks_like_dicom(child):
                    found.append(child)
                else:
                    notes.append(f"{child}: not an image file (left out)")
            if not found:
                raise InputError(path, "holds no image files or DICOM series folders")
            items.extend(found)
        else:
            items.append(path)
    return items, batch, notes


def output_targets(items: Sequence[Path], out: Path, batch: bool) -> list[Path]:
    """Where each input's output goes: ``out`` itself for one input, else ``out/<input name>``."""
    if not batch:
        source = items[0]
        if file_suffix(out) or source.is_dir():
            return [out]
        return [out / source.name]
    if file_suffix(out):
        raise InputError(out, "several inputs need an output folder, not a file name")
    targets = [out / p.name for p in items]
    seen: dict[Path, Path] = {}
    for source, target in zip(items, targets):
        if target in seen:
            raise InputError(source, f"has the same name as {seen[target]}; both would be written to {target}")
        seen[target] = source
    return targets


def preview_path(preview: Path, source: Path, batch: bool) -> Path:
    """The preview figure of ``source``: ``preview`` itself, or ``<preview stem>_<input stem>.png`` in a batch."""
    if not batch:
        return preview
    stem = source.name[: len(source.name) - len(file_suffix(source))] if file_suffix(source) else source.name
    return preview.with_name(f"{preview.stem}_{stem}.png")


def shard_indices(count: int, rank: int, world_size: int) -> range:
    """The inputs (indices) process ``rank`` of ``world_size`` restores: every ``world_size``-th from ``rank``,
    so each input goes to exactly one process and the shares differ by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return range(rank, count, world_size)


def refuse_existing(targets: Sequence[Path]) -> None:
    """InputError for the first target that exists (a file, or a folder that is not empty)."""
    for target in targets:
        if target.exists() and (target.is_file() or any(target.iterdir())):
            raise InputError(target, "exists (--overwrite replaces it)")


def restore_files(sources: Sequence[Path], targets: Sequence[Path], weights: str | os.PathLike, *,
                  batch: bool = False, overwrite: bool = False, preview: str | os.PathLike | None = None,
                  reference: str | os.PathLike | None = None, device: str = "auto", quiet: bool = True,
                  shard: tuple[int, int] = (0, 1), targets_checked: bool = False, **options) -> Iterator[BatchItem]:
    """Restore ``sources`` into ``targets`` with one load of ``weights``; yields one :class:`BatchItem` each.

    An input that fails (bad file, unwritable output) gets its one-line ``error`` and the next
    one goes on. Existing targets are refused before any work unless ``overwrite`` (all of them,
    whatever the shard, so every process of a run refuses alike). ``shard`` = (rank, world size)
    restores only that process's share (:func:`shard_indices`); ``targets_checked``: the caller has
    already refused existing targets (before other processes began writing theirs). ``preview`` writes a figure per
    input (:func:`preview_path`); ``reference`` (one input only) adds a reference image with error
    maps and scores to it. ``options`` go to :func:`restore_file`.
    """
    if reference is not None and len(sources) != 1:
        raise InputError(reference, "--reference needs exactly one INPUT")
    check_self_ensemble(options.get("self_ensemble", 1))  # once, not once per input
    if not overwrite and not targets_checked:
        refuse_existing(targets)
    device = resolve_device(device)
    if device.type == "cpu":
        from restore_rwkv.utils.runtime import tune_cpu_allocator

        tune_cpu_allocator("speed")
    path = resolve_weights(weights)
    model, card = load_model(path, device)
    name = weights_name(path)
    for index in shard_indices(len(sources), *shard):
        source, target = sources[index], targets[index]
        item = BatchItem(source, target)
        try:
            item.result = restore_file(source, target, model=model, card=card, device=device, overwrite=overwrite,
                                       keep_slices=3 if preview else 0, quiet=quiet, model_name=name, **options)
            if preview:
                item.preview = _write_preview(item.result, Path(preview), batch, reference, card, name)
        except InputError as exc:
            item.error = str(exc)
        yield item


def _write_preview(result: RestoreResult, preview: Path, batch: bool, reference, card, name: str) -> Path:
    convention = card.convention_for(None, result.modality, True)
    references = None
    if reference is not None:
        ref, _ = read_image(reference)
        in_plane = [a for a in range(len(result.shape)) if a != result.axis]
        expected = tuple(n * result.upsample if a in in_plane else n for a, n in enumerate(result.shape))
        if tuple(ref.shape) != expected:
            raise InputError(reference, f"reference of shape {tuple(ref.shape)} for an output of shape {expected}")
        references = kept_slices_of(ref, result.axis, sorted(result.kept))
    target = preview_path(preview, result.input, batch)
    unit = f" (scale {result.scale:.4g} stored per {convention.unit})" if result.scale != 1.0 else ""
    ensemble = f", self-ensemble x{result.self_ensemble}" if result.self_ensemble > 1 else ""
    write_restore_preview(target, result.kept, convention, references, scale=result.scale,
                          title=f"{result.input.name}: restored by {name} ({result.modality}{ensemble}){unit}")
    return target
