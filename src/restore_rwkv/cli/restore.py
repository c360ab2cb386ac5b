"""``restore-rwkv restore INPUT... --weights W -o OUT``: restore scans in their own format (docs/inference.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from restore_rwkv.cli import WEIGHTS_HELP
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
    parser.add_argument("--weights", required=True, help=WEIGHTS_HELP)
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
                        help="side in pixels of the overlapping tiles slices are restored in (default: the tile their "
                             "card chose on validation data, else their training patch size; 0: whole slices, tiled only to fit --max-memory)")
    parser.add_argument("--self-ensemble", type=int, default=1, choices=(1, 2, 4, 8), metavar="N",
                        help="average each slice's output over N rotations/flips of it: 1 (default, off), 2, 4 or 8; "
                             "N times the time (docs/inference.md, \"Self-ensemble\")")
    parser.add_argument("--modality", default=None,
                        help="intensity policy to use (ct, mri, pet; default: the image's, from the weights' card)")
    parser.add_argument("--pet-scale", type=float, default=None, metavar="FACTOR",
                        help="PET: stored units per SUV, for files that cannot say (units other than Bq/ml or g/ml, "
                             "a DICOM header without weight, dose or times; NIfTI not in SUV)")
    parser.add_argument("--upsample", type=int, default=1, metavar="N",
                        help="MRI: zero-fill each slice's k-space to N times its matrix before restoring (x N "
                             "super-resolution of a low-resolution acquisition; spacing / N in the output)")
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


def _say(line: str, stream=None) -> None:
    """Write one report line in one write, flushed: torchrun's workers share the terminal or pipe
    and run unbuffered, where ``print`` writes the text and its newline apart, so two ranks' lines
    could run together; and a worker stopped after the final barrier loses nothing."""
    stream = sys.stdout if stream is None else stream
    stream.write(line + "\n")
    stream.flush()


def run(args) -> int:
    """Restore the inputs; under torchrun each process restores its share and rank 0 reports them all."""
    import datetime

    from restore_rwkv.inference import resolve_device
    from restore_rwkv.utils.distributed import setup_distributed, teardown_distributed

    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1; got {args.batch_size}")
    # Shares are equal in count, not in size: a rank done early may wait long for the last one.
    info = setup_distributed(resolve_device(args.device).type, timeout=datetime.timedelta(days=7))
    try:
        return _restore(args, info)
    finally:
        teardown_distributed(info)


def _restore(args, info) -> int:
    from restore_rwkv.inference import expand_inputs, inference_tile, output_targets, restore_files, shard_indices
    from restore_rwkv.inference.batch import refuse_existing
    from restore_rwkv.inference.files import check_upsample
    from restore_rwkv.utils.distributed import barrier, gather_objects
    from restore_rwkv.utils.progress import progress_bar

    inference_tile(None, args.tile)  # refuses a bad --tile before any file is read
    check_upsample(args.upsample)
    if args.pet_scale is not None:
        from restore_rwkv.data.intensity import check_scale

        check_scale(args.pet_scale)
    items, batch, notes = expand_inputs(args.inputs)
    targets = output_targets(items, Path(args.out), batch)
    if info.is_main:
        for note in notes:
            print(f"restore-rwkv: {note}", file=sys.stderr)
    out = Path(args.out)
    made_out = False
    if info.distributed:
        if not args.overwrite:  # every rank refuses alike, before any rank writes
            refuse_existing(targets)
        made_out = batch and not out.exists()
        barrier(info)
        if batch:  # OUT exists before any rank writes, so no rank's cleanup removes it under another's feet
            out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    done = 0
    shard = (info.rank, info.world_size)
    mine = len(shard_indices(len(items), *shard))
    results = restore_files(items, targets, args.weights, batch=batch, overwrite=args.overwrite, preview=args.preview,
                            reference=args.reference, device=args.device, quiet=args.quiet, modality=args.modality,
                            axis=args.axis, batch_size=args.batch_size, precision=args.precision,
                            max_memory=args.max_memory, tile=args.tile, force=args.force, series_uid=args.series_uid,
                            pet_scale=args.pet_scale, upsample=args.upsample, self_ensemble=args.self_ensemble,
                            shard=shard,
                            targets_checked=info.distributed)  # checked above, before the barrier
    for item in progress_bar(results, total=mine, desc="inputs", quiet=args.quiet or mine < 2):
        if item.error is not None:
            failures.append(item.error)
            _say(f"restore-rwkv: error: {item.error}", sys.stderr)
            continue
        done += 1
        result = item.result
        how = f"tiles of {result.tile}" if result.tile else "whole slices"
        grid = f", zero-filled x{result.upsample}" if result.upsample > 1 else ""
        grid += f", self-ensemble x{result.self_ensemble}" if result.self_ensemble > 1 else ""
        _say(f"{item.source} -> {item.target} ({'x'.join(map(str, result.shape))}, {result.modality}{grid}, {how}, "
             f"{result.seconds:.1f} s; {result.scale_note})")
        if result.outside:
            _say(f"  {result.outside} voxel(s) outside the model's intensity range keep their input values")
    if info.distributed:  # every rank learns every rank's outcome, so all exit with the same status
        shares = gather_objects((done, failures), info)
        done = sum(count for count, _ in shares)
        failures = [line for _, lines in shares for line in lines]
        if made_out and not done and info.is_main and not any(out.iterdir()):
            out.rmdir()
    status = 0
    if failures:
        status = PARTIAL if done else 2
        if done and info.is_main:
            print(f"restore-rwkv: {len(failures)} of {len(items)} input(s) not restored:", file=sys.stderr)
            for line in failures:
                print(f"  {line}", file=sys.stderr)
    if info.distributed:
        # torchrun stops every worker as soon as one exits non-zero: only rank 0 carries the status,
        # after all are done (torchrun then exits 1 and names rank 0's status in its summary).
        barrier(info)
        return status if info.is_main else 0
    return status
