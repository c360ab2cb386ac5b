"""How a model's scores depend on the side of the tiles it restores in, on every real test set of a task.

(``--split validation``: the validation sets instead.)

The Re-WKV decay is divided by the token count and the scans run along whole rows, so a model sees a
different operator on a tile than on a whole slice. For each ``--weights`` this restores every test set
of ``--task`` in the demo data (a real volume's slab, or a slice; each as one volume, as ``restore``
fits its intensity scale) in overlapping tiles of each side of ``--tiles`` (0: whole slices), and
reports per set and over all test slices the mean ± std PSNR and SSIM against the references (the
paper's protocol, in the policy's unit), and the 90 % radius of the effective receptive field of the
model run on one tile of that side (the whole slice for 0) of a test slice.

    python benchmarks/tiles_vs_whole.py --task ct_denoise --weights ct_denoise_light --tiles 64,128,256,0
    python benchmarks/tiles_vs_whole.py --task mri_sr --weights runs/demo_mri_sr_x4 runs/demo_mri_sr_x4_p256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import DEMO_DATA, erf_radius_at, score_sets  # noqa: E402  (benchmarks run from their folder or with it on the path)


def main() -> None:
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.demo.recipe import ensure_demo_data, test_sets
    from restore_rwkv.modality import TASKS
    from restore_rwkv.models.card import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ct_denoise")
    parser.add_argument("--weights", nargs="+", default=["ct_denoise_light"])
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--tiles", default="64,128,256,0", help="tile sides (overlap: a quarter of the side); 0: whole")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="the demo split to score (validation: where ship_demo_models.py chooses a card's tile)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    data = ensure_demo_data(Path(args.data), quiet=True)
    modality = TASKS[args.task].modality
    records = [r for r in read_manifest(data / "manifest.csv") if r.task == args.task and r.split == args.split]
    sets = test_sets(records)
    rows = []
    for weights in args.weights:
        model, card = load_model(weights)
        convention = card.convention(modality)
        for side in (int(t) for t in args.tiles.split(",")):
            inputs, outputs, _ = score_sets(model, card, records, modality, tile=side)
            scores = {"input": inputs, "restored": outputs}
            mode = f"tiles {side}" if side else "whole slices"
            first = np.load(sets[0][1][len(sets[0][1]) // 2].lq).astype(np.float32)
            row = {"weights": str(weights), "mode": mode, "sets": {},
                   "erf_radius_90_px": erf_radius_at(model, convention, first, side)}
            for label in ("input", "restored"):
                every = [v for name, _ in sets for v in scores[label][name]]
                row[label] = _summary(every)
                row["sets"][label] = {name: _summary(scores[label][name]) for name, _ in sets}
            rows.append(row)
            print(f"{Path(str(weights)).name:<28} {mode:<13} PSNR {row['restored']['psnr'][0]:6.2f} ± "
                  f"{row['restored']['psnr'][1]:.2f}  SSIM {row['restored']['ssim'][0]:.4f} ± "
                  f"{row['restored']['ssim'][1]:.4f}  (input {row['input']['psnr'][0]:.2f}; "
                  f"{row['restored']['psnr'][2]} slices; ERF 90 % radius {row['erf_radius_90_px']:.0f} px)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _summary(pairs: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Mean, std and count of PSNR and SSIM over slices."""
    psnr, ssim = np.array([p for p, _ in pairs]), np.array([s for _, s in pairs])
    return {"psnr": [float(psnr.mean()), float(psnr.std()), int(psnr.size)],
            "ssim": [float(ssim.mean()), float(ssim.std()), int(ssim.size)]}


if __name__ == "__main__":
    main()
