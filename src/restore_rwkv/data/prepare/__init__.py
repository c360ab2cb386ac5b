"""Dataset preparation: raw IXI / AAPM-Mayo downloads and any HQ folder (the demo's recipe lives in
``restore_rwkv.demo.recipe``), one module each, sharing one writer (``writer``).

Every preparer writes ``ROOT/{MRI,CT,PET}/{train,validation,test}/{LQ,HQ}/<name>.npy`` (or
``.nii.gz``), float32 in physical units (MRI intensity as stored, CT HU, PET SUV), plus
``ROOT/manifest.csv`` (one row per pair; an MR pair's intensity scale fitted on its input volume) and
``ROOT/summary.json``. The output appears only when the whole job succeeded (it is built in a hidden
sibling folder and renamed).

Inputs are read first and split afterwards: subjects are assigned to train / validation /
test only among the inputs that were read successfully, so a skipped input never empties a
split. Every input that is not used is listed in ``summary.json`` (``failures``) with its
reason; files that are not inputs of the job at all are listed under ``ignored``. A split
that would still be empty is an error, unless the split ratios ask for it (``--split 1,0,0``).
"""

from restore_rwkv.data.prepare.aapm import prepare_aapm
from restore_rwkv.data.prepare.ixi import prepare_ixi
from restore_rwkv.data.prepare.simulate import prepare_simulated
from restore_rwkv.data.prepare.writer import (
    CT_AIR_HU,
    SPLITS,
    PairWriter,
    PreparationReport,
    check_output_folder,
    ct_air_floor,
    parse_split,
    split_counts,
    split_subjects,
    staged_output,
    volume_scale,
)

__all__ = ["CT_AIR_HU", "SPLITS", "PairWriter", "PreparationReport", "check_output_folder", "ct_air_floor",
           "parse_split", "prepare_aapm", "prepare_ixi", "prepare_simulated", "split_counts", "split_subjects",
           "staged_output", "volume_scale"]
