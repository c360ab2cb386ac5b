"""``restore-rwkv restore INPUT... --weights W -o OUT``: restore scans in their own format (docs/inference.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from restore_rwkv.utils.errors import InputError

PARTIAL = 3  # exit status: some inputs were restored, the listed others were not


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "restore", help="restore DICOM series, NIfTI volumes and images with trained weights",
        description="Restore each INPUT (a NIfTI file, a DICOM series folder, a DICOM file, a PNG/TIFF/NPY/MHA "
                    "image, or a folder of these) slice by slice and write it in the same format, geometry, "
                    "units and stored dtype. With one INPUT, OUT is the output (its suffix picks the format; "
                    "no suffix: a DICOM series folder for a series, else a folder); with several or a folder "
                    "of inputs, OUT is a folder holding one output per input, named like it.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, DICOM series folders, or folders of them")
    parser.add_argument("--weights", required=True,
                        help="a .safetensors file with its .json card, the card, a folder holding both, or a shipped name")
    parser.add_argument("-o", "--out", required=True, help="output file, series folder or folder (see above)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                        help="array axis to slice a volume along (default: the acquisition plane from the DICOM "
                             "orientation or NIfTI affine)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto: CUDA, else MPS, else CPU")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="fp32, or autocast in bf16/fp16 (default fp32)")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass (default 4)")
    parser.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                        help="memory one forward pass may use, e.g. 2G or 500M (default: half the free memory on "
                             "CPU/MPS, 80%% on CUDA); slices estimated above it are restored in overlapping tiles")
    parser.add_argument("--tile", type=int, default=None,
                        help="side in pixels of the overlapping tiles slices are restored in (default: the weights' "
                             "training patch size, from their card; 0: whole slices, tiled only to fit --max-memory)")
    parser.add_argument("--modality", default=None,
                        help="intensity convention to use (ct, mri, pet; default: the image's, from the weights' card)")
    parser.add_argument("--series-uid", default=None, help="the series to restore in a folder holding several")
    parser.add_argument("--force", action="store_true",
                        help="restore images whose modality the weights were not trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="write a figure of a few slices (input | output); with several inputs, one per input "
                             "named PNG-stem_<input>.png")
    parser.add_argument("--reference", default=None, metavar="REF",
                        help="a reference image (one INPUT only): the preview adds it, an error map and PSNR/SSIM")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _size(text: str) -> int:
    """Bytes from ``500M``, ``2G``, ``2GiB``, ``1.5g`` or a plain number of bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1] if value and value[-1] in units else ""
    try:
        number = float(value[:-1] if unit else value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(number * units[unit])


def _holds_dicom(folder: Path) -> bool:
    from restore_rwkv.data.io.dicom import DICOM_SUFFIXES, looks_like_dicom

    return any(p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(p))
               for p in folder.iterdir())


def expand_inputs(inputs: list[str]) -> tuple[list[Path], bool, list[str]]:
    """(inputs to restore, whether OUT is a folder of outputs, notes on files left out).

    A folder holding DICOM files is one series; any other folder is a batch: its image files
    and the series folders inside it.
    """
    from restore_rwkv.data.io import is_image_file
    from restore_rwkv.data.io.dicom import looks_like_dicom

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


def _targets(items: list[Path], out: Path, batch: bool) -> list[Path]:
    from restore_rwkv.data.io import file_suffix

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


def _preview_path(preview: Path, source: Path, batch: bool) -> Path:
    if not batch:
        return preview
    from restore_rwkv.data.io import file_suffix

    stem = source.name[: len(source.name) - len(file_suffix(source))] if file_suffix(source) else source.name
    return preview.with_name(f"{preview.stem}_{stem}.png")


def run(args) -> int:
    from restore_rwkv.data.io import read_image
    from restore_rwkv.inference import (choose_convention, inference_tile, resolve_device, restore_file,
                                        write_restore_preview)
    from restore_rwkv.inference.files import kept_slices_of
    from restore_rwkv.models.card import load_model, resolve_weights, weights_name
    from restore_rwkv.utils.progress import progress_bar
    from restore_rwkv.utils.runtime import tune_cpu_allocator

    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1; got {args.batch_size}")
    inference_tile(None, args.tile)  # refuses a bad --tile before any file is read
    items, batch, notes = expand_inputs(args.inputs)
    out = Path(args.out)
    targets = _targets(items, out, batch)
    if args.reference and batch:
        raise InputError(args.reference, "--reference needs exactly one INPUT")
    if not args.overwrite:
        for target in targets:
            if target.exists() and (target.is_file() or any(target.iterdir())):
                raise InputError(target, "exists (--overwrite replaces it)")
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator("speed")
    weights = resolve_weights(args.weights)
    model, card = load_model(weights, device)
    for note in notes:
        print(f"restore-rwkv: {note}", file=sys.stderr)

    failures: list[str] = []
    done = 0
    for source, target in progress_bar(list(zip(items, targets)), desc="inputs", quiet=args.quiet or len(items) < 2):
        try:
            result = restore_file(source, target, model=model, card=card, modality=args.modality, axis=args.axis,
                                  batch_size=args.batch_size, device=device, precision=args.precision,
                                  max_memory=args.max_memory, tile=args.tile, force=args.force,
                                  overwrite=args.overwrite, series_uid=args.series_uid,
                                  keep_slices=3 if args.preview else 0, quiet=args.quiet,
                                  model_name=weights_name(weights))
            done += 1
            how = f"tiles of {result.tile}" if result.tile else "whole slices"
            print(f"{source} -> {target} ({'x'.join(map(str, result.shape))}, {result.modality}, {how}, "
                  f"{result.seconds:.1f} s)")
            if args.preview:
                convention = choose_convention(card, None, result.modality, True)
                references = None
                if args.reference:
                    ref, _ = read_image(args.reference)
                    if tuple(ref.shape) != result.shape:
                        raise InputError(args.reference, f"reference of shape {tuple(ref.shape)} for an image of "
                                                         f"shape {result.shape}")
                    references = kept_slices_of(ref, None, result.axis, sorted(result.kept))
                write_restore_preview(_preview_path(Path(args.preview), source, batch), result.kept, convention,
                                      references, title=f"{source.name}: restored by {weights_name(weights)} ({result.modality})")
        except InputError as exc:
            failures.append(str(exc))
            print(f"restore-rwkv: error: {exc}", file=sys.stderr)
    if failures:
        if not done:
            return 2
        print(f"restore-rwkv: {len(failures)} of {len(items)} input(s) not restored:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return PARTIAL
    return 0
