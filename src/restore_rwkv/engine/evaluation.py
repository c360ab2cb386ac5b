"""Evaluate a model over a dataset of (LQ, HQ) pairs under the paper's protocol, on full slices.

One row per item: ``name, task, modality`` and PSNR/SSIM/RMSE of the input (LQ against HQ,
``*_in``) and of the output (restored against HQ, ``*_out``), both in physical units after the
modality's evaluation window (``restore_rwkv.metrics.evaluate_normalized``). In a
``torch.distributed`` run each rank evaluates its share and every rank returns all rows.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from restore_rwkv.inference.ensemble import check_self_ensemble, with_self_ensemble
from restore_rwkv.inference.slices import forward_slices, inference_tile, plan_slices
from restore_rwkv.metrics import SSIM_BOUNDARIES, evaluate_normalized, evaluate_physical
from restore_rwkv.modality import ModalityConvention, get_convention, modality_name
from restore_rwkv.utils.devices import PRECISIONS, autocast
from restore_rwkv.utils.distributed import group_position
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file
from restore_rwkv.utils.progress import progress_bar

COLUMNS = ("name", "task", "modality", "psnr_in", "ssim_in", "rmse_in", "psnr_out", "ssim_out", "rmse_out")
METRIC_COLUMNS = COLUMNS[3:]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel: their forward would synchronise ranks
    (buffer broadcasts), which hangs when ranks evaluate different numbers of items."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _conventions_for(dataset, conventions: Mapping | None) -> dict[str, ModalityConvention]:
    """Explicit conventions, else those the dataset normalised with, keyed by modality name."""
    if conventions is None:
        conventions = getattr(dataset, "conventions", None) or {}
        single = getattr(dataset, "convention", None)  # SimulatedPairDataset
        if single is not None:
            conventions = {single.name: single, **conventions}
    return {modality_name(key) or key: ModalityConvention.from_card(spec, name=key) for key, spec in conventions.items()}


def safe_file_name(name: str) -> str:
    """A file name stem for an item name: its file suffix dropped, ``#<slice>`` as ``_slice<slice>``, and
    every character but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    base, _, slice_index = name.partition("#")
    if base.lower().endswith(".nii.gz"):
        base = base[:-7]
    elif Path(base).suffix:
        base = base[: -len(Path(base).suffix)]
    if slice_index:
        base = f"{base}_slice{slice_index}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "image"


def _batches(dataset, indices: Sequence[int], batch_size: int) -> Iterator[list[tuple[int, dict]]]:
    """Consecutive items of ``indices`` in batches of up to ``batch_size`` images of one size."""
    batch: list[tuple[int, dict]] = []
    for index in indices:
        item = dataset[index]
        if batch and (len(batch) == batch_size or batch[0][1]["lq"].shape != item["lq"].shape):
            yield batch
            batch = []
        batch.append((index, item))
    if batch:
        yield batch


def score_restored(restored: torch.Tensor, item: Mapping[str, Any], convention: ModalityConvention,
                   ssim_boundary: str = "zero") -> tuple[dict, np.ndarray]:
    """PSNR, SSIM and RMSE of a restored item (``restored``: (1, H, W) in [0, 1]) against its HQ, and the
    restored image in the policy's unit.

    As ``restore`` writes it: where the item's input lies outside the policy's range (its
    ``lq_units``, when the dataset gives them), the input's values are kept
    (``ModalityConvention.keep_outside``). Evaluation and training validation both score with this.
    """
    units = convention.denormalize(restored[0].double().cpu().numpy())
    if "lq_units" not in item:
        return evaluate_normalized(restored, item["hq"].to(restored.device), convention,
                                   ssim_boundary=ssim_boundary), units
    units, _ = convention.keep_outside(units, item["lq_units"][0].double().numpy())
    reference = convention.denormalize(item["hq"][0].double().cpu().numpy())
    return evaluate_physical(units, reference, convention, ssim_boundary=ssim_boundary), units


def evaluate_model(model: nn.Module, dataset, device: str | torch.device = "cpu", batch_size: int = 1,
                   precision: str = "fp32", conventions: Mapping[str, Any] | None = None,
                   max_images: int | None = None, save_dir: str | os.PathLike | None = None,
                   quiet: bool = False, ssim_boundary: str = "zero", tile: int | None = None) -> list[dict]:
    """Restore every item of ``dataset`` and score input and output; returns the rows.

    Images run whole, or in overlapping tiles of ``tile`` pixels (``inference.slices``: the
    blending ``restore`` uses; ``cli evaluate`` passes the card's default tile).

    Items are dicts with ``lq``, ``hq`` ((1, H, W) in [0, 1]), ``task``, ``modality`` and
    ``name`` (``PairedSliceDataset``, ``SimulatedPairDataset``). ``conventions`` (modality ->
    name, ``ModalityConvention`` or card entry) must be those the dataset normalised with; by
    default the dataset's own, else the modality's default. Consecutive items of one size are
    batched (up to ``batch_size``). ``precision``: ``fp32``, or autocast in ``bf16``/``fp16``.
    ``max_images`` keeps the first items. Items with ``lq_units`` (``PairedSliceDataset(physical=True)``)
    keep the input's values where it lies outside the policy's range, as ``restore`` does
    (``ModalityConvention.keep_outside``). ``save_dir`` receives each restored image in the
    stored units of its LQ (the policy's unit times the item's ``scale``; float32 ``.npy``,
    neither clipped nor windowed) as
    ``<task>/<index>_<name stem>.npy`` (the index makes names unique). The model runs in eval
    mode under ``torch.inference_mode``; its previous mode is restored afterwards.
    ``ssim_boundary="zero"`` reproduces the reference code's SSIM (``metrics.ssim``).

    Under ``torch.distributed`` rank r evaluates items ``r::world_size`` and the rows are gathered
    (``all_gather_object``), so every rank returns all rows in dataset order. A DDP-wrapped model
    is unwrapped first; pass the device of this rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if ssim_boundary not in SSIM_BOUNDARIES:
        raise ValueError(f"ssim_boundary must be one of {SSIM_BOUNDARIES}; got {ssim_boundary!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    net = _unwrap(model)
    known = _conventions_for(dataset, conventions)
    count = len(dataset) if max_images is None else max(0, min(len(dataset), int(max_images)))
    rank, world = group_position()
    indices = range(count)[rank::world]
    digits = len(str(max(count - 1, 0)))
    amp = autocast(device, precision)

    was_training = net.training
    net.eval()
    mine: list[tuple[int, dict]] = []
    try:
        with progress_bar(total=len(indices), desc="evaluate", quiet=quiet or rank != 0) as bar:
            for batch in _batches(dataset, indices, batch_size):
                lq = torch.stack([item["lq"] for _, item in batch]).to(device)
                hq = torch.stack([item["hq"] for _, item in batch]).to(device)
                if tile is None:
                    with torch.inference_mode(), amp:
                        restored = net(lq)
                    restored = restored.float()
                else:
                    plan = plan_slices(net, lq.shape[-2], lq.shape[-1], len(batch), None, tile)
                    restored = forward_slices(net, lq[:, 0], plan, device, precision)[:, None].to(device)
                for k, (index, item) in enumerate(batch):
                    modality = item["modality"]
                    convention = known.get(modality) or get_convention(modality)
                    before = evaluate_normalized(lq[k], hq[k], convention, ssim_boundary=ssim_boundary)
                    after, units = score_restored(restored[k], item, convention, ssim_boundary)
                    row = {"name": item["name"], "task": item["task"], "modality": convention.name}
                    row.update({f"{key}_in": float(before[key]) for key in ("psnr", "ssim", "rmse")})
                    row.update({f"{key}_out": float(after[key]) for key in ("psnr", "ssim", "rmse")})
                    mine.append((index, row))
                    if save_dir is not None:
                        image = (units * float(item.get("scale", 1.0))).astype(np.float32)
                        path = (Path(save_dir) / safe_file_name(item["task"])
                                / f"{index:0{digits}d}_{safe_file_name(item['name'])}.npy")
                        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
                            np.save(fh, image)
                bar.update(len(batch))
    finally:
        net.train(was_training)

    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        mine = [pair for part in gathered for pair in part]
    return [row for _, row in sorted(mine, key=lambda pair: pair[0])]


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task (in order of first appearance): ``count`` and, per metric, ``mean``, ``std`` and ``n``.

    Means and (population) standard deviations are over the finite values; ``n`` says how many
    there were (a flat label gives NaN PSNR/SSIM, an exact restoration infinite PSNR: both are
    left out). ``mean``/``std`` are None when no value is finite.
    """
    summary: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(row["task"] for row in rows):
        mine = [row for row in rows if row["task"] == task]
        entry: dict[str, Any] = {"count": len(mine)}
        for column in METRIC_COLUMNS:
            values = np.asarray([float(row[column]) for row in mine], dtype=np.float64)
            finite = values[np.isfinite(values)]
            entry[column] = {"mean": float(finite.mean()) if finite.size else None,
                             "std": float(finite.std()) if finite.size else None, "n": int(finite.size)}
        summary[task] = entry
    return summary


def _decimals(metric: str, mean: float) -> int:
    """Decimals shown: PSNR 2, SSIM 4, RMSE about 4 significant digits of its mean (units differ by modality)."""
    if metric == "psnr":
        return 2
    if metric == "ssim":
        return 4
    magnitude = math.floor(math.log10(abs(mean))) if mean != 0 else 0
    return int(min(6, max(0, 3 - magnitude)))


def format_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """``summary`` as a text table: one line per task, ``mean ± std`` of each metric, input then output."""
    header = ["task", "n"] + [f"{metric.upper()} {side}" for metric in ("psnr", "ssim", "rmse") for side in ("in", "out")]
    lines = [header]
    notes = []
    for task, entry in summary.items():
        cells = [task, str(entry["count"])]
        for metric in ("psnr", "ssim", "rmse"):
            for side in ("in", "out"):
                stats = entry[f"{metric}_{side}"]
                if stats["mean"] is None:
                    cells.append("-")
                else:
                    d = _decimals(metric, stats["mean"])
                    cells.append(f"{stats['mean']:.{d}f} ± {stats['std']:.{d}f}")
                if stats["n"] != entry["count"]:
                    notes.append(f"{task} {metric}_{side}: {entry['count'] - stats['n']} of {entry['count']} "
                                 "value(s) not finite, left out")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text + notes)


# ----------------------------------------------------------------------------- evaluating weights on a split
def split_records(data: str | os.PathLike, split: str) -> list:
    """The pairs of ``split`` in a prepared root (``ROOT/{MRI,CT,PET}/SPLIT/{LQ,HQ}``) or a manifest
    (``split="all"``: every pair of a manifest)."""
    from restore_rwkv.data.datasets import read_manifest, reference_layout

    data = Path(data)
    if data.is_dir():
        if split == "all":
            raise InputError(data, "--split all is for manifests; name a split of the prepared root")
        return reference_layout(data, split)
    if not data.exists():
        raise InputError(data, "no such folder or manifest")
    records = read_manifest(data)
    if split == "all":
        return records
    chosen = [r for r in records if r.split == split]
    if not chosen:
        present = sorted({r.split or "(empty)" for r in records})
        raise InputError(data, f"no pairs of split {split!r} (splits present: {', '.join(present)}; "
                               "--split all takes every pair)")
    return chosen


def trained_pairs(records: Sequence, card, force: bool = False) -> tuple[list, str]:
    """The records whose task and modality ``card`` was trained on (all of them with ``force``), and a
    note on those left out (refused when none is left)."""
    def canonical(modality: str) -> str:
        name = modality_name(modality)
        if name is None:
            raise InputError(None, f"unknown modality {modality!r}; expected one of ct, mri, pet")
        return name

    modalities = set(card.modalities)
    known = [r for r in records if r.task in card.tasks and canonical(r.modality) in modalities]
    unknown = [r for r in records if r not in known]
    if force or not unknown:
        return list(records) if force else known, ""
    counts: dict[str, int] = {}
    for r in unknown:
        key = f"{r.task}/{canonical(r.modality)}"
        counts[key] = counts.get(key, 0) + 1
    listed = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))
    trained = f"{card.task} on {', '.join(sorted(modalities))}"
    if not known:
        raise InputError(None, f"the data holds only pairs the weights were not trained for ({listed}; "
                               f"the card says {trained}); --force evaluates them anyway")
    return known, f"left out {len(unknown)} pair(s) the weights were not trained for: {listed} (--force includes them)"


def _check_out(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output folder that is, holds or lies inside an input (``--overwrite`` replaces the whole
    folder), an existing non-empty one without ``overwrite``, and with it one that evaluate did not write."""
    from restore_rwkv.utils.files import (
        check_writable_target,
        refuse_input_target,
        refuse_replacing_foreign_folder,
        refuse_target_holding,
    )

    for source in inputs:
        refuse_target_holding(out, source, "an input of this evaluation")
        refuse_input_target(out, source.resolve())  # inside an input folder
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "output folder exists and is not empty (--overwrite replaces it)")
        # per_image.csv, not summary.json: prepare writes a summary.json too
        refuse_replacing_foreign_folder(out, ("per_image.csv",), "evaluate")
    check_writable_target(out)


def _refuse_out_holding_pairs(out: Path, records: Sequence) -> None:
    """Refuse an output folder that is or holds an image of the pairs (a manifest's pairs can lie beside
    it or anywhere else): ``--overwrite`` replaces the whole folder."""
    from restore_rwkv.utils.files import refuse_target_holding

    for record in records:
        for image in (record.lq, record.hq):
            refuse_target_holding(out, image, "an image of this evaluation's pairs")


def write_rows_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The per-image rows as CSV (``COLUMNS``), written atomically."""
    import csv

    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})
    return path


def evaluate_weights(weights: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                     split: str = "test", *, device: str = "auto", batch_size: int = 1, precision: str = "fp32",
                     ssim_boundary: str = "zero", tile: int | None = None, max_images: int | None = None,
                     force: bool = False, overwrite: bool = False, save_images: bool = False,
                     quiet: bool = False, self_ensemble: int = 1) -> tuple[dict, str]:
    """Score ``weights`` on ``split`` of ``data`` and write ``out/per_image.csv`` and ``out/summary.json``
    (and ``out/images/`` with ``save_images``); returns (the summary's content, a note on pairs left out).

    Each pair is normalised with the card's policy for its modality (its scale from the manifest or
    fitted on its LQ, as ``restore`` fits it), restored in tiles of ``tile`` (default: the card's
    ``default_tile``: chosen on validation, else the training patch size), and scored under the
    paper's protocol with the input's values kept outside the policy's range, as ``restore`` writes them.
    ``self_ensemble`` N averages each output over N rotations/flips (``inference.ensemble``). The
    output folder appears only when complete.
    """
    import json

    from restore_rwkv.data.datasets import PairedSliceDataset
    from restore_rwkv.models.card import load_model, load_model_card, resolve_weights
    from restore_rwkv.utils.devices import resolve_device
    from restore_rwkv.utils.files import atomic_folder

    if batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1, got {batch_size}")
    inference_tile(None, tile)  # refuses a bad tile before any file is read
    check_self_ensemble(self_ensemble)
    if max_images is not None and max_images < 1:
        raise InputError(None, f"--max-images must be at least 1, got {max_images}")
    out, data = Path(out), Path(data)
    weights = resolve_weights(weights)
    _check_out(out, [data, weights], overwrite)
    device = resolve_device(device)
    records, note = trained_pairs(split_records(data, split), load_model_card(weights), force)
    _refuse_out_holding_pairs(out, records)
    model, card = load_model(weights, device)
    model = with_self_ensemble(model, self_ensemble)
    conventions = {}
    for r in records:
        try:
            conventions[r.modality] = card.convention(r.modality)
        except KeyError:  # --force: a modality the card lacks gets its default policy
            conventions[r.modality] = get_convention(r.modality)
    dataset = PairedSliceDataset(records, conventions=conventions, physical=True)
    side = inference_tile(card.default_tile, tile)
    with atomic_folder(out, replace=overwrite) as stage:
        rows = evaluate_model(model, dataset, device=device, batch_size=batch_size, precision=precision,
                              conventions={c.name: c for c in conventions.values()}, max_images=max_images,
                              save_dir=stage / "images" if save_images else None, quiet=quiet,
                              ssim_boundary=ssim_boundary, tile=side)
        summary = summarize(rows)
        write_rows_csv(stage / "per_image.csv", rows)
        report = {
            "per_task": summary,
            "images": len(rows),
            "weights": str(weights.resolve()),
            "model": card.model,
            "trained_task": card.task,
            "data": str(data.resolve()),
            "split": split,
            "protocol": {
                "data_range": "label max - min per image, after windowing",
                "ssim": {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "boundary": ssim_boundary},
                "std": "population (ddof 0), over finite values",
                "conventions": {c.name: c.to_card() for c in conventions.values()},
            },
            "device": str(device),
            "precision": precision,
            "tile": side or "whole slices",
            "self_ensemble": self_ensemble,
        }
        with atomic_file(stage / "summary.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report, note
