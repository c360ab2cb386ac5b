"""What the self-ensemble (``--self-ensemble N``) gains over one pass, per model, on the demo's real sets.

For each model of each task this restores every validation and test set of the demo data (a real
volume's slab or a slice, each as one volume, as ``restore`` fits its intensity scale) in the tiles its
card chose, averaging over N rotations/flips of each slice (``inference.ensemble``), and reports per
split the mean ± std PSNR and SSIM over the slices (the paper's protocol, in the policy's unit), the
PSNR per set, and the seconds per slice (each N timed in this run, so compare the times as ratios).
The sizes to offer are judged on validation (all of ``--sizes``); the test split is scored with 1
and the largest size only. Peers are the MRI peer runs that ``benchmarks/results.py`` trains, when
they are in ``--runs``.

    cd benchmarks && python self_ensemble.py --json results/self_ensemble.json   # about 60 min on 2 cores
    python self_ensemble.py --table results/self_ensemble.json                    # the table again
    python self_ensemble.py --timing results/self_ensemble_timing.json            # time against N, on an idle machine

``--json`` keeps the rows of an earlier file that this run does not score (``--tasks pet`` adds PET's;
``--models all_in_one_light`` rescores one model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import DEMO_DATA, RUNS, score_sets  # noqa: E402  (benchmarks run from their folder or with it on the path)

# task -> (models to score: shipped names, or peer run folders under --runs)
MODELS = {
    "mri_sr": ("mri_sr_x4_light", "all_in_one_light", "demo_mri_sr_x4_finetune_restormer_light_monai",
               "demo_mri_sr_x4_finetune_unet_light_monai"),
    "ct_denoise": ("ct_denoise_light", "all_in_one_light"),
    "pet": ("pet_synthesis_light", "all_in_one_light"),
}


def score_split(model, card, records, modality: str, size: int) -> dict:
    """Restore each set of ``records`` with a self-ensemble of ``size``; scores per slice, per set, and the time."""
    before, after, seconds = score_sets(model, card, records, modality, self_ensemble=size)
    psnr = {name: [p for p, _ in pairs] for name, pairs in after.items()}
    ssim = {name: [s for _, s in pairs] for name, pairs in after.items()}
    inputs = {name: [p for p, _ in pairs] for name, pairs in before.items()}
    every_psnr = [v for values in psnr.values() for v in values]
    every_ssim = [v for values in ssim.values() for v in values]
    return {"size": size, "slices": len(every_psnr),
            "psnr": [float(np.mean(every_psnr)), float(np.std(every_psnr))],
            "ssim": [float(np.mean(every_ssim)), float(np.std(every_ssim))],
            "input_psnr": float(np.mean([v for values in inputs.values() for v in values])),
            "sets": {name: {"slices": len(values), "psnr": float(np.mean(values)), "input_psnr": float(np.mean(inputs[name]))}
                     for name, values in psnr.items()},
            "seconds_per_slice": seconds / len(every_psnr)}


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """``kept`` with each row that ``new`` rescored (same task, model and split) replaced in place, then the rest
    of ``new``."""
    key = lambda row: (row["task"], row["model"], row["split"])  # noqa: E731
    fresh = {key(row): row for row in new}
    merged = [fresh.pop(key(row), row) for row in kept]
    return merged + list(fresh.values())


def markdown(rows: list[dict]) -> str:
    """The table docs/inference.md shows: per task and model, PSNR on validation at each N and on test at 1 and
    the largest N (mean over the slices; the gain over one pass in brackets)."""
    sizes = sorted({e["size"] for row in rows if row["split"] == "validation" for e in row["scores"]})
    lines = ["| task | model | validation: N = " + " / ".join(map(str, sizes)) + " | test: N = 1 → " + str(sizes[-1]) + " |",
             "|---|---|---|---|"]
    for row in (r for r in rows if r["split"] == "validation"):
        test = next(r for r in rows if r["split"] == "test" and (r["task"], r["model"]) == (row["task"], row["model"]))

        def cell(entries: list[dict]) -> str:
            one = entries[0]["psnr"][0]
            text = " / ".join(f"{e['psnr'][0]:.2f}" for e in entries)
            return f"{text} ({entries[-1]['psnr'][0] - one:+.2f} dB; {entries[0]['slices']} slices)"
        lines.append(f"| {row['task']} | `{row['model']}` | {cell(row['scores'])} | {cell(test['scores'])} |")
    return "\n".join(lines)


def time_ratios(data: Path, sizes: list[int]) -> dict:
    """Seconds per slice of each N and its ratio to one pass, for the MRI and CT single-task models on 6 real
    256² MR test slices (CT's model given them as HU), in one process."""
    import restore_rwkv
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.demo.recipe import ensure_demo_data
    from restore_rwkv.models.card import load_model

    data = ensure_demo_data(data, quiet=True)
    chosen = [r for r in read_manifest(data / "manifest.csv")
              if r.task == "mri_sr" and r.split == "test" and "pycortex" in str(r.lq)][:6]
    slices = np.stack([np.load(r.lq) for r in chosen]).astype(np.float32)
    result = {}
    for weights, modality in (("mri_sr_x4_light", "mri"), ("ct_denoise_light", "ct")):
        model, card = load_model(weights, "cpu")
        values = slices if modality == "mri" else slices / slices.max() * 1000.0
        restore_rwkv.restore_array(values[:1], model=model, card=card, modality=modality, axis=0, device="cpu")
        seconds = {}
        for size in sizes:
            start = time.perf_counter()
            restore_rwkv.restore_array(values, model=model, card=card, modality=modality, axis=0, device="cpu",
                                       self_ensemble=size)
            seconds[size] = (time.perf_counter() - start) / len(values)
        result[weights] = {"slices": len(values), "seconds_per_slice": seconds,
                           "ratio": {n: seconds[n] / seconds[1] for n in sizes}}
        print(weights, {n: f"{seconds[n]:.2f} s ({seconds[n] / seconds[1]:.2f}x)" for n in sizes}, flush=True)
    return result


def main() -> None:
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.demo.recipe import ensure_demo_data
    from restore_rwkv.modality import TASKS
    from restore_rwkv.models.card import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--runs", default=str(RUNS), help="where the MRI peer runs are (skipped when absent)")
    parser.add_argument("--tasks", default=",".join(MODELS))
    parser.add_argument("--models", default=None,
                        help="only these of the task's models (comma-separated names), e.g. all_in_one_light after it is retrained")
    parser.add_argument("--sizes", default="1,2,4,8", help="sizes scored on validation (the test split: 1 and the largest)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--table", default=None, metavar="JSON", help="only print the table of rows written earlier")
    parser.add_argument("--timing", default=None, metavar="JSON",
                        help="only time each N against one pass (6 MRI test slices, each shipped single-task model) "
                             "and write the ratios here; run it on an otherwise idle machine")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if args.timing:
        ratios = time_ratios(Path(args.data), [int(s) for s in args.sizes.split(",")])
        Path(args.timing).write_text(json.dumps(ratios, indent=1) + "\n")
        return
    tasks = args.tasks.split(",")
    wanted = set(args.models.split(",")) if args.models else None  # None: every model of each task
    unknown = sorted(wanted - {name for task in tasks for name in MODELS.get(task, ())}) if wanted else []
    if unknown or not set(tasks) <= set(MODELS):
        parser.error(f"unknown task or model for --tasks {args.tasks}: {', '.join(unknown) or args.tasks} "
                     f"(tasks: {', '.join(MODELS)}; their models: {', '.join(sorted({m for v in MODELS.values() for m in v}))})")
    data = ensure_demo_data(Path(args.data), quiet=True)
    records = read_manifest(data / "manifest.csv")
    sizes = [int(s) for s in args.sizes.split(",")]
    kept = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else []
    rows: list[dict] = []
    for task in tasks:
        modality = TASKS[task].modality
        for name in MODELS[task]:
            if wanted is not None and name not in wanted:
                continue
            weights = name if name.endswith("_light") else Path(args.runs) / name
            if not name.endswith("_light") and not (Path(weights) / "model.safetensors").is_file():
                print(f"skipped {name}: no exported weights in {weights}", flush=True)
                continue
            model, card = load_model(weights, "cpu")
            for split, wanted in (("validation", sizes), ("test", sorted({1, max(sizes)}))):
                chosen = [r for r in records if r.task == task and r.split == split]
                scores = []
                for size in wanted:
                    scores.append(score_split(model, card, chosen, modality, size))
                    s = scores[-1]
                    print(f"{task:<13} {name:<48} {split:<10} x{size}  PSNR {s['psnr'][0]:.3f} ± {s['psnr'][1]:.2f}  "
                          f"SSIM {s['ssim'][0]:.4f} ± {s['ssim'][1]:.4f}  (input {s['input_psnr']:.2f}; {s['slices']} slices; "
                          f"{s['seconds_per_slice']:.2f} s / slice)  "
                          + "  ".join(f"{k} {v['psnr']:.2f}" for k, v in s["sets"].items()), flush=True)
                rows.append({"task": task, "model": name, "split": split, "tile": card.default_tile, "scores": scores})
                if args.json:  # after every model and split, so an interrupted run keeps what it measured;
                    # rows of models and splits this run does not score are kept from the file
                    # (a rescored row takes its old row's place, so the table keeps its order)
                    Path(args.json).write_text(json.dumps(merge_rows(kept, rows), indent=1) + "\n")
    if rows:
        print(markdown(rows))


if __name__ == "__main__":
    main()
