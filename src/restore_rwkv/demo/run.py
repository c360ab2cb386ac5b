"""The demo: shipped models restore the demo test scans in their formats, with figures, tables and a page.

``run_demo`` builds the demo data when it is missing or another version wrote it
(``demo.recipe.ensure_demo_data``). Each task's test split holds one or more test sets (a subject's slab
or slice: ``demo.recipe.test_sets``); each set is written as a clinical file (CT as a DICOM series, MRI
and PET as NIfTI volumes), restored with ``inference.restore_file`` and the shipped single-task and
all-in-one models, and scored slice by slice against its reference with the paper's protocol
(``metrics.evaluate_physical``, in the unit of the policy the model restored with). The page shows,
per task, the mean over all test slices and each set's mean, and one comparison figure per set;
``results.json`` holds the same numbers.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from restore_rwkv.data.datasets import read_manifest
from restore_rwkv.data.io import ImageMeta, read_image, write_dicom_series, write_nifti
from restore_rwkv.demo.models import ALL_IN_ONE_MODEL as ALL_IN_ONE
from restore_rwkv.demo.models import SINGLE_TASK as DEMO_MODELS
from restore_rwkv.demo.models import TASK_TITLES
from restore_rwkv.inference import restore_file, write_restore_preview
from restore_rwkv.metrics import evaluate_physical
from restore_rwkv.modality import TASKS, get_convention
from restore_rwkv.models.card import shipped_models
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

# how each task's test input is written: CT as the scanner would (DICOM series), the others as NIfTI
INPUT_FORMATS = {"ct_denoise": "dicom-series", "mri_sr": "nifti", "pet": "nifti"}
ALL_SETS = "all"  # the test_set of a score over every test slice of a task
_METRICS = ("psnr", "ssim", "rmse")


@dataclass
class DemoScore:
    """Mean PSNR (dB), SSIM and RMSE (the policy's unit) of one method over one test set's images (or all of
    a task's: ``test_set`` ``"all"``)."""

    task: str
    method: str
    psnr: float
    ssim: float
    rmse: float
    images: int
    test_set: str = ALL_SETS


@dataclass
class DemoReport:
    """What :func:`run_demo` wrote and measured."""

    out: Path
    scores: list[DemoScore] = field(default_factory=list)
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)  # task -> test set -> figure
    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)  # task -> "<set>: <what>" -> file
    seconds: float = 0.0

    def table(self, task: str) -> str:
        """A plain-text table of the task's scores: every test slice, then each test set."""
        rows = [s for s in self.scores if s.task == task]
        unit = get_convention(TASKS[task].modality).unit
        overall = [s for s in rows if s.test_set == ALL_SETS]
        sets = list(dict.fromkeys(s.test_set for s in rows if s.test_set != ALL_SETS))
        lines = [f"{TASK_TITLES[task]} ({overall[0].images if overall else 0} test image(s) in {len(sets)} set(s)):",
                 f"  {'method':<24} {'PSNR dB':>8} {'SSIM':>7} {'RMSE ' + unit:>12}"]
        for s in overall:
            lines.append(f"  {s.method:<24} {s.psnr:8.2f} {s.ssim:7.4f} {s.rmse:12.4g}")
        for name in sets if len(sets) > 1 else ():
            mine = [s for s in rows if s.test_set == name]
            lines.append(f"  {name} ({mine[0].images} image(s)):")
            for s in mine:
                lines.append(f"    {s.method:<22} {s.psnr:8.2f} {s.ssim:7.4f} {s.rmse:12.4g}")
        return "\n".join(lines)


def _volume_meta(spacing: float, slice_spacing: float, modality: str, space: str, row_sign: float = 1.0) -> ImageMeta:
    """Geometry of a (slice, row, column) stack of axial slices in ``space``: columns along +x, rows
    along ``row_sign`` * y, slices along z."""
    affine = np.array([[0.0, 0.0, spacing, 0.0], [0.0, row_sign * spacing, 0.0, 0.0], [slice_spacing, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return ImageMeta(affine=affine, space=space, slice_axis=0, modality=modality)


# The demo's slices in patient terms: CT and MR slices as DICOM shows axial images (columns to the patient's
# left, rows to posterior: +x and +y in LPS); the template slices of PET as radiologists view axial slices
# (columns to the right, rows from anterior: +x and -y in RAS).
_ORIENTATION = {"ct_denoise": ("LPS", 1.0), "mri_sr": ("LPS", 1.0), "pet": ("RAS", -1.0)}


def write_demo_input(task: str, images: np.ndarray, path: Path, spacing: float, slice_spacing: float,
                     description: str = "demo input") -> Path:
    """Write a task's (slice, row, column) test images as its clinical format: a DICOM series or a NIfTI volume."""
    space, row_sign = _ORIENTATION[task]
    if INPUT_FORMATS[task] == "dicom-series":
        meta = _volume_meta(spacing, slice_spacing, "CT", space, row_sign)
        return write_dicom_series(path, np.rint(images), meta, description=description, modality="CT", replace=True)
    modality = {"mri_sr": "MR", "pet": "PT"}[task]
    return write_nifti(path, np.ascontiguousarray(images, dtype=np.float32),
                       _volume_meta(spacing, slice_spacing, modality, space, row_sign))


def _as_stack(values: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """``values`` read back from ``path`` as the (slice, row, column) stack it was written from."""
    values = np.asarray(values, np.float32)
    if values.ndim == 2 and shape[0] == 1:
        values = values[None]
    if values.shape != tuple(shape):
        raise InputError(path, f"read back with shape {values.shape}, written as {tuple(shape)}")
    return values


def _per_slice(task: str, restored: np.ndarray, references: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
    """PSNR, SSIM and RMSE of each slice of ``restored`` against ``references`` (stored units), both divided by
    ``scale`` first: in the unit of the intensity policy the model restored with, where the window is defined."""
    convention = get_convention(TASKS[task].modality)
    values = evaluate_physical(restored.astype(np.float64) / scale, references.astype(np.float64) / scale, convention)
    return {k: np.atleast_1d(np.asarray(values[k], dtype=np.float64)) for k in _METRICS}


def _score(task: str, method: str, values: dict[str, np.ndarray], test_set: str) -> DemoScore:
    return DemoScore(task, method, float(np.nanmean(values["psnr"])), float(np.nanmean(values["ssim"])),
                     float(np.mean(values["rmse"])), int(values["psnr"].size), test_set)


def run_demo(out: str | Path = "demo_output", data: str | Path = "data/demo", device: str = "auto",
             tasks: tuple[str, ...] = tuple(DEMO_MODELS), weights: Mapping[str, str | Path] | None = None,
             quiet: bool = False) -> DemoReport:
    """Restore the demo test scans of ``tasks`` with the shipped models and write ``out`` (see the module doc).

    ``data`` is built (or rebuilt, when another version wrote it) with ``ensure_demo_data``.
    ``weights`` maps a shipped model's name to other weights to use in its place (e.g. a training
    run's folder).
    Raises InputError when a model is missing (the package was installed without its weights).
    """
    from restore_rwkv.demo.recipe import ensure_demo_data, test_geometry, test_sets

    started = time.perf_counter()
    out, data = Path(out), Path(data)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    shipped: dict[str, str | Path] = {**shipped_models(), **(weights or {})}
    wanted = [DEMO_MODELS[t] for t in tasks] + [ALL_IN_ONE]
    missing = [name for name in wanted if name not in shipped]
    if missing:
        raise InputError(None, f"shipped model(s) {', '.join(missing)} not found in this installation "
                               f"(found: {', '.join(sorted(shipped)) or 'none'})")
    ensure_demo_data(data, quiet=quiet)
    records = read_manifest(data / "manifest.csv")
    report = DemoReport(out)
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        groups = test_sets([r for r in records if r.task == task and r.split == "test"])
        if not groups:
            raise InputError(data / "manifest.csv", f"no {task} test pairs")
        models = (DEMO_MODELS[task], ALL_IN_ONE)
        labels = {DEMO_MODELS[task]: DEMO_MODELS[task], ALL_IN_ONE: "all-in-one (light)"}
        every: dict[str, list[dict[str, np.ndarray]]] = {"input": [], **{labels[m]: [] for m in models}}
        per_set: list[DemoScore] = []
        report.outputs[task], report.figures[task] = {}, {}
        for name, tests in groups:
            lq = np.stack([np.load(r.lq) for r in tests]).astype(np.float32)
            hq = np.stack([np.load(r.hq) for r in tests]).astype(np.float32)
            spacing, slice_spacing = test_geometry(task, name)
            suffix = "" if INPUT_FORMATS[task] == "dicom-series" else ".nii.gz"
            stem = f"{task}_{name}"
            source = write_demo_input(task, lq, out / "inputs" / f"{stem}{suffix}", spacing, slice_spacing,
                                      f"demo input: {TASK_TITLES[task]}")
            references = write_demo_input(task, hq, out / "references" / f"{stem}{suffix}", spacing, slice_spacing,
                                          "demo reference (full quality)")
            stored_input = _as_stack(read_image(source)[0], hq.shape, source)  # as the file stores it (DICOM: whole HU)
            stored_reference = _as_stack(read_image(references)[0], hq.shape, references)
            report.outputs[task][f"{name}: input"] = source
            report.outputs[task][f"{name}: reference"] = references
            kept, rows, scale = {}, {}, 1.0
            for model in models:
                target = out / "restored" / model / f"{stem}{suffix}"
                result = restore_file(source, target, shipped[model], modality=TASKS[task].modality, device=device,
                                      overwrite=True, keep_slices=min(3, len(tests)), model_name=model, quiet=quiet)
                restored = _as_stack(read_image(target)[0], hq.shape, target)
                rows[labels[model]] = _per_slice(task, restored, stored_reference, result.scale)
                report.outputs[task][f"{name}: {model}"] = target
                if model == DEMO_MODELS[task]:
                    kept = {k: (stored_input[k], restored[k]) for k in result.kept}
                    scale = result.scale  # the input is scored in the single-task model's policy unit too
            rows = {"input": _per_slice(task, stored_input, stored_reference, scale), **rows}
            for method, values in rows.items():
                every[method].append(values)
                per_set.append(_score(task, method, values, name))
            figure = out / "figures" / f"{stem}.png"
            figure.parent.mkdir(parents=True, exist_ok=True)
            write_restore_preview(figure, kept, get_convention(TASKS[task].modality),
                                  {k: stored_reference[k] for k in kept}, scale=scale,
                                  title=f"{TASK_TITLES[task]}, {name}: restored by {DEMO_MODELS[task]}")
            report.figures[task][name] = figure
        for method, parts in every.items():  # every test slice of the task first, then each set
            report.scores.append(_score(task, method, {k: np.concatenate([p[k] for p in parts]) for k in _METRICS},
                                        ALL_SETS))
        report.scores += per_set
    report.seconds = time.perf_counter() - started
    _write_results(report, tasks)
    return report


def _write_results(report: DemoReport, tasks: tuple[str, ...]) -> None:
    out = report.out
    payload = {"seconds": round(report.seconds, 1), "scores": [asdict(s) for s in report.scores],
               "outputs": {t: {k: str(p.relative_to(out)) for k, p in v.items()} for t, v in report.outputs.items()}}
    with atomic_file(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))
    sections = []
    for task in tasks:
        rows = []
        for s in report.scores:
            if s.task != task:
                continue
            where = "all test slices" if s.test_set == ALL_SETS else html.escape(s.test_set)
            rows.append(f"<tr><td>{where}</td><td>{html.escape(s.method)}</td><td>{s.images}</td><td>{s.psnr:.2f}</td>"
                        f"<td>{s.ssim:.4f}</td><td>{s.rmse:.4g}</td></tr>")
        unit = html.escape(get_convention(TASKS[task].modality).unit)
        files = " · ".join(f"{html.escape(k)}: <code>{html.escape(str(p.relative_to(out)))}</code>"
                           for k, p in report.outputs[task].items())
        figures = "".join(f"<h3>{html.escape(name)}</h3><img src=\"{html.escape(str(path.relative_to(out)))}\" "
                          f"alt=\"{html.escape(task)} {html.escape(name)} comparison\">"
                          for name, path in report.figures[task].items())
        sections.append(
            f"<section><h2>{html.escape(TASK_TITLES[task])}</h2>"
            f"<table><tr><th>test set</th><th>method</th><th>slices</th><th>PSNR (dB)</th><th>SSIM</th>"
            f"<th>RMSE ({unit})</th></tr>{''.join(rows)}</table>"
            f"<p class=files>{files}</p>{figures}</section>")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>restore-rwkv demo</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}"
            "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}.files{font-size:.85em;color:#555}</style></head><body>"
            "<h1>restore-rwkv demo</h1>"
            "<p>Demo test scans restored by the shipped light models (trained on the demo data only; for "
            "demonstration, not for clinical use). Scores: the paper's protocol (PSNR, SSIM with a zero-padded "
            "11&times;11 Gaussian window, RMSE, within each modality's evaluation window, in the unit of the "
            "model's intensity policy) against the reference, per slice, then the mean. Run time: "
            f"{report.seconds:.0f} s.</p>" + "".join(sections) + "</body></html>")
    with atomic_file(out / "index.html") as tmp:
        Path(tmp).write_text(page)
