"""Ship the demo training runs as the package's pretrained models, with their cards and test fixtures.

For each demo run (``restore-rwkv train --config demo_<task> --out runs``) this

1. scores the run's exported weights (EMA) on the demo test split with ``restore-rwkv evaluate``
   (the paper's protocol) and puts the scores, the iterations and the training wall time
   (from the run's ``log.csv``) in the card;
2. writes ``src/restore_rwkv/weights/<name>.safetensors`` (float16 storage) and ``<name>.json``;
3. writes ``tests/fixtures/shipped/<name>.npz``: a 48x48 crop of a demo test input and the
   shipped model's output on it, which ``tests/models/test_shipped.py`` reproduces.

    python scripts/ship_demo_models.py                 # all four runs under runs/
    python scripts/ship_demo_models.py --only ct_denoise_light
    python scripts/ship_demo_models.py --rescore       # new test scores for the shipped files, no runs needed
    python scripts/ship_demo_models.py --policy --rescore  # cards in this version's format, then new scores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from restore_rwkv.demo.models import DEMO_MODELS, base_config, training_chain
from restore_rwkv.demo.recipe import DEMO_DATA_VERSION

REPO = Path(__file__).resolve().parents[1]
RUNS = {m.name: m.config for m in DEMO_MODELS}  # shipped name -> the demo config of its run
CROP = 48
TILE_CANDIDATES = (64, 128, 256, 0)  # tile sides tried on validation data (0: whole slices); the first wins ties
NOTES = ("Demonstration model: the light Restore-RWKV, EMA weights at iteration {iterations} (best validation PSNR) "
         "of a {total}-iteration run on the offline demo "
         "dataset (restore-rwkv prepare demo) with the shipped config {config} ({hours:.2f} h on a 2-core CPU){base}. "
         "For trying the tools, not for clinical use. Reproduce: restore-rwkv prepare demo --out data/demo && "
         "{train}. docs/models.md has its model card.")


def train_commands(config: str) -> str:
    """The ``restore-rwkv train`` commands that reproduce the run of ``config``, its base run's first."""
    return " && ".join(f"restore-rwkv train --config {c} --out runs" for c in training_chain(config))


def split_scores(weights: Path, data: Path, split: str = "test", tile: int | None = None) -> dict:
    """``restore-rwkv evaluate`` of ``weights`` on a split of the demo data (``tile``: ``--tile``; None: the
    card's default): its per-task summary."""
    from restore_rwkv.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        if main(["evaluate", "--weights", str(weights), "--data", str(data), "--split", split,
                 "--out", str(out), "--quiet", "--device", "cpu"]
                + ([] if tile is None else ["--tile", str(tile)])) != 0:
            raise SystemExit(f"evaluating {weights} failed")
        return json.loads((out / "summary.json").read_text())["per_task"]


def choose_tile(weights: Path, data: Path) -> tuple[int, dict[str, float]]:
    """The tile side (0: whole slices) of TILE_CANDIDATES with the highest validation PSNR (mean over the
    tasks of each task's mean over its slices), and every candidate's per-task validation PSNR."""
    table: dict[str, float] = {}
    best, best_score = TILE_CANDIDATES[0], -float("inf")
    for side in TILE_CANDIDATES:
        per_task = split_scores(weights, data, "validation", side)
        psnr = {task: float(entry["psnr_out"]["mean"]) for task, entry in per_task.items()}
        table.update({f"val_tile{side}_{task}_psnr": round(v, 4) for task, v in psnr.items()})
        score = sum(psnr.values()) / len(psnr)
        if score > best_score:
            best, best_score = side, score
    return best, table


def fixture_crop(data: Path, task: str, card) -> tuple[np.ndarray, str]:
    """A CROP x CROP window from the middle of the first test input of ``task``, normalised like the card."""
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.modality import TASKS

    record = sorted((r for r in read_manifest(data / "manifest.csv") if r.task == task and r.split == "test"),
                    key=lambda r: r.lq)[0]
    image = np.load(record.lq).astype(np.float32)
    modality = TASKS[task].modality
    convention = card.convention(modality)
    y, x = (image.shape[0] - CROP) // 2, (image.shape[1] - CROP) // 2
    scale = record.scale or convention.scaling.fit(image)  # the policy's scale, as evaluate finds it
    crop = np.asarray(convention.normalize(image[y:y + CROP, x:x + CROP], scale), dtype=np.float32)
    return crop, Path(record.lq).name


def test_metrics(weights: Path, data: Path) -> dict[str, float]:
    """The card's metrics: mean PSNR and SSIM of input and output per task on the demo test split."""
    metrics = {}
    for task, entry in split_scores(weights, data).items():
        for column in ("psnr_in", "ssim_in", "psnr_out", "ssim_out"):
            metrics[f"test_{task}_{column}"] = round(float(entry[column]["mean"]), 4)
    return metrics


def rescore(name: str, data: Path, entry: dict) -> dict:
    """Score a shipped model again (as ``restore-rwkv evaluate`` runs it now) and rewrite the metrics
    in its JSON card; the weights file is not touched."""
    from restore_rwkv.models.card import SHIPPED_WEIGHTS, card_path, load_model_card
    from restore_rwkv.utils.files import atomic_file

    target = SHIPPED_WEIGHTS / f"{name}.safetensors"
    card = load_model_card(target)
    chosen = {k: v for k, v in card.metrics.items() if k.startswith("val_tile")}  # the table its tile was chosen by
    metrics = {**chosen, **test_metrics(target, data)}
    card = dataclasses.replace(card, metrics=metrics)
    with atomic_file(card_path(target)) as tmp:
        tmp.write_text(card.to_json())
    return {**entry, "metrics": metrics}


def upgrade_policy(name: str) -> None:
    """Rewrite a shipped card's conventions as this version's policies (``restore_rwkv.modality``), keeping
    the weights: the demo data put each MR image's foreground 99th percentile at 3000 (``data.demo``),
    which is the MR policy's fitted scaling, and CT and PET were in HU and SUV, as the policies say."""
    from restore_rwkv.modality import get_convention
    from restore_rwkv.models.card import CARD_FORMAT, SHIPPED_WEIGHTS, card_path, load_model_card
    from restore_rwkv.utils.files import atomic_file

    target = SHIPPED_WEIGHTS / f"{name}.safetensors"
    card = load_model_card(target)
    conventions = {m: get_convention(m).to_card() for m in card.modalities}
    card = dataclasses.replace(card, conventions=conventions, format=CARD_FORMAT)
    with atomic_file(card_path(target)) as tmp:
        tmp.write_text(card.to_json())


def ship(name: str, runs: Path, data: Path, shipped: dict[str, dict] | None = None) -> dict:
    """Export run ``runs/<its config>`` as shipped model ``name``: tile chosen on validation, test scores,
    fixture; ``shipped`` (the shipped entries by name) supplies earlier runs' times where a run has no log."""
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.engine.trainer import run_progress
    from restore_rwkv.models.card import SHIPPED_WEIGHTS, load_model, save_model_with_card

    run, base = runs / RUNS[name], base_config(RUNS[name])
    model, card = load_model(run / "model.safetensors")
    seconds = run_progress(run)[1]
    base_seconds = earlier_runs_seconds(RUNS[name], runs, shipped or {})
    card = dataclasses.replace(card, metrics={}, created="", version="",
                               notes=NOTES.format(iterations=card.iterations, total=load_config(RUNS[name]).schedule.iterations,
                                                  config=RUNS[name], hours=seconds / 3600,
                                                  base=_base_words(base), train=train_commands(RUNS[name])))
    target = save_model_with_card(model, SHIPPED_WEIGHTS / f"{name}.safetensors", card, storage_dtype="float16")
    tile, validation = choose_tile(target, data)  # of the file that ships (float16 storage)
    card = dataclasses.replace(card, tile=tile)
    target = save_model_with_card(model, target, card, storage_dtype="float16")
    metrics = {**validation, **test_metrics(target, data)}  # test scores at the chosen tile
    card = dataclasses.replace(card, metrics=metrics)
    target = save_model_with_card(model, target, card, storage_dtype="float16")
    exported, exported_card = load_model(target)
    task = card.task if card.task != "all_in_one" else "ct_denoise"
    crop, source = fixture_crop(data, task, exported_card)
    with torch.inference_mode():
        output = exported(torch.from_numpy(crop)[None, None])[0, 0].numpy()
    fixtures = REPO / "tests" / "fixtures" / "shipped"
    fixtures.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(fixtures / f"{name}.npz", input=crop, output=output, source=np.array(source))
    return {"name": name, "run": f"runs/{RUNS[name]}", "iterations": card.iterations, "tile": tile,
            "train_seconds": round(seconds), **({"base_train_seconds": round(base_seconds)} if base_seconds else {}),
            "metrics": metrics, "bytes": target.stat().st_size, "data_version": DEMO_DATA_VERSION}


# What each task's training data held, per version of the demo recipe (demo.recipe.DEMO_DATA_VERSION).
DATA = {
    5: {"ct_denoise": "CT: 12 phantoms and 4 real 512 × 512 head, brain and abdomen slices of 3 patients × 4 "
                      "quarter-dose noise draws (train), 3 phantoms (validation)",
        "mri_sr": "MRI ×4: 40 MNI152 template slices with simulated thermal noise and 28 crops of a real shoulder "
                  "slice at 0.39 and 0.59 mm (train), 6 noisy template slices (validation)",
        "pet": "PET dose / 12: 40 / 6 template-brain FDG slices from separate stretches (train / validation)"},
    6: {"ct_denoise": "CT: 17 slices of InVesalius' real head CT 20 mm from its held-out slabs, 4 real 512 × 512 "
                      "slices of 3 more patients × 4 quarter-dose noise draws and 12 phantoms (train), an 8-slice "
                      "slab of the InVesalius CT (validation)",
        "mri_sr": "MRI ×4: 85 slices of two real heads (pycortex S1, Colin27) 20 mm from their held-out slabs, 40 "
                  "MNI152 template slices with simulated thermal noise and 28 crops of a real shoulder slice "
                  "(train), a 6-slice slab of each real head (validation)",
        "pet": "PET dose / 12: 40 / 6 template-brain FDG slices from separate stretches (train / validation)"},
}


def write_model_cards(path: Path, shipped: list[dict]) -> None:
    """docs/models.md from the shipped cards and the configs that trained them."""
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.models.card import SHIPPED_WEIGHTS, load_model_card

    bases = {e["name"]: base_config(RUNS[e["name"]]) for e in shipped}  # name -> the run it fine-tunes, if any
    lines = ["# Shipped models", "",
             f"{len(shipped)} demonstration model(s) ship inside the package (`src/restore_rwkv/weights/`, safetensors in "
             "float16 with a JSON card each)" + (" and are used by `make demo`" if len(shipped) == len(RUNS) else
                                          f"; the other {len(RUNS) - len(shipped)} are still being trained") + ". Use them by name: "
             "`restore-rwkv restore scan/ --weights ct_denoise_light -o out/`, "
             "`restore-rwkv evaluate --weights ct_denoise_light --data data/demo --out eval/`, or "
             "`restore_rwkv.models.card.load_model(\"ct_denoise_light\")`.", "",
             "**They are demonstration models, not for clinical use.** Each is the light Restore-RWKV "
             "(1,238,305 parameters) trained on the small offline demo dataset (docs/data.md) for a few "
             "thousand iterations on a 2-core CPU (the checkpoint chosen by the trainer's validation, in tiles of the "
             "training patch size); each entry says which version of the demo data it was trained "
             "on (version 6 adds real heads for MRI and CT and leaves PET's data as it was; a model trained on version 5 "
             "for MRI or CT is to be retrained). "
             "Some of that data is licensed for non-commercial use only (docs/data.md).", "",
             "They were trained on 64 × 64 patches" + _larger_patches(bases) + ". `restore`, `evaluate` and the demo "
             "run each in overlapping "
             "tiles of the side its card chose on the validation split (the card's `tile`: the highest validation "
             "PSNR of tiles of 64, 128, 256 and whole slices; `--tile N` overrides it, `--tile 0` runs whole "
             "slices): Re-WKV divides its decay by the token count, so a model trained on patches sees another "
             "operator on a larger image (docs/inference.md, \"Tiles\"). Cards without a `tile` use their "
             "training patch size.", "",
             *(["A fine-tuned model's card names the run it starts from. Where that run's own files were not kept "
                "(`demo_mri_sr_x4`: the MRI model's fine-tune and the first all-in-one run started from it), they "
                "started from its weights as they were shipped then (float16 storage); a rerun starts from the run's "
                "float32 export, so it differs from them by that rounding as well.", ""]
               if any(bases.values()) else []),
             "Written by `python scripts/ship_demo_models.py`, which scores each run on the demo test split "
             "with `restore-rwkv evaluate` (the paper's protocol) and exports its EMA weights.", ""]
    for entry in shipped:
        name = entry["name"]
        card = load_model_card(SHIPPED_WEIGHTS / f"{name}.safetensors")
        config = load_config(RUNS[name])
        tasks = ["ct_denoise", "mri_sr", "pet"] if card.task == "all_in_one" else [card.task]
        lines += [f"## `{name}`", "",
                  f"- Task: {card.task}; modalities and intensity conventions: "
                  + "; ".join(f"{m} ({v.get('unit', '')}, normalised over {v.get('norm_range')})" for m, v in card.conventions.items()),
                  f"- Data: demo data version {entry.get('data_version', 5)}: "
                  + " ".join(DATA[entry.get("data_version", 5)][t] + "." for t in tasks),
                  f"- Recipe: config `{RUNS[name]}`: {config.model.name}"
                  + (", output convolution zero-initialised" if config.model.zero_init_output else "")
                  + (f", fine-tuned from `{config.model.init_weights}`" if config.model.init_weights else "")
                  + ", L1 loss"
                  + (f" + {config.train.window_loss_weight:g} × L1 inside the evaluation window"
                     if config.train.window_loss_weight else "")
                  + f", Adam (lr {config.optim.lr:g}, "
                  f"betas {tuple(config.optim.betas)}), {config.schedule.warmup} warm-up iterations then cosine to "
                  f"{config.schedule.min_lr:g}, {config.data.batch_size} random {config.data.patch_size} × "
                  f"{config.data.patch_size} patches per step with flips and 90° rotations, EMA {config.train.ema_decay}"
                  + (_task_shares(config.data.task_weights, tasks) if config.data.balance_tasks else "") + ".",
                  _tile_line(card),
                  f"- Iterations: EMA weights of iteration {card.iterations} of {config.schedule.iterations} "
                  f"(best validation PSNR); training wall time "
                  f"{entry['train_seconds'] / 60:.0f} min (2-core CPU, training windows only; validation excluded"
                  + _base_time(RUNS[name], entry) + ").",
                  f"- Demo test split of version {DEMO_DATA_VERSION} (paper's protocol; mean over images; "
                  "docs/data.md lists the test sets):", "",
                  "  | task | PSNR input | PSNR output | SSIM input | SSIM output |", "  |---|---|---|---|---|"]
        for t in tasks:
            m = card.metrics
            if f"test_{t}_psnr_out" in m:
                lines.append(f"  | {t} | {m[f'test_{t}_psnr_in']:.2f} | {m[f'test_{t}_psnr_out']:.2f} | "
                             f"{m[f'test_{t}_ssim_in']:.4f} | {m[f'test_{t}_ssim_out']:.4f} |")
        lines += ["", f"- Reproduce: `restore-rwkv prepare demo --out data/demo && {train_commands(RUNS[name])} "
                      f"&& python scripts/ship_demo_models.py --only {name}` "
                      "(CPU runs repeat to float rounding; thread counts and BLAS builds can change the last digits).",
                  f"- File: `{name}.safetensors` ({entry['bytes'] / 1e6:.1f} MB) and `{name}.json`.", ""]
    path.write_text("\n".join(lines))


def _larger_patches(bases: dict[str, str | None]) -> str:
    """' (`m` then fine-tuned on N × N ones)' for each shipped model (name -> its base run) whose fine-tune
    trained on other patches."""
    from restore_rwkv.engine.config import load_config

    tuned = [(name, load_config(RUNS[name]).data.patch_size) for name, base in bases.items() if base]
    words = [f"`{name}` then fine-tuned on {size} × {size} ones" for name, size in tuned if size != 64]
    return f" ({'; '.join(words)})" if words else ""


def earlier_runs_seconds(config: str, runs: Path, shipped: dict[str, dict]) -> float | None:
    """The training wall time of the runs that the run of ``config`` fine-tunes through (its chain before it),
    summed: each from its ``log.csv`` under ``runs``, else as the shipped entries recorded it (a shipped run's
    own time, or the base time of a model that fine-tuned that run alone); where one is unknown, the base time
    an entry shipped from this same run recorded. None without such runs or when that is unknown too."""
    from restore_rwkv.engine.trainer import run_progress
    from restore_rwkv.utils.errors import InputError

    known: dict[str, float] = {}
    recorded = None  # what an earlier shipping of this same run recorded for its whole chain
    for entry in shipped.values():
        run = Path(entry["run"]).name
        known[run] = entry["train_seconds"]
        if run == config:
            recorded = entry.get("base_train_seconds")
        try:
            chain = training_chain(run)
        except InputError:  # an entry of a config no longer shipped: only its own time is of use
            continue
        if len(chain) == 2 and entry.get("base_train_seconds"):
            known.setdefault(chain[0], entry["base_train_seconds"])
    earlier = training_chain(config)[:-1]
    seconds = [run_progress(runs / c)[1] or known.get(c) for c in earlier]
    if not earlier:
        return None
    return float(sum(seconds)) if all(seconds) else recorded


def _base_time(config: str, entry: dict) -> str:
    """'; after the N min of the run(s) it fine-tunes' (or that they are not counted, when unknown)."""
    earlier = training_chain(config)[:-1]
    if not earlier:
        return ""
    runs = " and ".join(earlier) + (" runs" if len(earlier) > 1 else " run")
    if entry.get("base_train_seconds"):
        return f"; after the {entry['base_train_seconds'] / 60:.0f} min of the {runs} it fine-tunes"
    return f"; the {runs} it fine-tunes not counted"


def _base_words(base: str | None) -> str:
    """', fine-tuned from the exported weights of the run of config <base>' for a run that starts from another."""
    return f", fine-tuned from the exported EMA weights of the run of config {base}" if base else ""


def _tile_line(card) -> str:
    """The card's tile and the validation PSNR that chose it."""
    if card.tile is None:
        return f"- Tiles: {card.patch_size} × {card.patch_size} (the training patch size; no tile chosen on validation)"
    found = {}
    for key, value in card.metrics.items():
        if key.startswith("val_tile") and key.endswith("_psnr"):
            side, task = key[len("val_tile"):-len("_psnr")].split("_", 1)
            found.setdefault(int(side), []).append(f"{task} {value:.3f}")
    shown = "; ".join(f"{f'{side}²' if side else 'whole'}: " + ", ".join(found[side])
                      for side in TILE_CANDIDATES if side in found)
    chosen = f"{card.tile} × {card.tile}" if card.tile else "whole slices"
    return f"- Tiles: {chosen}, chosen on the validation split (mean PSNR dB per task: {shown})"


def _task_shares(weights: dict | None, tasks: list[str]) -> str:
    """The recipe's words for how often each task is drawn."""
    if not weights:
        return ", tasks drawn equally often"
    share = {t: float(weights.get(t, 1.0)) for t in tasks}
    total = sum(share.values())
    return ", tasks drawn in shares " + ", ".join(f"{t} {share[t] / total:.0%}" for t in tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(REPO / "runs"), help="folder holding the demo runs")
    parser.add_argument("--data", default=str(REPO / "data" / "demo"), help="the demo dataset")
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="ship these models only")
    parser.add_argument("--rescore", action="store_true",
                        help="score the shipped models again (after a change in how evaluate runs) without their runs")
    parser.add_argument("--policy", action="store_true",
                        help="first rewrite the shipped cards' intensity policies in this version's card format")
    args = parser.parse_args()
    from restore_rwkv.demo.recipe import ensure_demo_data
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.engine.trainer import run_finished

    ensure_demo_data(Path(args.data), quiet=False)  # scores on the test split this version of prepare demo writes
    torch.manual_seed(0)
    log = REPO / "scripts" / "shipped_models.json"
    shipped = {e["name"]: e for e in json.loads(log.read_text())} if log.exists() else {}
    for name in args.only or RUNS:
        if args.policy and name in shipped:
            upgrade_policy(name)
        if args.rescore:
            if name in shipped:
                shipped[name] = rescore(name, Path(args.data), shipped[name])
                print(json.dumps(shipped[name]), flush=True)
            continue
        if not run_finished(Path(args.runs) / RUNS[name], load_config(RUNS[name]).schedule.iterations):
            print(f"{name}: no finished run at {Path(args.runs) / RUNS[name]}", file=sys.stderr)
            continue
        shipped[name] = ship(name, Path(args.runs), Path(args.data), shipped)
        print(json.dumps(shipped[name]), flush=True)
    ordered = [shipped[n] for n in RUNS if n in shipped]
    log.write_text(json.dumps(ordered, indent=1) + "\n")
    write_model_cards(REPO / "docs" / "models.md", ordered)


if __name__ == "__main__":
    main()
