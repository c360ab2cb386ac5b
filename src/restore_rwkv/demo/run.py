"""The demo: shipped models restore the demo test scans in their formats, with figures, tables and a page.

``run_demo`` builds the demo data when it is missing or another version wrote it
(``demo.recipe.ensure_demo_data``), writes each
task's test inputs as a clinical file (CT as a DICOM series, MRI and PET as NIfTI volumes),
restores them with ``inference.restore_file`` and the shipped single-task and all-in-one
models, scores input and outputs against the references with the paper's protocol
(``metrics.evaluate_physical``), and writes one comparison figure per task, ``results.json``
and a static ``index.html``.
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
from restore_rwkv.modality import TASKS, get_convention
from restore_rwkv.inference import restore_file, write_restore_preview
from restore_rwkv.metrics import evaluate_physical
from restore_rwkv.demo.models import ALL_IN_ONE_MODEL as ALL_IN_ONE
from restore_rwkv.demo.models import SINGLE_TASK as DEMO_MODELS
from restore_rwkv.demo.models import TASK_TITLES
from restore_rwkv.models.card import shipped_models
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

# how each task's test input is written: CT as the scanner would (DICOM series), the others as NIfTI
INPUT_FORMATS = {"ct_denoise": "dicom-series", "mri_sr": "nifti", "pet": "nifti"}


@dataclass
class DemoScore:
    """Mean PSNR (dB), SSIM and RMSE (physical units) of one method over one task's test images."""

    task: str
    method: str
    psnr: float
    ssim: float
    rmse: float
    images: int


@dataclass
class DemoReport:
    """What :func:`run_demo` wrote and measured."""

    out: Path
    scores: list[DemoScore] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self, task: str) -> str:
        """A plain-text table of the task's scores."""
        rows = [s for s in self.scores if s.task == task]
        unit = get_convention(TASKS[task].modality).unit
        lines = [f"{TASK_TITLES[task]} ({rows[0].images if rows else 0} test image(s)):",
                 f"  {'method':<24} {'PSNR dB':>8} {'SSIM':>7} {'RMSE ' + unit:>12}"]
        for s in rows:
            lines.append(f"  {s.method:<24} {s.psnr:8.2f} {s.ssim:7.4f} {s.rmse:12.4g}")
        return "\n".join(lines)


def _volume_meta(spacing: float, slice_spacing: float, modality: str, space: str, row_sign: float = 1.0) -> ImageMeta:
    """Geometry of a (slice, row, column) stack of axial slices in ``space``: columns along +x, rows
    along ``row_sign`` * y, slices along z."""
    affine = np.array([[0.0, 0.0, spacing, 0.0], [0.0, row_sign * spacing, 0.0, 0.0], [slice_spacing, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return ImageMeta(affine=affine, space=space, slice_axis=0, modality=modality)


# The demo's slices in patient terms: the real CT and MR test slices keep their DICOM orientation
# (columns to the patient's left, rows to posterior: +x and +y in LPS); the template slices of PET
# are shown as radiologists view axial slices (columns to the right, rows from anterior: +x and -y in RAS).
_ORIENTATION = {"ct_denoise": ("LPS", 1.0), "mri_sr": ("LPS", 1.0), "pet": ("RAS", -1.0)}


def write_demo_input(task: str, images: np.ndarray, path: Path, spacing: float,
                     description: str = "demo input") -> Path:
    """Write a task's (slice, row, column) test images as its clinical format: a DICOM series or a NIfTI volume."""
    space, row_sign = _ORIENTATION[task]
    if INPUT_FORMATS[task] == "dicom-series":
        meta = _volume_meta(spacing, 5.0, "CT", space, row_sign)
        return write_dicom_series(path, np.rint(images), meta, description=description, modality="CT", replace=True)
    modality = {"mri_sr": "MR", "pet": "PT"}[task]
    return write_nifti(path, np.ascontiguousarray(images, dtype=np.float32),
                       _volume_meta(spacing, 2.0, modality, space, row_sign))


def _as_stack(values: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """``values`` read back from ``path`` as the (slice, row, column) stack it was written from."""
    values = np.asarray(values, np.float32)
    if values.ndim == 2 and shape[0] == 1:
        values = values[None]
    if values.shape != tuple(shape):
        raise InputError(path, f"read back with shape {values.shape}, written as {tuple(shape)}")
    return values


def _scores(task: str, method: str, restored: np.ndarray, references: np.ndarray, scale: float = 1.0) -> DemoScore:
    """Mean scores of ``restored`` against ``references`` (stored units), both divided by ``scale`` first: in the
    unit of the intensity policy the model restored with, where the evaluation window is defined."""
    convention = get_convention(TASKS[task].modality)
    values = evaluate_physical(restored.astype(np.float64) / scale, references.astype(np.float64) / scale, convention)
    psnr, ssim, rmse = (np.atleast_1d(np.asarray(values[k], dtype=np.float64)) for k in ("psnr", "ssim", "rmse"))
    return DemoScore(task, method, float(np.nanmean(psnr)), float(np.nanmean(ssim)), float(np.mean(rmse)),
                     int(references.shape[0]))


def run_demo(out: str | Path = "demo_output", data: str | Path = "data/demo", device: str = "auto",
             tasks: tuple[str, ...] = tuple(DEMO_MODELS), weights: Mapping[str, str | Path] | None = None,
             quiet: bool = False) -> DemoReport:
    """Restore the demo test scans of ``tasks`` with the shipped models and write ``out`` (see the module doc).

    ``data`` is built (or rebuilt, when another version wrote it) with ``ensure_demo_data``.
    ``weights`` maps a shipped model's name to other weights to use in its place (e.g. a training
    run's folder).
    Raises InputError when a model is missing (the package was installed without its weights).
    """
    from restore_rwkv.demo.recipe import demo_pixel_spacing, ensure_demo_data

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
        tests = sorted((r for r in records if r.task == task and r.split == "test"), key=lambda r: r.hq)
        if not tests:
            raise InputError(data / "manifest.csv", f"no {task} test pairs")
        lq = np.stack([np.load(r.lq) for r in tests]).astype(np.float32)
        hq = np.stack([np.load(r.hq) for r in tests]).astype(np.float32)
        first = Path(tests[0].hq).stem
        spacing = demo_pixel_spacing(task, first)
        suffix = "" if INPUT_FORMATS[task] == "dicom-series" else ".nii.gz"
        source = write_demo_input(task, lq, out / "inputs" / f"{task}{suffix}", spacing,
                                  f"demo input: {TASK_TITLES[task]}")
        references = write_demo_input(task, hq, out / "references" / f"{task}{suffix}", spacing,
                                      "demo reference (full quality)")
        stored_input = _as_stack(read_image(source)[0], hq.shape, source)  # as the file stores it (DICOM: whole HU)
        stored_reference = _as_stack(read_image(references)[0], hq.shape, references)
        report.outputs[task] = {"input": source, "reference": references}
        kept, rows, scale = {}, [], 1.0
        for model in (DEMO_MODELS[task], ALL_IN_ONE):
            target = out / "restored" / model / f"{task}{suffix}"
            result = restore_file(source, target, shipped[model], modality=TASKS[task].modality, device=device, overwrite=True,
                                  keep_slices=min(3, len(tests)), model_name=model, quiet=quiet)
            restored = _as_stack(read_image(target)[0], hq.shape, target)
            label = "all-in-one (light)" if model == ALL_IN_ONE else f"{model}"
            rows.append(_scores(task, label, restored, stored_reference, result.scale))
            report.outputs[task][model] = target
            if model == DEMO_MODELS[task]:
                kept = {k: (stored_input[k], restored[k]) for k in result.kept}
                scale = result.scale  # the input is scored in the single-task model's policy unit too
        report.scores += [_scores(task, "input", stored_input, stored_reference, scale), *rows]
        convention = get_convention(TASKS[task].modality)
        figure = out / "figures" / f"{task}.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        write_restore_preview(figure, kept, convention, {k: stored_reference[k] for k in kept},
                              title=f"{TASK_TITLES[task]}: restored by {DEMO_MODELS[task]}", scale=scale)
        report.figures[task] = figure
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
        rows = "".join(
            f"<tr><td>{html.escape(s.method)}</td><td>{s.psnr:.2f}</td><td>{s.ssim:.4f}</td><td>{s.rmse:.4g}</td></tr>"
            for s in report.scores if s.task == task)
        unit = html.escape(get_convention(TASKS[task].modality).unit)
        files = " · ".join(f"{html.escape(k)}: <code>{html.escape(str(p.relative_to(out)))}</code>"
                           for k, p in report.outputs[task].items())
        sections.append(
            f"<section><h2>{html.escape(TASK_TITLES[task])}</h2>"
            f"<table><tr><th>method</th><th>PSNR (dB)</th><th>SSIM</th><th>RMSE ({unit})</th></tr>{rows}</table>"
            f"<p class=files>{files}</p>"
            f"<img src=\"{html.escape(str(report.figures[task].relative_to(out)))}\" alt=\"{html.escape(task)} comparison\">"
            "</section>")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>restore-rwkv demo</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}"
            ".files{font-size:.85em;color:#555}</style></head><body>"
            "<h1>restore-rwkv demo</h1>"
            "<p>Demo test scans restored by the shipped light models (trained on the demo data only; for "
            "demonstration, not for clinical use). Scores: the paper's protocol (PSNR, SSIM with a zero-padded "
            "11&times;11 Gaussian window, RMSE in physical units, within each modality's evaluation window) "
            f"against the reference. Run time: {report.seconds:.0f} s.</p>"
            + "".join(sections) + "</body></html>")
    with atomic_file(out / "index.html") as tmp:
        Path(tmp).write_text(page)
