"""The paper-like degradation of each restoration task."""

from __future__ import annotations

from restore_rwkv.physics._common import Degradation
from restore_rwkv.physics.ct import LowDoseCT
from restore_rwkv.physics.mri import KSpaceTruncation
from restore_rwkv.physics.pet import LowCountPET

# option name -> default, per task (the options ``default_degradation`` understands)
DEGRADATION_OPTIONS: dict[str, dict[str, float]] = {
    "mri_sr": {"scale": 4.0},
    "ct_denoise": {"dose_fraction": 0.25, "incident_flux": 3e5, "pixel_size_mm": 0.7},
    "pet": {"dose_reduction": 12.0, "total_counts": 1e6, "iterations": 4, "subsets": 4},
}


def default_degradation(task: str, **options: float) -> Degradation:
    """The degradation ``(hq, seed) -> lq`` of ``task`` (``mri_sr``, ``ct_denoise`` or ``pet``).

    ``options`` may name any option of ``DEGRADATION_OPTIONS`` (those of other tasks are
    ignored, so one set of command-line options serves every task); other names raise TypeError.
    """
    if task not in DEGRADATION_OPTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DEGRADATION_OPTIONS)}")
    known = {name for names in DEGRADATION_OPTIONS.values() for name in names}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown degradation option(s) {unknown}; known: {sorted(known)}")
    values = {name: options.get(name, default) for name, default in DEGRADATION_OPTIONS[task].items()}
    if task == "mri_sr":
        return KSpaceTruncation(values["scale"])
    if task == "ct_denoise":
        return LowDoseCT(**values)
    return LowCountPET(dose_reduction=values["dose_reduction"], total_counts=values["total_counts"],
                       iterations=int(values["iterations"]), subsets=int(values["subsets"]))
