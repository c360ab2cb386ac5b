"""A PNG figure of a few restored slices: input | output (| reference | error map, with PSNR/SSIM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from restore_rwkv.modality import ModalityConvention
from restore_rwkv.metrics import evaluate_physical
from restore_rwkv.utils.files import atomic_file


def _scores(image: np.ndarray, reference: np.ndarray, convention: ModalityConvention) -> str:
    scores = evaluate_physical(image.astype(np.float64), reference.astype(np.float64), convention)
    return f"PSNR {float(scores['psnr']):.2f} dB, SSIM {float(scores['ssim']):.4f}"


def write_restore_preview(path: str | os.PathLike, kept: Mapping[int, tuple[np.ndarray, np.ndarray]],
                          convention: ModalityConvention, references: Mapping[int, np.ndarray] | None = None,
                          title: str = "", scale: float = 1.0) -> Path:
    """Write a figure with one row per kept slice: input and output (stored units, shown in the convention's
    preview window after dividing by ``scale``, the scan's stored units per unit of the convention);
    with ``references`` also the reference and the output - reference error map (stored units), and
    PSNR/SSIM (``metrics.evaluate_physical``, in the convention's unit) of input and output in the titles."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = sorted(kept)
    if not rows:
        raise ValueError("no slices to preview")
    columns = 4 if references else 2
    low, high = (v * scale for v in convention.preview_window)
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, 3.3 * len(rows)), squeeze=False)
    for r, index in enumerate(rows):
        image, restored = kept[index]
        panels = [(image, "input"), (restored, "output")]
        if references:
            reference = references[index]
            panels[0] = (image, f"input\n{_scores(image / scale, reference / scale, convention)}")
            panels[1] = (restored, f"output\n{_scores(restored / scale, reference / scale, convention)}")
            panels.append((reference, "reference"))
        for c, (picture, label) in enumerate(panels):
            axes[r, c].imshow(picture, cmap="gray", vmin=low, vmax=high)
            axes[r, c].set_title(f"slice {index}: {label}", fontsize=8)
        if references:
            error = restored.astype(np.float64) - references[index]
            limit = max(float(np.percentile(np.abs(error), 99)), 1e-6)
            shown = axes[r, 3].imshow(error, cmap="coolwarm", vmin=-limit, vmax=limit)
            unit = convention.unit if scale == 1.0 else "stored units"
            axes[r, 3].set_title(f"slice {index}: output - reference ({unit})", fontsize=8)
            figure.colorbar(shown, ax=axes[r, 3], fraction=0.046, pad=0.04)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path
