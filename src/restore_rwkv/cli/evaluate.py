"""``restore-rwkv evaluate``: score weights on a test split under the paper's protocol.

Writes ``OUT/per_image.csv`` (one row per image), ``OUT/summary.json`` (per task mean ± std,
and what was evaluated how) and, with ``--save-images``, the restored images; prints the table.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from restore_rwkv.utils.errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score weights on a test split (PSNR, SSIM, RMSE per image and per task)",
        description="Restore every (LQ, HQ) pair of a split with the weights and score input and output "
                    "against HQ under the paper's protocol (docs/metrics.md). Writes OUT/per_image.csv "
                    "and OUT/summary.json; prints mean ± std per task.")
    parser.add_argument("--weights", required=True,
                        help="weights with their card: a .safetensors file, its .json card, a folder or a shipped name")
    parser.add_argument("--data", required=True,
                        help="a prepared ROOT (ROOT/{MRI,CT,PET}/SPLIT/{LQ,HQ}) or a manifest (.csv/.json)")
    parser.add_argument("--split", default="test",
                        help="split to evaluate (default test); with a manifest, 'all' takes every pair")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--save-images", action="store_true",
                        help="also write each restored image to OUT/images/<task>/ (.npy, physical units)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto: CUDA, else MPS, else CPU")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same size only)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="fp32, or autocast in bf16/fp16 (default fp32)")
    parser.add_argument("--ssim-boundary", default="zero", choices=("valid", "zero"),
                        help="zero (default): zero-padded SSIM averaged over the whole map, the paper's protocol "
                             "and the reference code's; valid: only window positions inside the image (Wang et al., "
                             "scikit-image) (docs/metrics.md)")
    parser.add_argument("--tile", type=int, default=None,
                        help="side in pixels of the overlapping tiles images are restored in (default: the weights' "
                             "training patch size, from their card; 0: whole images)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N pairs only")
    parser.add_argument("--force", action="store_true",
                        help="also evaluate tasks or modalities the weights' card does not list "
                             "(with the default conventions for modalities it lacks)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _check_out(out: Path, inputs: list[Path], overwrite: bool) -> None:
    from restore_rwkv.utils.files import check_writable_target

    resolved = out.resolve()
    for source in inputs:
        source = source.resolve()
        if source == resolved or resolved in source.parents:
            raise InputError(out, f"refusing to write over {source}, an input of this evaluation")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "output folder exists and is not empty (--overwrite replaces it)")
    check_writable_target(out)


def _records(data: Path, split: str):
    from restore_rwkv.data.datasets import read_manifest, reference_layout

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


def _known_pairs(records, card, force: bool):
    """The records whose task and modality the card knows (all of them with ``force``), and a note
    on those left out."""
    from restore_rwkv.data.modality import TASKS, get_convention

    def canonical(modality: str) -> str:
        try:
            return get_convention(modality).name
        except ValueError as exc:
            raise InputError(None, str(exc)) from None

    modalities = {canonical(m) for m in card.conventions}
    tasks = set(TASKS) if card.task == "all_in_one" else {card.task}
    known = [r for r in records if r.task in tasks and canonical(r.modality) in modalities]
    unknown = [r for r in records if r not in known]
    if force or not unknown:
        return records if force else known, ""
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    from restore_rwkv.engine.evaluation import COLUMNS
    from restore_rwkv.utils.files import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})


def run(args) -> int:
    from restore_rwkv.data.datasets import PairedSliceDataset
    from restore_rwkv.data.modality import get_convention
    from restore_rwkv.engine.evaluation import evaluate_model, format_table, summarize
    from restore_rwkv.inference.slices import inference_tile
    from restore_rwkv.metrics import resolve_convention
    from restore_rwkv.models.card import load_model, load_model_card, resolve_weights
    from restore_rwkv.utils.files import atomic_file, atomic_folder

    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1, got {args.batch_size}")
    inference_tile(None, args.tile)  # refuses a bad --tile before any file is read
    if args.max_images is not None and args.max_images < 1:
        raise InputError(None, f"--max-images must be at least 1, got {args.max_images}")
    out, data = Path(args.out), Path(args.data)
    weights = resolve_weights(args.weights)
    _check_out(out, [data, weights], args.overwrite)
    from restore_rwkv.utils.devices import resolve_device

    device = resolve_device(args.device)

    records, note = _known_pairs(_records(data, args.split), load_model_card(weights), args.force)
    model, card = load_model(weights, device)
    card_conventions = {get_convention(m).name: resolve_convention(spec, name=m) for m, spec in card.conventions.items()}
    conventions = {}
    for r in records:
        name = get_convention(r.modality).name
        conventions[r.modality] = card_conventions.get(name) or get_convention(name)
    dataset = PairedSliceDataset(records, conventions=conventions)
    if note:
        print(f"restore-rwkv: {note}", file=sys.stderr)

    tile = inference_tile(card.patch_size, args.tile)
    with atomic_folder(out, replace=args.overwrite) as stage:
        rows = evaluate_model(model, dataset, device=device, batch_size=args.batch_size, precision=args.precision,
                              conventions={c.name: c for c in conventions.values()}, max_images=args.max_images,
                              save_dir=stage / "images" if args.save_images else None, quiet=args.quiet,
                              ssim_boundary=args.ssim_boundary, tile=tile)
        summary = summarize(rows)
        _write_csv(stage / "per_image.csv", rows)
        report = {
            "per_task": summary,
            "images": len(rows),
            "weights": str(weights.resolve()),
            "model": card.model,
            "trained_task": card.task,
            "data": str(data.resolve()),
            "split": args.split,
            "protocol": {
                "data_range": "label max - min per image, after windowing",
                "ssim": {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "boundary": args.ssim_boundary},
                "std": "population (ddof 0), over finite values",
                "conventions": {c.name: {"unit": c.unit, "norm_range": list(c.norm_range),
                                         "eval_window": list(c.eval_window)}
                                for c in conventions.values()},
            },
            "device": str(device),
            "precision": args.precision,
            "tile": tile or "whole slices",
        }
        with atomic_file(stage / "summary.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_table(summary))
    print(f"per-image metrics: {out / 'per_image.csv'}; summary: {out / 'summary.json'}"
          + (f"; restored images: {out / 'images'}" if args.save_images else ""))
    return 0

