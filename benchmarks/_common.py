"""Shared helpers for the benchmarks: timing, peak memory in a fresh process, machine facts, receptive fields."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "demo"  # the default --data of every benchmark, wherever it is run from
RUNS = REPO / "runs"  # the default --runs: where `restore-rwkv train --out runs` puts its runs in a checkout


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 60.0) -> float:
    """Median wall time of ``fn()`` in seconds (fewer repeats if one call is slow)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MB (since the last reset, on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return peak_rss_mb()


def peak_rise_mb(fn) -> float:
    """Peak resident memory during ``fn()`` above the resident memory just before it, in MB."""
    import gc

    gc.collect()
    reset_peak_rss()
    base = current_rss_mb()
    fn()
    return peak_rss_mb() - base


def run_isolated(module: str, args: dict) -> dict:
    """Run ``module.measure(**args)`` in a fresh interpreter and return its JSON result.

    A fresh process gives a clean peak-memory reading for each measurement.
    """
    code = (
        "import json, sys; sys.path.insert(0, {here!r}); import {module} as m; "
        "print(json.dumps(m.measure(**json.loads(sys.argv[1]))))"
    ).format(here=os.path.dirname(os.path.abspath(__file__)), module=module)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_summary() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {platform.python_version()}"
    )


def erf_radius(field, share: float = 0.9) -> float:
    """Radius (pixels) of the disc round the centre that holds ``share`` of the field's gradient mass."""
    import numpy as np

    size = field.shape[0]
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size // 2, xx - size // 2).ravel()
    order = np.argsort(distance, kind="stable")
    mass = np.cumsum(field.ravel()[order])
    return float(distance[order][np.searchsorted(mass, share * mass[-1])])


def erf_field_at(model, convention, image: np.ndarray, side: int) -> np.ndarray:
    """d output[centre] / d input (signed, float64) of the model run on a centred ``side`` x ``side`` crop of
    ``image`` (the whole image for 0), zero-padded to a square (the crop's centre pixel at the square's centre
    when both sides have the same parity)."""
    import numpy as np
    import torch

    height, width = image.shape
    h, w = (min(side, height), min(side, width)) if side else (height, width)
    y, x = (height - h) // 2, (width - w) // 2
    scale = convention.scaling.fit(image) if convention.scaling.fitted else 1.0
    crop = torch.from_numpy(np.asarray(convention.normalize(image[y:y + h, x:x + w], scale), np.float32))
    crop = crop[None, None].requires_grad_(True)
    model(crop)[0, 0, h // 2, w // 2].backward()
    field = crop.grad[0, 0].double().numpy()
    size = max(h, w)
    square = np.zeros((size, size))
    square[(size - h) // 2:(size - h) // 2 + h, (size - w) // 2:(size - w) // 2 + w] = field
    return square


def erf_radius_at(model, convention, image: np.ndarray, side: int) -> float:
    """The 90 % radius (pixels) of |d output[centre] / d input| for the model run on a centred ``side`` x ``side``
    crop of ``image`` (the whole image for 0): the receptive field a tile of that side gives."""
    import numpy as np

    return erf_radius(np.abs(erf_field_at(model, convention, image, side)))


def score_sets(model, card, records, modality: str, **options) -> tuple[dict, dict, float]:
    """Each set of ``records`` (``demo.recipe.test_sets``: a real volume's slab or a slice) restored as one
    volume by ``restore_array`` (``options``: ``tile``, ``self_ensemble``, ...; its intensity scale fitted
    as ``restore`` fits it) and scored under the paper's protocol in the policy's unit. Returns, per set
    name, the (PSNR, SSIM) of each slice of the input and of the output, and the seconds restoring took."""
    import numpy as np

    import restore_rwkv
    from restore_rwkv.demo.recipe import test_sets
    from restore_rwkv.metrics import evaluate_physical

    convention = card.convention(modality)
    inputs: dict[str, list[tuple[float, float]]] = {}
    outputs: dict[str, list[tuple[float, float]]] = {}
    seconds = 0.0
    for name, members in test_sets(records):
        lq = np.stack([np.load(r.lq) for r in members]).astype(np.float32)
        hq = np.stack([np.load(r.hq) for r in members]).astype(np.float64)
        scale = convention.scaling.fit(lq) if convention.scaling.fitted else 1.0
        start = time.perf_counter()
        restored = restore_rwkv.restore_array(lq, model=model, card=card, modality=modality, axis=0, device="cpu",
                                              **options).astype(np.float64)
        seconds += time.perf_counter() - start
        for scores, image in ((inputs, lq.astype(np.float64)), (outputs, restored)):
            values = evaluate_physical(image / scale, hq / scale, convention)
            scores[name] = [(float(p), float(s)) for p, s in zip(np.atleast_1d(values["psnr"]),
                                                                 np.atleast_1d(values["ssim"]))]
    return inputs, outputs, seconds
