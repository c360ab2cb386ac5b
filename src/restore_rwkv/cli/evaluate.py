"""``restore-rwkv evaluate``: score weights on a test split under the paper's protocol.

Writes ``OUT/per_image.csv`` (one row per image), ``OUT/summary.json`` (per task mean ± std,
and what was evaluated how) and, with ``--save-images``, the restored images; prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from restore_rwkv.cli import WEIGHTS_HELP


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score weights on a test split (PSNR, SSIM, RMSE per image and per task)",
        description="Restore every (LQ, HQ) pair of a split with the weights and score input and output "
                    "against HQ under the paper's protocol (docs/metrics.md). Writes OUT/per_image.csv "
                    "and OUT/summary.json; prints mean ± std per task.")
    parser.add_argument("--weights", required=True, help=WEIGHTS_HELP)
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
                        help="side in pixels of the overlapping tiles images are restored in (default: the tile their "
                             "card chose on validation data, else their training patch size; 0: whole images)")
    parser.add_argument("--self-ensemble", type=int, default=1, choices=(1, 2, 4, 8), metavar="N",
                        help="average each image's output over N rotations/flips of it: 1 (default, off), 2, 4 or 8; "
                             "N times the time (docs/inference.md, \"Self-ensemble\")")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N pairs only")
    parser.add_argument("--force", action="store_true",
                        help="also evaluate tasks or modalities the weights' card does not list "
                             "(with the default conventions for modalities it lacks)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out that an earlier evaluate wrote (it holds per_image.csv)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from restore_rwkv.engine.evaluation import evaluate_weights, format_table

    report, note = evaluate_weights(args.weights, args.data, args.out, args.split, device=args.device,
                                    batch_size=args.batch_size, precision=args.precision,
                                    ssim_boundary=args.ssim_boundary, tile=args.tile, max_images=args.max_images,
                                    self_ensemble=args.self_ensemble,
                                    force=args.force, overwrite=args.overwrite, save_images=args.save_images,
                                    quiet=args.quiet)
    if note:
        print(f"restore-rwkv: {note}", file=sys.stderr)
    out = Path(args.out)
    print(format_table(report["per_task"]))
    print(f"per-image metrics: {out / 'per_image.csv'}; summary: {out / 'summary.json'}"
          + (f"; restored images: {out / 'images'}" if args.save_images else ""))
    return 0
