"""How much of a shipped model's receptive field is its identity path: the ERF of the whole model and of its
learned branch alone (output minus input), on the middle test slice, per tile side.

Restore-RWKV adds its input to its output (the global residual), so d output[c] / d input = delta_c + d branch[c] /
d input. A model that learned small corrections from the identity start has most of its gradient mass in that
delta, and the 90 % radius of the whole field then says little about how far the learned branch reaches.

    python benchmarks/erf_paths.py   # the demo data in this checkout; prints a Markdown table; writes results/erf_paths.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEMO_DATA, erf_field_at, erf_radius  # noqa: E402
from results import SINGLE, TILE_SIDES, load_split  # noqa: E402


def paths_of(field: np.ndarray) -> dict[str, float]:
    """Radii (90 % and 50 % of |gradient| mass) of the whole field and of the branch without the identity's delta,
    and the share of the whole field's mass on the centre pixel."""
    centre = field.shape[0] // 2
    branch = field.copy()
    branch[centre, centre] -= 1.0  # d input[c] / d input: the global residual's delta
    whole, learned = np.abs(field), np.abs(branch)
    return {"whole_90_px": erf_radius(whole), "whole_50_px": erf_radius(whole, 0.5),
            "centre_share": float(whole[centre, centre] / whole.sum()),
            "branch_90_px": erf_radius(learned), "branch_50_px": erf_radius(learned, 0.5),
            "branch_centre_gradient": float(branch[centre, centre])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEMO_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "erf_paths.json")
    args = parser.parse_args()

    from restore_rwkv.inference import inference_tile
    from restore_rwkv.modality import TASKS as MODALITY
    from restore_rwkv.models.card import load_model

    rows = []
    for task in ("ct_denoise", "mri_sr"):
        names, lq, _ = load_split(args.data, task, "test")
        model, card = load_model(SINGLE[task])
        if not getattr(model, "residual", False):
            raise SystemExit(f"{SINGLE[task]} has no global residual; this split does not apply")
        convention = card.convention(MODALITY[task].modality)
        middle = lq[len(lq) // 2].astype(np.float32)
        default = inference_tile(card.default_tile) or 0
        for side in sorted({*TILE_SIDES, default}, key=lambda s: s or float("inf")):
            field = erf_field_at(model, convention, middle, side)
            rows.append({"model": SINGLE[task], "slice": names[len(lq) // 2], "side": side, "default": side == default,
                         **paths_of(field)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | tile | whole field 90 % / 50 % radius | centre pixel's share | learned branch 90 % / 50 % radius |")
    print("|---|---|---|---|---|")
    for r in rows:
        tile = (f"{r['side']}²" if r["side"] else "whole slice") + (" (default)" if r["default"] else "")
        print(f"| `{r['model']}` | {tile} | {r['whole_90_px']:.0f} / {r['whole_50_px']:.0f} px | "
              f"{100 * r['centre_share']:.0f} % | {r['branch_90_px']:.0f} / {r['branch_50_px']:.0f} px |")


if __name__ == "__main__":
    main()
