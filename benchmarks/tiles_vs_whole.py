"""How much tiled inference differs from whole-slice inference with trained weights on a real slice.

The Re-WKV decay is divided by the token count, so a tile sees a different model than the whole
slice (on the 512² demo CT slice, 64² tiles of the CT demo model score 1.1 dB above the whole slice). This restores one demo test pair whole and in tiles of several sizes and
reports the difference between the two (max and RMS, in physical units) and each one's PSNR/SSIM
against the reference (the paper's protocol).

    python benchmarks/tiles_vs_whole.py --weights ct_denoise_light --data data/demo --task ct_denoise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.modality import TASKS
    from restore_rwkv.inference import restore_volume
    from restore_rwkv.metrics import evaluate_physical
    from restore_rwkv.models.card import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="ct_denoise_light")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--task", default="ct_denoise")
    parser.add_argument("--tiles", default="256,128", help="tile sides (overlap: a quarter of the side)")
    args = parser.parse_args()
    model, card = load_model(args.weights)
    record = sorted((r for r in read_manifest(Path(args.data) / "manifest.csv")
                     if r.task == args.task and r.split == "test"), key=lambda r: r.lq)[0]
    lq, hq = np.load(record.lq).astype(np.float32), np.load(record.hq).astype(np.float64)
    convention = card.convention_for(None, TASKS[args.task].modality)
    scale = record.scale or convention.scaling.fit(lq)  # the policy's scale (1 but for MRI), as evaluate finds it
    lq, hq = lq / np.float32(scale), hq / scale  # scored in the policy's unit
    whole = restore_volume(model, lq, convention).astype(np.float64)
    rows = [{"mode": "input", **_scores(evaluate_physical(lq.astype(np.float64), hq, convention))},
            {"mode": "whole", **_scores(evaluate_physical(whole, hq, convention))}]
    for side in (int(t) for t in args.tiles.split(",")):
        tiled = restore_volume(model, lq, convention, tile=side).astype(np.float64)
        difference = tiled - whole
        rows.append({"mode": f"tiles {side} (overlap {side // 4})", **_scores(evaluate_physical(tiled, hq, convention)),
                     "max_abs_diff_to_whole": float(np.abs(difference).max()),
                     "rms_diff_to_whole": float(np.sqrt(np.mean(difference ** 2))),
                     "mean_diff_over_mean_correction": float(np.abs(difference).mean() / np.abs(whole - lq).mean())})
    print(json.dumps({"weights": str(args.weights), "image": Path(record.lq).name, "shape": list(lq.shape),
                      "unit": convention.unit, "rows": rows}, indent=1))


def _scores(values: dict) -> dict:
    return {k: float(np.asarray(values[k])) for k in ("psnr", "ssim", "rmse")}


if __name__ == "__main__":
    main()
