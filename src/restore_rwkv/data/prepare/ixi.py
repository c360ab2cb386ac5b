"""``prepare ixi``: IXI T2 volumes -> MRI super-resolution pairs by k-space truncation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from restore_rwkv.data.datasets import central_slices
from restore_rwkv.data.io import (
    read_nifti_canonical,
)
from restore_rwkv.data.prepare.writer import (
    IXI_SPLIT,
    PairWriter,
    PreparationReport,
    Skipped,
    SourceInput,
    check_job,
    checked_degradation,
    source_folder,
    visible_files,
    volume_scale,
    write_pairs,
)
from restore_rwkv.utils.errors import InputError, check_finite

_IXI_NAME = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-T2\.nii(\.gz)?$")


def prepare_ixi(src: str | Path, out: str | Path, scale: float = 4.0, slices: int = 100, seed: int = 0,
                fmt: str = "npy", overwrite: bool = False, quiet: bool = False,
                split: Sequence[float] = IXI_SPLIT) -> PreparationReport:
    """IXI T2 volumes -> central axial slices, LQ by k-space truncation, split by subject (405/59/114 scaled)."""
    check_job(seed, slices)
    src = source_folder(src, out, overwrite)
    degrade = checked_degradation("mri_sr", scale=scale)
    ignored: list[Skipped] = []
    failures: list[Skipped] = []
    inputs: list[SourceInput] = []
    first_of: dict[str, Path] = {}
    for path in visible_files(src, ignored):
        match = _IXI_NAME.match(path.name)
        if not match:
            ignored.append(Skipped(str(path), "not an IXI T2 volume (named like IXI002-Guys-0828-T2.nii.gz)"))
        elif match.group(1) in first_of:
            failures.append(Skipped(str(path), f"another T2 volume of subject {match.group(1)} "
                                               f"({first_of[match.group(1)]}) is already used"))
        else:
            first_of[match.group(1)] = path
            inputs.append(SourceInput(str(path), match.group(1), path))
    if not inputs:
        raise InputError(src, "no IXI T2 volumes (files named like IXI002-Guys-0828-T2.nii.gz)")

    def write_volume(writer: PairWriter, number: int, source: SourceInput) -> None:
        path = source.item
        volume, meta = read_nifti_canonical(path)
        check_finite(volume, path, "volume")
        indices = central_slices(volume, 2, slices)
        if not indices:
            raise InputError(path, "no slice holds tissue (the volume is empty or flat)")
        pairs = [(index, degrade(volume[:, :, index].astype(np.float32)), volume[:, :, index].astype(np.float32))
                 for index in indices]
        scale = volume_scale("mri_sr", [lq for _, lq, _ in pairs], str(path))
        for index, lq, hq in pairs:
            writer.write("mri_sr", None, f"{source.subject}_{index:03d}", lq, hq, meta, index,
                         subject=source.subject, scale=scale)

    return write_pairs(src, out, fmt, overwrite, quiet, inputs, "IXI volumes", write_volume, split, seed,
                        failures=failures, ignored=ignored)


