"""The results report (docs/results.md): the demo test split scored for the input, classical
baselines tuned on the validation split, and the shipped light models; an effective receptive field.

    python benchmarks/results.py                    # writes docs/results.md and docs/figures/*.png
    python benchmarks/results.py --skip-bm3d        # without BM3D (its package is optional)
    python benchmarks/results.py --peers-from docs/results.json  # peers of an earlier report; the others trained
    python benchmarks/results.py --peers-from docs/results.json --skip-peers  # only the earlier report's peers

Every method is scored with the paper's protocol (``metrics.evaluate_physical``: each modality's
evaluation window, PSNR with the windowed reference's range, zero-padded SSIM) per image, then
averaged. Baseline parameters are chosen by mean PSNR on the validation split, never on the
test split. BM3D (``pip install bm3d``; free for non-commercial use only) runs when installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from _common import DEMO_DATA, REPO, RUNS, erf_radius  # noqa: E402  (benchmarks run from their folder or with it on the path)
from restore_rwkv.demo.models import ALL_IN_ONE_MODEL as ALL_IN_ONE
from restore_rwkv.demo.models import DEMO_MODELS, training_chain
from restore_rwkv.demo.models import SINGLE_TASK as SINGLE
from restore_rwkv.engine.trainer import run_finished, run_progress

TASKS = ("ct_denoise", "mri_sr", "pet")
TITLES = {"ct_denoise": "CT denoising (quarter dose, HU)", "mri_sr": "MRI super-resolution ×4",
          "pet": "PET synthesis (dose / 12)"}
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # pixels
BM3D_SIGMAS_HU = (10.0, 15.0, 20.0, 30.0, 40.0, 60.0)  # noise level given to BM3D, in HU
# Peer networks (docs/training.md, docs/results.md): trained by this script with the configs of each task's
# shipped single-task model (its training chain: base run first), only the model swapped.
PEERS = {"restore_rwkv_light": "Restore-RWKV light (ours)", "restormer_light_monai": "Restormer light (MONAI)",
         "unet_light_monai": "U-Net (MONAI BasicUNet)"}
PEER_TASKS = ("ct_denoise", "mri_sr")
PEER_COLUMNS = tuple(f"`{name}`" for name in PEERS if name != "restore_rwkv_light")  # their per-test-set columns
EFFICIENCY_SIZES = (128, 256, 512, 1024)
# Issue 24: least PSNR gain over the input (dB) on the real test sets, by group of test sets; "all": every slice.
SET_GAINS = {"ct_denoise": {"the InVesalius head CT slab": 5.0},
             "mri_sr": {"the real brain slabs (S1, Colin27)": 1.5, "the real abdominal slice": 1.0},
             "pet": {"all": 4.85}}  # PET: no worse than issue 24's "+4.9 dB" (the same model's 4.89, to rounding)
TILE_SIDES = (64, 128, 256, 0)  # tile sides measured on the test sets (0: whole slices)


def load_split(data: Path, task: str, split: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, LQ and HQ images of a split, each pair divided by its LQ's scale under the task's intensity
    policy (1 but for MRI): every method runs on, and is scored in, the policy's unit, as restore and
    evaluate do (the models then run with scale 1)."""
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.modality import TASKS as MODALITY, get_convention

    scaling = get_convention(MODALITY[task].modality).scaling
    records = sorted((r for r in read_manifest(data / "manifest.csv") if r.task == task and r.split == split),
                     key=lambda r: r.hq)
    names, lqs, hqs = [], [], []
    for r in records:
        lq, hq = np.load(r.lq).astype(np.float64), np.load(r.hq).astype(np.float64)
        scale = r.scale if r.scale is not None else scaling.fit(lq)
        names.append(Path(r.hq).stem)
        lqs.append(lq / scale)
        hqs.append(hq / scale)
    return names, lqs, hqs


def test_set_names(data: Path, task: str) -> list[str]:
    """The test set (``demo.recipe.test_sets``) of each test slice of ``task``, in ``load_split``'s order."""
    from restore_rwkv.data.datasets import read_manifest
    from restore_rwkv.demo.recipe import test_sets

    records = sorted((r for r in read_manifest(data / "manifest.csv") if r.task == task and r.split == "test"),
                     key=lambda r: r.hq)
    set_of = {r.hq: name for name, members in test_sets(records) for r in members}
    return [set_of[r.hq] for r in records]


def set_groups(names: list[str], task: str) -> dict[str, list[int]]:
    """SET_GAINS' groups of test sets: the indices of their slices in ``names`` (``test_set_names``)."""
    from restore_rwkv.demo.recipe import CT_VOLUME, MR_VOLUMES

    members = {"the InVesalius head CT slab": lambda name: name == CT_VOLUME,
               "the real brain slabs (S1, Colin27)": lambda name: name in MR_VOLUMES,
               "the real abdominal slice": lambda name: task == "mri_sr" and name not in MR_VOLUMES,
               "all": lambda name: True}
    return {group: [i for i, name in enumerate(names) if members[group](name)] for group in SET_GAINS[task]}


def per_set(names: list[str]) -> dict[str, list[int]]:
    """Every test set in ``names`` (``test_set_names``): the indices of its slices."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return groups


def score(task: str, images: list[np.ndarray], references: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR, SSIM and RMSE over the images (each scored alone: sizes may differ), their (population)
    standard deviations (``psnr_std``, ...) and the number of images ``n``."""
    from restore_rwkv.metrics import evaluate_physical
    from restore_rwkv.modality import TASKS as MODALITY

    rows = [evaluate_physical(np.asarray(i, np.float64), np.asarray(r, np.float64), MODALITY[task].modality)
            for i, r in zip(images, references)]
    values = {k: np.array([float(np.asarray(row[k])) for row in rows]) for k in ("psnr", "ssim", "rmse")}
    return {**{k: float(v.mean()) for k, v in values.items()}, **{f"{k}_std": float(v.std()) for k, v in values.items()},
            "n": len(rows)}


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma, mode="nearest")


def bm3d_hu(image: np.ndarray, sigma_hu: float) -> np.ndarray:
    """BM3D of a CT slice, run on [-1024, 3072] HU mapped to [0, 1] with the noise level mapped alike."""
    import bm3d

    low, high = -1024.0, 3072.0
    scaled = (np.clip(image, low, high) - low) / (high - low)
    return bm3d.bm3d(scaled, sigma_psd=sigma_hu / (high - low)) * (high - low) + low


def bicubic_from_kspace(reference: np.ndarray, scale: int = 4) -> np.ndarray:
    """The ×``scale`` acquisition (the centre of k-space, as KSpaceTruncation keeps) reconstructed at its
    own low resolution, then interpolated with cubic splines back onto the full grid.

    Low-resolution sample k sits at full-resolution position k·H/h (the DFT grids share their
    origin), so the full grid is sampled at y·h/H; the image is periodic, as the DFT assumes.
    """
    from scipy.ndimage import map_coordinates

    from restore_rwkv.physics.mri import kept_extent

    height, width = reference.shape
    (r0, r1), (c0, c1) = kept_extent(height, scale), kept_extent(width, scale)
    spectrum = np.fft.fftshift(np.fft.fft2(reference, norm="ortho"))[r0:r1, c0:c1]
    low = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum), norm="ortho"))
    low *= np.sqrt(low.size / reference.size)  # same mean intensity as the full-resolution image
    rows = np.arange(height) * (low.shape[0] / height)
    cols = np.arange(width) * (low.shape[1] / width)
    grid = np.meshgrid(rows, cols, indexing="ij")
    return map_coordinates(low, grid, order=3, mode="grid-wrap")


KSPACE_BANDS = ("kept (×4 centre)", "×4 to ×2 ring", "beyond ×2")


def kspace_band_mse(image: np.ndarray, reference: np.ndarray) -> list[float]:
    """The mean squared error of ``image`` split by k-space band (Parseval): the ×4 centre that the
    degradation keeps, the ring out to the ×2 centre, and the rest. The three add up to the MSE."""
    from restore_rwkv.physics.mri import kspace_mask

    error = np.fft.fftshift(np.fft.fft2(np.asarray(image, np.float64) - reference))
    power = np.abs(error) ** 2 / error.size**2
    kept = kspace_mask(*reference.shape, 4).numpy()
    half = kspace_mask(*reference.shape, 2).numpy()
    return [float(power[kept].sum()), float(power[half & ~kept].sum()), float(power[~half].sum())]


def tune(task: str, method, grid, data: Path) -> tuple[float, dict[str, float]]:
    """The grid value with the best mean validation PSNR, and its validation scores."""
    _, lq, hq = load_split(data, task, "validation")
    best = None
    for value in grid:
        scores = score(task, [method(image, value) for image in lq], hq)
        if best is None or scores["psnr"] > best[1]["psnr"]:
            best = (value, scores)
    return best


def run_models(task: str, names: list[str], lq: list[np.ndarray], tile: int | None = None
               ) -> dict[str, tuple[list[np.ndarray], str]]:
    """Each model's restorations of ``lq`` (physical units) and how they ran (seconds per image, tiles);
    ``names`` are shipped names (skipped when not shipped) or run folders. Tiles as ``restore`` runs
    them: of the card's default tile (chosen on validation, else the training patch size) unless ``tile``
    says otherwise (0: whole slices)."""
    from restore_rwkv.inference import inference_tile, restore_array
    from restore_rwkv.modality import TASKS as MODALITY
    from restore_rwkv.models.card import load_model, shipped_models

    found = {}
    for name in names:
        if name not in shipped_models() and not Path(name).is_dir():
            continue
        model, card = load_model(name)
        start = time.perf_counter()
        side = inference_tile(card.default_tile, tile)
        outputs = [restore_array(image.astype(np.float32), model=model, card=card, modality=MODALITY[task].modality,
                                 tile=tile, scale=1.0, device="cpu").astype(np.float64)  # already in the unit
                   for image in lq]
        how = f"{(time.perf_counter() - start) / len(lq):.2f} s / image, " + (f"{side}² tiles" if side else "whole slices")
        found[name] = (outputs, how)
    return found


def tile_rows(task: str, lq: list[np.ndarray], hq: list[np.ndarray]) -> list[dict]:
    """The single-task model on the test slices in tiles of each of TILE_SIDES (0: whole slices): scores, whether
    the side is its card's default, and the ERF 90 % radius of the model run on one tile of that side of the
    middle test slice (``_common.erf_radius_at``)."""
    from _common import erf_radius_at

    from restore_rwkv.inference import inference_tile
    from restore_rwkv.modality import TASKS as MODALITY
    from restore_rwkv.models.card import load_model

    model, card = load_model(SINGLE[task])
    default = inference_tile(card.default_tile)
    convention = card.convention(MODALITY[task].modality)
    middle = lq[len(lq) // 2].astype(np.float32)
    rows = []
    for side in sorted({*TILE_SIDES, default or 0}, key=lambda side: side or float("inf")):
        (outputs, how), = run_models(task, [SINGLE[task]], lq, tile=side).values()
        rows.append({"mode": f"{side}² tiles" if side else "whole slices", "side": side, "how": how,
                     "default": (side or None) == default, "chosen": card.tile is not None, **score(task, outputs, hq),
                     "erf_radius_90_px": erf_radius_at(model, convention, middle, side)})
    return rows


def shipped_names() -> set[str]:
    from restore_rwkv.models.card import shipped_models

    return set(shipped_models())


def peer_chain(task: str) -> list[str]:
    """The demo configs a peer of ``task`` is trained with in turn: those of the shipped single-task model."""
    return training_chain(next(m.config for m in DEMO_MODELS if m.name == SINGLE[task]))


def peer_run(runs: Path, model_name: str, task: str, data: Path) -> tuple[Path, float]:
    """The run folder of ``model_name`` trained with ``task``'s recipe (``peer_chain``: each stage starts from
    the weights of the stage before, as the shipped model did), each stage trained (or resumed) here if
    unfinished, and the training wall time of all stages (s)."""
    import subprocess
    import sys

    from restore_rwkv.engine.config import load_config

    seconds, base = 0.0, None
    for config in peer_chain(task):
        run = runs / f"{config}_{model_name}"
        if not run_finished(run, load_config(config).schedule.iterations):
            command = [sys.executable, "-m", "restore_rwkv", "train", "--config", config, "--out", str(runs),
                       "--set", f"name={run.name}", "--set", f"model.name={model_name}",
                       "--set", f"data.train.root={data}", "--set", f"data.val.root={data}"]
            if base is not None:
                command += ["--set", f"model.init_weights={base}"]
            print("training", run.name, "(resumable: run this script again to continue)")
            subprocess.run(command, check=True)
        seconds += run_progress(run)[1]
        base = run
    return base, seconds


def carried_peers(path: Path) -> dict:
    """The peer networks' part of an earlier report's ``results.json``: per task (``tasks``) the peer rows,
    the input and single-task rows they were compared with, the date they were measured and the peers' scores
    per test set (``sets``: test set -> peer column -> score; empty in reports without them); the training
    times (each with its task), efficiency, CT ERF radii and the Restormer's ERF radius in its tiles.
    Reports before MRI peers hold CT peers only, their training rows without a task."""
    import re

    try:
        old = json.loads(path.read_text())
        peers = old["peers"]
        measured = old.get("peers_measured")
        if measured is None:  # the date in the report's first paragraph, beside the JSON
            measured = re.search(r"(\d{4}-\d{2}-\d{2})\)", path.with_suffix(".md").read_text()).group(1)
        if isinstance(measured, str):  # reports before MRI peers: one date, the CT peers'
            measured = {"ct_denoise": measured}
        training = [{"task": "ct_denoise", **r} for r in peers["training"]]  # a row's own task wins
        tasks = {}
        for task in PEER_TASKS:
            rows = old["results"].get(task, [])
            peer_rows = [r for r in rows if r["method"].startswith("peer: ")]
            if peer_rows:
                tasks[task] = {"rows": peer_rows, "input": rows[0], "single": single_task_row(rows, task),
                               "measured": measured[task],
                               "sets": {name: {column: entry[column] for column in entry if column in PEER_COLUMNS}
                                        for name, entry in old.get("sets", {}).get(task, {}).items()}}
        radius = old.get("restormer_erf_radius_px")
        if radius is None and "ct_denoise" in tasks:  # reports before this field: the number is in the ERF check
            line = next(c for c in old["checks"] if c.startswith("ct_denoise: ERF") and "Restormer peer's" in c)
            radius = float(re.search(r"Restormer peer's (\d+(?:\.\d+)?) px", line).group(1))
        carried = {"tasks": tasks, "training": training, "efficiency": peers["efficiency"],
                   "erf": old["erf_radius_90_px"], "restormer_erf_px": radius}
    except (OSError, ValueError, KeyError, StopIteration, AttributeError, TypeError) as error:
        raise SystemExit(f"--peers-from {path}: not a results.json with peer networks ({type(error).__name__}: {error})")
    if not tasks or not training:
        raise SystemExit(f"--peers-from {path}: that report has no peer networks")
    return carried


def single_task_row(rows: list[dict], task: str) -> dict:
    """The row of ``task``'s shipped single-task model in a table of ``rows``."""
    return next(r for r in rows if f"`{SINGLE[task]}`" in r["method"] and "single task" in r["method"])


def carried_still_holds(carried: dict, task: str, rows: list[dict], path: str) -> bool:
    """Whether the carried peers of ``task`` were compared with this run's input and single-task rows (of
    ``rows``, this run's table); if not, they are dropped from ``carried`` with a printed line, since other
    test data or another model need the peers trained and scored again."""
    for label, row in (("input", rows[0]), ("single", single_task_row(rows, task))):
        before = carried["tasks"][task][label]
        if row["n"] != before["n"] or abs(row["psnr"] - before["psnr"]) > 1e-6 or abs(row["ssim"] - before["ssim"]) > 1e-8:
            print(f"--peers-from {path}: its {task} {'input' if label == 'input' else 'single-task model'} row "
                  f"({before['psnr']:.4f} dB, {before['n']} slices) differs from this run's ({row['psnr']:.4f} dB, "
                  f"{row['n']} slices): its {task} peers are not carried")
            del carried["tasks"][task]
            carried["training"] = [r for r in carried["training"] if r["task"] != task]
            return False
    return True


def peer_training(carried: dict | None, peer_seconds: dict[tuple[str, str], float], shipped: dict[str, dict],
                  parameters: Callable[[str], int], today: str) -> tuple[list[dict], dict[str, str]]:
    """The training table of the peer networks (task, model, parameters, seconds), ours beside each task's
    peers, and the date each task's peers were measured: carried tasks' rows and dates from their report,
    trained tasks' (the keys of ``peer_seconds``) measured today, ours from the shipped card (all stages)."""
    trained = list(dict.fromkeys(task for task, _ in peer_seconds))
    rows = list(carried["training"]) if carried else []  # tasks whose carried peers were dropped have no rows
    for task in trained:
        ours = shipped[SINGLE[task]]
        rows += [{"task": task, "model": name, "parameters": parameters(name),
                  "seconds": peer_seconds[(task, name)] if (task, name) in peer_seconds
                  else ours["train_seconds"] + ours.get("base_train_seconds", 0)} for name in PEERS]
    measured = {task: carried["tasks"][task]["measured"] for task in (carried["tasks"] if carried else {})}
    return rows, {task: measured.get(task, today) for task in PEER_TASKS if task in measured or task in trained}


def parameter_count(model_name: str) -> int:
    from restore_rwkv.models import create_model

    return sum(p.numel() for p in create_model(model_name).parameters())


def efficiency(model_names: list[str]) -> list[dict]:
    """CPU inference latency and peak memory rise per model and square size, each in a fresh process
    (benchmarks/model.py's measurement: reparameterised model, batch 1, median of up to 5 runs)."""
    from _common import run_isolated

    rows = []
    for name in model_names:
        for size in EFFICIENCY_SIZES:
            found = run_isolated("model", {"model_name": name, "size": size, "mode": "infer"})
            rows.append({"model": name, "size": size, "seconds": found.get("seconds"), "peak_mb": found.get("peak_mb"),
                         "error": found.get("error")})
    return rows


def efficiency_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and r["seconds"] is not None]
        sizes = [r["size"] for r in mine]
        left.plot(sizes, [r["seconds"] for r in mine], "o-", label=PEERS.get(name, name))
        right.plot(sizes, [r["peak_mb"] for r in mine], "o-", label=PEERS.get(name, name))
    for ax, label in ((left, "seconds per image"), (right, "peak memory rise (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image side (pixels)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle("CPU inference, batch 1 (2 cores)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def effective_receptive_field(name: str, images: list[np.ndarray], task: str, size: int = 128) -> np.ndarray:
    """Mean |d output[centre] / d input| over centre crops of ``images`` (normalised), normalised to max 1."""
    from restore_rwkv.modality import TASKS as MODALITY
    from restore_rwkv.models.card import load_model

    model, card = load_model(name)
    convention = card.convention_for(None, MODALITY[task].modality)
    total = torch.zeros(size, size, dtype=torch.float64)
    for image in images:
        y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        scale = convention.scaling.fit(image)  # the policy's scale of the whole image, as restore fits it
        crop = torch.from_numpy(np.asarray(convention.normalize(image[y:y + size, x:x + size], scale), np.float32))
        crop = crop[None, None].requires_grad_(True)
        model(crop)[0, 0, size // 2, size // 2].backward()
        total += crop.grad[0, 0].abs().double()
    return (total / total.max()).numpy()


def erf_figure(fields: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 4), squeeze=False)
    for ax, (label, field) in zip(axes[0], fields.items()):
        shown = ax.imshow(np.log10(np.maximum(field, 1e-6)), cmap="magma", vmin=-4, vmax=0)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    figure.colorbar(shown, ax=list(axes[0]), fraction=0.03, label="log10 |gradient| (max = 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    import importlib.util
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--skip-bm3d", action="store_true")
    parser.add_argument("--runs", default=str(RUNS), help="where the peer networks' runs are (or are trained)")
    parser.add_argument("--skip-peers", action="store_true",
                        help="train no peer networks (CT and MRI peers take hours on a 2-core CPU); with --peers-from, "
                             "only that report's peers")
    parser.add_argument("--peers-from", metavar="RESULTS_JSON",
                        help="take the peer networks' rows, training times, efficiency, ERF radii and figures of the "
                             "tasks an earlier report (its results.json) has peers for instead of training them; a "
                             "task whose input or single-task row differs from this run's is not carried")
    args = parser.parse_args()
    carried = carried_peers(Path(args.peers_from)) if args.peers_from else None
    data, out = Path(args.data), Path(args.out)
    torch.manual_seed(0)
    started = time.perf_counter()
    from restore_rwkv.demo.recipe import ensure_demo_data

    ensure_demo_data(data, quiet=True)
    use_bm3d = not args.skip_bm3d and importlib.util.find_spec("bm3d") is not None
    results: dict[str, list[dict]] = {}
    checks: list[str] = []
    peer_runs: dict[str, dict[str, Path]] = {}  # task -> peer model -> its (last) run folder
    peer_seconds: dict[tuple[str, str], float] = {}  # (task, peer model) -> training wall time of its runs, s
    mri_bands: dict[str, dict[str, list[float]]] = {}
    sets: dict[str, dict] = {}
    tiles: dict[str, list[dict]] = {}
    restormer_erf = None  # the Restormer peer's ERF 90 % radius in its 64² tiles, px
    for task in TASKS:
        names, lq, hq = load_split(data, task, "test")
        set_names = test_set_names(data, task)
        rows = [{"method": "input (LQ)", "parameter": "", **score(task, lq, hq)}]
        restored = {"input (LQ)": lq}  # method -> its test outputs, for the per-set scores
        carried_sets: dict[str, dict] = {}  # test set -> carried peer column -> its score there
        if task == "mri_sr":
            restored["bicubic"] = [bicubic_from_kspace(r) for r in hq]
            rows.append({"method": "bicubic (from the ×4 k-space centre)", "parameter": "",
                         **score(task, restored["bicubic"], hq)})
        else:
            sigma, _ = tune(task, gaussian, GAUSSIAN_SIGMAS, data)
            rows.append({"method": "Gaussian filter", "parameter": f"σ = {sigma} px (validation)",
                         **score(task, [gaussian(i, sigma) for i in lq], hq)})
            if task == "ct_denoise" and use_bm3d:
                level, _ = tune(task, bm3d_hu, BM3D_SIGMAS_HU, data)
                restored["BM3D"] = [bm3d_hu(i, level) for i in lq]
                rows.append({"method": "BM3D", "parameter": f"σ = {level} HU (validation)",
                             **score(task, restored["BM3D"], hq)})
        baselines = [r for r in rows[1:]]
        for name, (outputs, how) in run_models(task, [SINGLE[task], ALL_IN_ONE], lq).items():
            label = "Restore-RWKV light, all-in-one" if name == ALL_IN_ONE else "Restore-RWKV light, single task"
            restored[f"`{name}`"] = outputs
            rows.append({"method": f"{label} (`{name}`)", "parameter": how, **score(task, outputs, hq)})
        if task in PEER_TASKS and carried and task in carried["tasks"] and carried_still_holds(
                carried, task, rows, args.peers_from):
            rows += carried["tasks"][task]["rows"]
            carried_sets = carried["tasks"][task]["sets"]
        elif task in PEER_TASKS and not args.skip_peers:
            for model_name in PEERS:
                if model_name == "restore_rwkv_light":
                    continue
                run, peer_seconds[(task, model_name)] = peer_run(Path(args.runs), model_name, task, data)
                peer_runs.setdefault(task, {})[model_name] = run
                for _, (outputs, how) in run_models(task, [str(run)], lq).items():
                    restored[f"`{model_name}`"] = outputs
                    rows.append({"method": f"peer: {PEERS[model_name]}, same data and recipe",
                                 "parameter": how, **score(task, outputs, hq)})
        if task in ("ct_denoise", "mri_sr") and SINGLE[task] in shipped_names():
            tiles[task] = tile_rows(task, lq, hq)
        if task == "mri_sr" and SINGLE[task] in shipped_names():
            bands = {}
            for split in ("validation", "test"):
                _, split_lq, split_hq = load_split(data, task, split)
                (outputs, _), = run_models(task, [SINGLE[task]], split_lq).values()
                bands[split] = {label: np.mean([kspace_band_mse(i, r) for i, r in zip(images, split_hq)], axis=0).tolist()
                                for label, images in (("input", split_lq), ("model", outputs))}
            mri_bands.update(bands)
        results[task] = rows
        sets[task] = {name: {**{method: score(task, [outputs[i] for i in indices], [hq[i] for i in indices])
                                for method, outputs in restored.items()}, **carried_sets.get(name, {})}
                      for name, indices in per_set(set_names).items()}
        single = next((r for r in rows if SINGLE[task] in r["method"]), None)
        joint = next((r for r in rows if ALL_IN_ONE in r["method"]), None)
        for label, name, model_row in (("single-task", SINGLE[task], single), ("all-in-one", ALL_IN_ONE, joint)):
            if model_row is None:
                continue
            for group, indices in set_groups(set_names, task).items():
                before = score(task, [lq[i] for i in indices], [hq[i] for i in indices])
                after = score(task, [restored[f"`{name}`"][i] for i in indices], [hq[i] for i in indices])
                gain, ssim_gain = after["psnr"] - before["psnr"], after["ssim"] - before["ssim"]
                where = "every test slice" if group == "all" else group
                checks.append(f"{task}: {label} model on {where} ({after['n']} slices): {gain:+.2f} dB PSNR and "
                              f"{ssim_gain:+.4f} SSIM over the input (wanted ≥ {SET_GAINS[task][group]} dB, SSIM up): "
                              f"{'met' if gain >= SET_GAINS[task][group] and ssim_gain > 0 else 'NOT met'}")
            beaten = all(model_row["psnr"] > b["psnr"] and model_row["ssim"] > b["ssim"] for b in baselines)
            checks.append(f"{task}: {label} model beats every classical baseline on PSNR and SSIM over every test "
                          f"slice: {'met' if beaten else 'NOT met'}")
        peer_rows = [r for r in rows if r["method"].startswith("peer: ")]
        if single and peer_rows:
            best = max(peer_rows, key=lambda r: r["psnr"])
            gap = single["psnr"] - best["psnr"]
            checks.append(f"{task}: single-task model against the best peer ({best['method'][6:].split(',')[0]}): "
                          f"{gap:+.2f} dB PSNR, {single['ssim'] - best['ssim']:+.4f} SSIM (wanted at most 0.2 dB "
                          f"below): {'met' if gap >= -0.2 else 'NOT met'}")
        elif task in PEER_TASKS and single:
            checks.append(f"{task}: single-task model against the best equal-budget peer: not measured in this "
                          "run (--skip-peers)")
        if single and joint:
            gap = single["psnr"] - joint["psnr"]
            checks.append(f"{task}: all-in-one model {abs(gap):.2f} dB {'below' if gap > 0 else 'above'} the single-task "
                          "model over every test slice (wanted at most 0.5 dB below): "
                          f"{'met' if gap <= 0.5 else 'NOT met'}")
        if task == "ct_denoise" and task in tiles:
            default = next(r for r in tiles[task] if r["default"])
            restormer = peer_runs.get(task, {}).get("restormer_light_monai")
            theirs = carried["restormer_erf_px"] if carried and task in carried["tasks"] else None
            if restormer is not None:
                from _common import erf_radius_at

                from restore_rwkv.models.card import load_model

                peer, peer_card = load_model(str(restormer))
                theirs = erf_radius_at(peer, peer_card.convention("ct"), lq[len(lq) // 2].astype(np.float32), 64)
            if theirs is None:
                checks.append(f"ct_denoise: ERF 90 % radius of the single-task model at its default "
                              f"{default['erf_radius_90_px']:.0f} px; the Restormer peer's: not measured in this run "
                              "(--skip-peers)")
            else:
                restormer_erf = theirs
                checks.append(f"ct_denoise: ERF 90 % radius of the single-task model at its default "
                              f"{default['erf_radius_90_px']:.0f} px against the Restormer peer's {theirs:.0f} px in "
                              f"its 64² tiles (wanted larger): {'met' if default['erf_radius_90_px'] > theirs else 'NOT met'}")
        if task in tiles:
            best = max(tiles[task], key=lambda r: r["psnr"])
            default = next(r for r in tiles[task] if r["default"])
            chosen = "chosen on validation" if default["chosen"] else "the training patch size"
            checks.append(f"{task}: the single-task model's default ({default['mode']}, {chosen}) "
                          f"{best['psnr'] - default['psnr']:.2f} dB below the best mode measured on the test slices "
                          f"({best['mode']}) (wanted at most 0.1 dB): "
                          f"{'met' if best['psnr'] - default['psnr'] <= 0.1 else 'NOT met'}")
    figures = {}
    from restore_rwkv.models.card import shipped_models

    if SINGLE["ct_denoise"] in shipped_models():
        figures["ct"] = REPO / "docs" / "figures" / "erf_ct_denoise.png"
    ct_carried = carried is not None and "ct_denoise" in carried["tasks"]
    if "ct" in figures and ct_carried:  # the same CT model (checked): that report's figure and radii
        figures["erf_radius"] = carried["erf"]
    elif "ct" in figures:
        _, lq, _ = load_split(data, "ct_denoise", "validation")
        fields = {"Restore-RWKV light (CT)": effective_receptive_field(SINGLE["ct_denoise"], lq, "ct_denoise")}
        for model_name, run in peer_runs.get("ct_denoise", {}).items():
            fields[f"{PEERS[model_name]} (CT)"] = effective_receptive_field(str(run), lq, "ct_denoise")
        erf_figure(fields, figures["ct"])
        figures["erf_radius"] = {label: erf_radius(field) for label, field in fields.items()}
    peers = {}
    shipped = {m["name"]: m for m in json.loads((REPO / "scripts" / "shipped_models.json").read_text())}
    training, peers_measured = peer_training(carried, peer_seconds, shipped, parameter_count, dt.date.today().isoformat())
    if training:
        peers["training"] = training
        any_carried = carried is not None and bool(carried["tasks"])  # else the efficiency is measured again
        peers["efficiency"] = carried["efficiency"] if any_carried else efficiency(list(PEERS))
        figures["efficiency"] = REPO / "docs" / "figures" / "efficiency_cpu.png"
        if not any_carried:
            efficiency_figure(peers["efficiency"], figures["efficiency"])
    seconds = time.perf_counter() - started
    (out.with_suffix(".json")).write_text(json.dumps({"results": results, "sets": sets, "tiles": tiles,
                                                      "checks": checks, "peers": peers,
                                                      "peers_measured": peers_measured,
                                                      "restormer_erf_radius_px": restormer_erf,
                                                      "mri_kspace_band_mse": mri_bands,
                                                      "erf_radius_90_px": figures.get("erf_radius", {})}, indent=1))
    out.write_text(render(results, checks, figures, peers, mri_bands, out, seconds,
                          platform.processor() or platform.machine(), sets, tiles,
                          {task: peers_measured[task] for task in (carried["tasks"] if carried else {})}))
    print(out.read_text())


def per_set_table(task_sets: dict[str, dict[str, dict]]) -> list[str]:
    """The Markdown lines of the per-test-set table: one column per method that scored any set (in the order
    first seen; a carried peer may lack some sets), one row per set, "–" where a method did not score it."""
    methods = list(dict.fromkeys(method for entry in task_sets.values() for method in entry))
    lines = ["Per test set (PSNR dB / SSIM, mean ± std over its slices):", "",
             "| test set | slices | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, entry in task_sets.items():
        n = next(iter(entry.values()))["n"]
        cells = [f"{entry[m]['psnr']:.2f} ± {entry[m]['psnr_std']:.2f} / {entry[m]['ssim']:.4f}" if m in entry else "–"
                 for m in methods]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict, checks: list[str], figures: dict, peers: dict, mri_bands: dict, out: Path, seconds: float,
           machine: str, sets: dict, tiles: dict, peers_carried_from: dict[str, str] | None = None) -> str:
    from restore_rwkv.modality import TASKS as MODALITY, get_convention

    peers_carried_from = peers_carried_from or {}
    lines = ["# Results on the demo data", "",
             "Produced by `python benchmarks/results.py` (this file and `results.json` beside it; "
             f"{seconds / 60:.0f} min on a 2-core CPU, {dt.date.today().isoformat()}). Test split of "
             "`restore-rwkv prepare demo` (demo data version 6, docs/data.md): CT a 20-slice slab of InVesalius' "
             "real head CT (256², 0.957 mm) held 20 mm away from its training slices and a real 512² head slice of "
             "a patient not in training; MRI a 12-slice slab of each of two real heads (pycortex S1, Colin27; "
             "256², 1 mm) held 20 mm away from their training slices and a real 484² abdominal slice of a subject "
             "not in training; PET 12 slices of the template brain from a stretch not used in training (no real "
             "PET ships offline). Scores: the paper's protocol (docs/metrics.md), in each policy's unit, per "
             "slice, then mean ± standard deviation over the slices. Baseline parameters and the models' "
             "checkpoints were chosen on the validation split (real slabs of the same volumes for CT and MRI). "
             "The models are the shipped demonstration models (docs/models.md): light Restore-RWKV, 1.24 M "
             "parameters, trained on 64 × 64 patches (the MRI model then fine-tuned on 128 × 128) on a CPU, far "
             "from the paper's training, so these numbers "
             "say what the demo shows, not what the method can do; docs/models.md says which of them were "
             "trained on this version of the data. Every network restores in overlapping tiles, as `restore` and "
             "`evaluate` do by default (docs/inference.md, \"Tiles\"): of the side its card chose on the validation "
             "split where it chose one (64, 128, 256 or whole slices), else of its training patch size (64; the "
             "parameter column says which); the CT and MRI sections add the single-task model in tiles of each "
             "side and on whole slices. `make demo` prints the input and model rows of "
             "these tables again, scored on the files it writes (per test set and over all slices): MRI and PET "
             "agree to the printed digits, CT within 0.02 dB and 0.0001 SSIM (a DICOM series stores whole HU); "
             "other machines' thread counts and BLAS builds can move the last digit.", ""]
    for task, rows in results.items():
        unit = get_convention(MODALITY[task].modality).unit
        lines += [f"## {TITLES[task]} ({rows[0]['n']} test slices)", "",
                  f"| method | parameter | PSNR dB | SSIM | RMSE {unit} |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['parameter']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
                  f"{r['ssim']:.4f} ± {r['ssim_std']:.4f} | {r['rmse']:.4g} ± {r['rmse_std']:.2g} |" for r in rows]
        lines.append("")
        if len(sets.get(task, {})) > 1:
            lines += per_set_table(sets[task]) + [""]
        if task in tiles:
            lines += ["The single-task model in tiles of several sides over every test slice; the default is the side "
                      "its card chose on the validation split (`scripts/ship_demo_models.py`); ERF: the 90 % radius of "
                      "the receptive field of the model run on one tile of that side of the middle test slice:", "",
                      "| mode | PSNR dB | SSIM | ERF 90 % radius (px) | time |", "|---|---|---|---|---|"]
            lines += [f"| {r['mode']}{' (default)' if r['default'] else ''} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
                      f"{r['ssim']:.4f} ± {r['ssim_std']:.4f} | {r['erf_radius_90_px']:.0f} | {r['how'].split(',')[0]} |"
                      for r in tiles[task]]
            lines.append("")
    lines += ["## Checks (issue 24)", ""] + [f"- {c}" for c in checks] + [""]
    if mri_bands:
        lines += ["## MRI: where the error is", "",
                  "Mean squared error (a.u.²) of the input and of the single-task MRI model split by k-space band "
                  "(Parseval; the bands add up to the MSE): the ×4 centre the degradation keeps, the ring out to "
                  "the ×2 centre (detail the model has to restore), and the rest (mostly noise in these images).", "",
                  "| split | image | " + " | ".join(KSPACE_BANDS) + " |", "|---|---|" + "---|" * len(KSPACE_BANDS)]
        for split, entry in mri_bands.items():
            for label, values in entry.items():
                lines.append(f"| {split} | {label} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
        lines.append("")
    short = {task: title.split(" (")[0] for task, title in TITLES.items()}
    if peers:
        recipes = "; ".join(f"{short[task]}: " + " then ".join(f"`{c}`" for c in peer_chain(task))
                            for task in PEER_TASKS if any(r["task"] == task for r in peers["training"]))
        carried_note = "; ".join(f"the {short[task]} peers, measured in the report of {date}"
                                 for task, date in peers_carried_from.items())
        missing = [short[task] for task in PEER_TASKS if not any(r["task"] == task for r in peers["training"])]
        lines += ["## Peer networks (same data, iterations and recipe)", "",
                  "Each peer was trained by this script with the shipped configs of the task's single-task model, "
                  f"in turn where that model was fine-tuned ({recipes}), only `model.name` changed "
                  "(`restore-rwkv train --config ... --set model.name=...`; a later stage starts from the peer's "
                  "own earlier run, where the shipped MRI model's fine-tune started from the float16 copy of its "
                  "base run): same patches, iterations, optimiser, schedule, EMA, losses, identity start (zeroed "
                  "output convolution with the global residual) and best-validation checkpoint. Their test scores "
                  "are in the task tables above. Wall time is the training loop's (validation excluded) on a "
                  "2-core CPU, all stages together; runs that shared the machine with other work took longer, so "
                  "compare the times only roughly."
                  + (f" Carried over (`--peers-from`; those runs were not on this machine): {carried_note}, with "
                     "their rows and training times, the efficiency table and figure"
                     + (" and the CT ERF radii and figure (the ERF check uses that report's Restormer radius)"
                        if "ct_denoise" in peers_carried_from else "")
                     + "; this run's input and single-task rows of those tasks were checked to score exactly as "
                     "they did then, so the comparison stands." if peers_carried_from else "")
                  + (f" Not in this report (`--skip-peers`): the {' and '.join(missing)} peers." if missing else ""), "",
                  "| task | model | parameters | training wall time |", "|---|---|---|---|"]
        lines += [f"| {short[r['task']]} | {PEERS[r['model']]} (`{r['model']}`) | "
                  f"{r['parameters'] / 1e6:.2f} M | {r['seconds'] / 60:.0f} min |" for r in peers["training"]]
        lines += ["", "### Efficiency (CPU inference, batch 1)", "",
                  "Median seconds per image and peak resident-memory rise of one forward pass over a whole "
                  "image of each size (no tiles), each cell in a fresh process (`benchmarks/model.py`'s "
                  "measurement; the Omni-Shift reparameterised for ours). Two runs of this script minutes apart "
                  "differed by up to 15 % in a cell.", "",
                  "| model | " + " | ".join(f"{n}²" for n in EFFICIENCY_SIZES) + " |",
                  "|---|" + "---|" * len(EFFICIENCY_SIZES)]
        for name in PEERS:
            cells = []
            for size in EFFICIENCY_SIZES:
                row = next(r for r in peers["efficiency"] if r["model"] == name and r["size"] == size)
                cells.append(f"{row['seconds']:.3g} s, {row['peak_mb']:.0f} MB" if row["seconds"] is not None
                             else f"failed: {row['error']}")
            lines.append(f"| {PEERS[name]} | " + " | ".join(cells) + " |")
        lines += ["", f"![CPU inference time and memory against image size]"
                      f"({Path(figures['efficiency']).relative_to(out.parent)})", ""]
    if not peers:
        lines += ["## Peer networks", "",
                  "Not in this report (`--skip-peers`): peers are compared with our CT and MRI single-task models "
                  "trained on the same data and recipe, and are trained again when either is (`python "
                  "benchmarks/results.py` trains them, hours on a 2-core CPU).", ""]
    if "ct" in figures:
        lines += ["## Effective receptive field", "",
                  "Mean absolute gradient of the centre output pixel with respect to the input, over 128 × 128 "
                  "centre crops of the CT validation images (log scale, maximum 1), as in the paper's ERF figure:", ""]
        lines += [f"![effective receptive field]({Path(figures['ct']).relative_to(out.parent)})", "",
                  "Radius round the centre pixel that holds 90 % of the gradient mass:", "",
                  "| model | radius (pixels) |", "|---|---|"]
        lines += [f"| {label} | {radius:.1f} |" for label, radius in figures.get("erf_radius", {}).items()]
        lines += ["", "The paper finds Restore-RWKV's field the widest of the methods it compares; these small "
                  "demonstration models, trained from the identity on 64 × 64 patches, are measured "
                  "as they are, whichever way it comes out.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
