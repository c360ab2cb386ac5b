"""``restore-rwkv prepare {ixi,aapm,simulate,demo}``: build training and test pairs."""

from __future__ import annotations

import argparse

from restore_rwkv.physics.defaults import DEGRADATION_OPTIONS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="prepare datasets (IXI, AAPM-Mayo, any HQ folder, the demo)",
                                   description="Prepare (LQ, HQ) pairs in the layout ROOT/{MRI,CT,PET}/"
                                               "{train,validation,test}/{LQ,HQ}/ with ROOT/manifest.csv.")
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    def common(p: argparse.ArgumentParser, src: bool = True, split: str | None = None) -> None:
        if src:
            p.add_argument("--src", required=True, help="folder with the raw data")
        p.add_argument("--out", required=True, help="output ROOT (must not exist or be empty)")
        p.add_argument("--seed", type=int, default=0, help="seed of the split and of simulated noise")
        if split:
            p.add_argument("--split", default=split, metavar="TRAIN,VAL,TEST",
                           help=f"ratios of subjects per split, over the inputs that could be read (default {split}); "
                                "0 leaves a split empty on purpose, otherwise an empty split is an error")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = kinds.add_parser("ixi", help="IXI T2 volumes -> MRI super-resolution pairs")
    common(p, split="405,59,114")
    p.add_argument("--scale", type=float, default=4.0, help="k-space truncation factor (default 4)")
    p.add_argument("--slices", type=int, default=100, help="central axial slices per volume (default 100)")
    p.add_argument("--format", choices=("npy", "nifti"), default="npy")
    p.set_defaults(run=_run_ixi)

    p = kinds.add_parser("aapm", help="AAPM-Mayo full/quarter-dose DICOM -> CT denoising pairs")
    common(p, split="8,1,1")
    p.add_argument("--thickness", default="1mm", help="which sub-folders to pair: full_<T>, quarter_<T> (default 1mm)")
    p.add_argument("--format", choices=("npy", "nifti"), default="npy")
    p.set_defaults(run=_run_aapm)

    p = kinds.add_parser("simulate", help="any folder of HQ images, volumes or DICOM series -> pairs by a degradation",
                         description="DICOM files are grouped into series and split by patient; other files "
                                     "are split by file.")
    common(p, split="8,1,1")
    p.add_argument("--task", required=True, choices=("mri_sr", "ct_denoise", "pet", "mri", "mr", "ct", "pt"),
                   help="the degradation (ct = ct_denoise, mri/mr = mri_sr, pt = pet)")
    p.add_argument("--slices", type=int, default=100, help="central slices per volume (default 100)")
    p.add_argument("--series-uid", help="use only this DICOM series (SeriesInstanceUID); other files are ignored")
    p.add_argument("--split-by", choices=("patient", "series"), default="patient",
                   help="unit of the DICOM split: PatientID (default), or each series (anonymised data "
                        "whose series share one PatientID)")
    p.add_argument("--force", action="store_true",
                   help="use DICOM images whose Modality is not the task's (e.g. MR for ct_denoise)")
    p.add_argument("--scale", type=float, default=DEGRADATION_OPTIONS["mri_sr"]["scale"],
                   help="mri_sr: k-space truncation factor")
    ct = DEGRADATION_OPTIONS["ct_denoise"]
    p.add_argument("--dose-fraction", type=float, default=ct["dose_fraction"],
                   help=f"ct_denoise: dose of LQ relative to HQ (default {ct['dose_fraction']:g})")
    p.add_argument("--incident-flux", type=float, default=ct["incident_flux"],
                   help="ct_denoise: photons per view per mm of detector at full dose, for 1000 views "
                        f"(default {ct['incident_flux']:g}: about 26 HU soft-tissue noise at quarter dose and 1 mm pixels)")
    p.add_argument("--pixel-size-mm", type=float, default=None,
                   help="ct_denoise: pixel spacing in mm for every image (default: each image's own spacing "
                        "from its metadata, 0.7 for images without one)")
    p.add_argument("--dose-reduction", type=float, default=DEGRADATION_OPTIONS["pet"]["dose_reduction"], help="pet: count reduction factor (default 12)")
    p.add_argument("--total-counts", type=float, default=DEGRADATION_OPTIONS["pet"]["total_counts"], help="pet: expected counts per full-dose slice")
    p.add_argument("--format", choices=("npy", "nifti"), default="npy")
    p.set_defaults(run=_run_simulate)

    p = kinds.add_parser("demo", help="the offline demo dataset (all three tasks, 128x128, about 10 s on 2 cores)")
    common(p, src=False)
    p.set_defaults(run=_run_demo)


PARTIAL = 3  # exit status: the dataset was written, but some inputs were skipped (listed)


def _finish(report) -> int:
    """Print the report; exit status 3 when some inputs were skipped (they are listed), else 0."""
    import sys

    print(report.text())
    if report.failures:
        print(f"restore-rwkv: {len(report.failures)} input(s) skipped (listed above and in "
              f"{report.root / 'summary.json'})", file=sys.stderr)
        return PARTIAL
    return 0


def _split(args):
    from restore_rwkv.data.prepare import parse_split

    return parse_split(args.split)


def _run_ixi(args) -> int:
    from restore_rwkv.data.prepare import prepare_ixi

    return _finish(prepare_ixi(args.src, args.out, scale=args.scale, slices=args.slices, seed=args.seed,
                               fmt=args.format, overwrite=args.overwrite, quiet=args.quiet, split=_split(args)))


def _run_aapm(args) -> int:
    from restore_rwkv.data.prepare import prepare_aapm

    return _finish(prepare_aapm(args.src, args.out, thickness=args.thickness, seed=args.seed, fmt=args.format,
                                overwrite=args.overwrite, quiet=args.quiet, split=_split(args)))


def _run_simulate(args) -> int:
    from restore_rwkv.data.prepare import prepare_simulated

    return _finish(prepare_simulated(args.task, args.src, args.out, slices=args.slices, seed=args.seed,
                                     fmt=args.format, overwrite=args.overwrite, quiet=args.quiet, split=_split(args),
                                     series_uid=args.series_uid, force=args.force, split_by=args.split_by,
                                     scale=args.scale,
                                     dose_fraction=args.dose_fraction, incident_flux=args.incident_flux,
                                     pixel_size_mm=args.pixel_size_mm, dose_reduction=args.dose_reduction,
                                     total_counts=args.total_counts))


def _run_demo(args) -> int:
    from restore_rwkv.demo.recipe import prepare_demo

    return _finish(prepare_demo(args.out, overwrite=args.overwrite, quiet=args.quiet, seed=args.seed))
