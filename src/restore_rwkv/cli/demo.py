"""``restore-rwkv demo``: the shipped models on the demo test scans, with figures, tables and a page."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="restore the demo test scans with the shipped models; figures, tables, index.html",
        description="Builds the demo data when DATA holds none (offline, about 40 s), writes each task's test "
                    "inputs as clinical files (CT: DICOM series, MRI and PET: NIfTI), restores them with the "
                    "shipped single-task and all-in-one light models, and writes OUT/index.html, one figure "
                    "per task, results.json and the restored files; prints PSNR, SSIM and RMSE per task.")
    parser.add_argument("--out", default="demo_output", help="output folder (default demo_output; its files are replaced)")
    parser.add_argument("--data", default="data/demo", help="demo data root (default data/demo; built if missing)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto: CUDA, else MPS, else CPU")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=WEIGHTS",
                        help="use WEIGHTS (file, card or run folder) in place of the shipped model NAME, e.g. "
                             "--model ct_denoise_light=runs/demo_ct_denoise (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from restore_rwkv.demo.models import ALL_IN_ONE_MODEL as ALL_IN_ONE
    from restore_rwkv.demo.models import SINGLE_TASK as DEMO_MODELS
    from restore_rwkv.demo.run import run_demo
    from restore_rwkv.utils.errors import InputError

    known = set(DEMO_MODELS.values()) | {ALL_IN_ONE}
    replaced = {}
    for item in args.model:
        name, sep, weights = item.partition("=")
        if not sep or name not in known or not weights:
            raise InputError(None, f"--model {item}: expected NAME=WEIGHTS with NAME one of {', '.join(sorted(known))}")
        replaced[name] = weights
    report = run_demo(Path(args.out), Path(args.data), device=args.device, weights=replaced, quiet=args.quiet)
    for task in DEMO_MODELS:
        print(report.table(task))
        print()
    print(f"Wrote {report.out / 'index.html'} (figures in {report.out / 'figures'}) in {report.seconds:.0f} s.")
    return 0
