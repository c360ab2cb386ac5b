"""A real MR volume restored at its stored scale and 10 times brighter: the gains must match.

Takes a real MR NIfTI volume as a converter hands it over (e.g. pycortex's subject S1, or Colin27 from
Debian's mricron-data; see docs/inference.md, "Real MR at any scale"), cuts ``--slices`` central axial
slices, makes the paper's x4 input by k-space truncation on the same grid, writes that input as NIfTI
at its stored scale and multiplied by 10, and restores both with ``restore-rwkv restore``: with the
weights' card as shipped (this version's MR policy) and with the card's MR policy set to ``fixed`` (no
scaling: what restore did before the policy existed). Scores per slice (mean ± std, count) in the
policy's unit (PSNR with the label's range is independent of a global scale unless values clip),
and the largest difference between restore(10 x) / 10 and restore(x).

    python benchmarks/real_scans.py --mr S1_raw.nii.gz --slices 20 [--start 83] [--preview s1.png]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    import nibabel as nib
    import torch

    from restore_rwkv.cli import main as cli
    from restore_rwkv.data.io import read_image, read_nifti_canonical
    from restore_rwkv.metrics import evaluate_physical
    from restore_rwkv.modality import Scaling, get_convention
    from restore_rwkv.models.card import card_path, load_model_card, resolve_weights
    from restore_rwkv.physics import KSpaceTruncation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mr", required=True, help="a real MR NIfTI volume")
    parser.add_argument("--weights", default="mri_sr_x4_light")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--start", type=int, default=None,
                        help="first axial slice (RAS index; default: the central --slices), e.g. a held-out slab")
    parser.add_argument("--preview", default=None, help="write a figure of the middle slice here")
    args = parser.parse_args()

    volume, meta = read_nifti_canonical(args.mr)
    start = volume.shape[2] // 2 - args.slices // 2 if args.start is None else args.start
    if not 0 <= start <= volume.shape[2] - args.slices:
        parser.error(f"--start {start} with --slices {args.slices} leaves the volume's {volume.shape[2]} slices")
    hq = volume[:, :, start:start + args.slices].astype(np.float64)
    lq = KSpaceTruncation(4)(torch.from_numpy(np.moveaxis(hq, 2, 0))).numpy()
    lq = np.moveaxis(lq, 0, 2).astype(np.float32)
    affine = meta.affine.copy()
    affine[:3, 3] = (meta.affine @ [0, 0, start, 1])[:3]
    weights = resolve_weights(args.weights)
    card = load_model_card(weights)
    mri = get_convention("mri")
    scale = mri.scaling.fit(np.moveaxis(lq, 2, 0))  # of the input at its stored scale: the unit scores are in
    rows, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixed = tmp / "fixed" / weights.name
        fixed.parent.mkdir()
        shutil.copy(weights, fixed)
        entry = {**card.conventions["mri"], "scaling": Scaling("fixed").to_card()}
        card_path(fixed).write_text(dataclasses.replace(card, conventions={"mri": entry}).to_json())
        for factor in (1.0, 10.0):
            source = tmp / f"lq_x{factor:g}.nii.gz"
            nib.save(nib.Nifti1Image(lq * np.float32(factor), affine), str(source))
            for label, w in (("policy", weights), ("fixed", fixed)):
                out = tmp / f"{label}_x{factor:g}.nii.gz"
                with contextlib.redirect_stdout(io.StringIO()):  # its one line per input; the report is ours
                    assert cli(["restore", str(source), "--weights", str(w), "-o", str(out), "--quiet"]) == 0
                outputs[(label, factor)] = read_image(out)[0].astype(np.float64) / factor

    def scores(image: np.ndarray) -> dict:
        values = evaluate_physical(np.moveaxis(image, 2, 0) / scale, np.moveaxis(hq, 2, 0) / scale, mri)
        return {k: [float(np.mean(values[k])), float(np.std(values[k])), int(np.size(values[k]))]
                for k in ("psnr", "ssim")}

    rows["input"] = scores(lq.astype(np.float64))
    for (label, factor), image in outputs.items():
        rows[f"{label} card, x{factor:g}"] = scores(image)
    report = {"volume": str(args.mr), "stored_max": float(volume.max()), "slices": args.slices, "start": start,
              "scale_at_stored": scale, "rows": rows,
              "max_abs_diff_x10_over_10_vs_x1": {
                  label: float(np.abs(outputs[(label, 10.0)] - outputs[(label, 1.0)]).max())
                  for label in ("policy", "fixed")},
              "output_max": float(outputs[("policy", 1.0)].max())}
    print(json.dumps(report, indent=1))
    print(f"\n{Path(args.mr).name}: {args.slices} slices, stored maximum {report['stored_max']:g}", file=sys.stderr)
    for name, row in rows.items():
        (p, ps, n), (s_, ss, _) = row["psnr"], row["ssim"]
        print(f"  {name:<20} PSNR {p:6.2f} ± {ps:.2f} dB  SSIM {s_:.4f} ± {ss:.4f}  ({n} slices)", file=sys.stderr)
    if args.preview:
        from restore_rwkv.inference import write_restore_preview

        k = args.slices // 2
        kept = {k: (np.rot90(lq[:, :, k]), np.rot90(outputs[("policy", 1.0)][:, :, k]))}
        write_restore_preview(args.preview, kept, mri, {k: np.rot90(hq[:, :, k])}, scale=scale,
                              title=f"{Path(args.mr).name}: x4 k-space truncated, restored by {weights.stem}")


if __name__ == "__main__":
    main()
