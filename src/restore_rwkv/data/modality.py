"""Intensity conventions per modality: the paper's normalisation ranges and evaluation windows.

Values are data (a frozen dataclass per modality), so a user can change them with
``get_convention("ct", eval_window=(-1000, 1000))`` without touching code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ModalityConvention:
    """How one modality's physical values map to the network's [0, 1] and how they are judged.

    Attributes:
        name: ``"mri"``, ``"ct"`` or ``"pet"``.
        unit: physical unit of the stored values.
        norm_range: (low, high) clipped and mapped linearly to [0, 1] for the network.
        eval_window: (low, high) that outputs and labels are clipped to before metrics.
        preview_window: (low, high) shown as black..white in PNG previews.
    """

    name: str
    unit: str
    norm_range: tuple[float, float]
    eval_window: tuple[float, float]
    preview_window: tuple[float, float]

    def normalize(self, x):
        """Clip to ``norm_range`` and map to [0, 1] (numpy array or tensor)."""
        lo, hi = self.norm_range
        return _clip(x, lo, hi) * (1.0 / (hi - lo)) - lo / (hi - lo)

    def denormalize(self, x):
        """Map [0, 1] back to physical units (no clipping)."""
        lo, hi = self.norm_range
        return x * (hi - lo) + lo

    def window(self, x):
        """Clip physical values to ``eval_window``."""
        return _clip(x, *self.eval_window)


def _clip(x, lo: float, hi: float):
    if isinstance(x, torch.Tensor):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


# The paper's values (PAPER.md, "Data and protocol per task"). CT previews use a soft-tissue window.
CONVENTIONS: dict[str, ModalityConvention] = {
    "mri": ModalityConvention("mri", "a.u.", (0.0, 4095.0), (0.0, 4095.0), (0.0, 4095.0)),
    "ct": ModalityConvention("ct", "HU", (-1024.0, 3072.0), (-160.0, 240.0), (-160.0, 240.0)),
    "pet": ModalityConvention("pet", "SUV", (0.0, 20.0), (0.0, 20.0), (0.0, 10.0)),
}

# Task names and the modality each one works on.
TASKS: dict[str, str] = {"mri_sr": "mri", "ct_denoise": "ct", "pet": "pet"}
# Short names accepted wherever a task is named (``--task ct``).
TASK_ALIASES: dict[str, str] = {"ct": "ct_denoise", "mri": "mri_sr", "mr": "mri_sr", "pt": "pet"}
# DICOM Modality values of each task's images.
TASK_DICOM_MODALITIES: dict[str, tuple[str, ...]] = {"mri_sr": ("MR",), "ct_denoise": ("CT",), "pet": ("PT", "PET")}


def resolve_task(name: str) -> str:
    """The task called ``name`` (``mri_sr``, ``ct_denoise``, ``pet``, or a short name: ``ct``, ``mri``, ``mr``, ``pt``)."""
    key = str(name).lower()
    task = TASK_ALIASES.get(key, key)
    if task not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)} or {sorted(TASK_ALIASES)}")
    return task

_ALIASES = {"mr": "mri", "mri": "mri", "ct": "ct", "pt": "pet", "pet": "pet"}


def get_convention(modality: str, **overrides) -> ModalityConvention:
    """The convention for ``modality`` (``mri``/``mr``, ``ct``, ``pet``/``pt``; any case), with fields replaced."""
    key = _ALIASES.get(str(modality).lower())
    if key is None:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(CONVENTIONS)}")
    convention = CONVENTIONS[key]
    return dataclasses.replace(convention, **overrides) if overrides else convention
