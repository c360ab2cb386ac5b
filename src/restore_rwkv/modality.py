"""Tasks and intensity policies: one home for how a scan's stored values reach the network and come back.

A network sees values in [0, 1]. Each modality's policy (:class:`ModalityConvention`) says how:

1. **Scaling** (:class:`Scaling`): stored values become the convention's unit as ``stored / scale``.
   - CT, ``fixed``: Hounsfield units as stored (readers apply the DICOM rescale); scale 1.
   - PET, ``suv``: body-weight SUV. The scale (stored units per SUV) comes from a DICOM header in
     Bq/ml (weight, dose, half-life, decay correction, times), is 1 for units GML and for other
     formats, or is given by the user (``--pet-scale``); see ``restore_rwkv.data.intensity``.
   - MRI, ``foreground_percentile``: MR values are in arbitrary units, so the scale is fitted on the
     model's input volume (:meth:`Scaling.fit_slices`): its foreground 99th percentile is put at 3000
     of the paper's [0, 4095] range. Scaling a scan by ``a`` scales the fitted scale by ``a``, so the
     network sees the same values and restore(a x) = a restore(x).
2. **Normalisation**: values in the unit are clipped to ``norm_range`` (the paper's ranges) and mapped
   linearly to [0, 1]; the output is mapped back (no clipping) and multiplied by the scale, so it is
   written in the input's own units.
3. **Values outside the range** (metal, contrast, bright fat or vessels; CT's out-of-field padding) are
   never lost: :meth:`ModalityConvention.keep_outside` gives the output the input's value wherever it
   lies outside ``kept_range``, blended back into the restored image over ``OUTSIDE_BLEND`` pixels. The
   kept range is ``norm_range`` but where the values beyond it are noise: CT between -1500 and -1024 HU
   (noise in air, which nothing attenuates less than; below lies out-of-field padding) and negative PET
   activity are restored.

A model card stores each modality's policy (:meth:`ModalityConvention.to_card`); entries written
before scalings existed read back with ``LEGACY_SCALING`` (what those models did: MRI unscaled).
Depends on numpy, torch and scipy only, so every layer (models' cards included) can use it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """A restoration task: its name, the modality it works on and how files name it."""

    name: str
    modality: str
    aliases: tuple[str, ...]
    dicom_modalities: tuple[str, ...]
    folder: str  # the prepared layout's folder (ROOT/<folder>/<split>/{LQ,HQ})


TASKS: dict[str, Task] = {
    "mri_sr": Task("mri_sr", "mri", ("mri", "mr"), ("MR",), "MRI"),
    "ct_denoise": Task("ct_denoise", "ct", ("ct",), ("CT",), "CT"),
    "pet": Task("pet", "pet", ("pt",), ("PT", "PET"), "PET"),
}
ALL_IN_ONE = "all_in_one"  # a model trained on every task at once


def get_task(name: str) -> Task:
    """The task called ``name`` (``mri_sr``, ``ct_denoise``, ``pet``, or a short name: ``ct``, ``mri``, ``mr``, ``pt``)."""
    key = str(name).lower()
    for task in TASKS.values():
        if key == task.name or key in task.aliases:
            return task
    aliases = sorted(a for t in TASKS.values() for a in t.aliases)
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)} or {aliases}")


# ----------------------------------------------------------------------------- scaling
SCALING_KINDS = ("fixed", "suv", "foreground_percentile")
FIT_SAMPLE = 1 << 22  # at most this many voxels (every k-th, k fixed by the volume's size) enter a fit
OUTSIDE_BLEND = 4  # pixels over which kept out-of-range input values blend into the restored image


@dataclass(frozen=True)
class Scaling:
    """How an image's stored values become its convention's unit: ``unit value = stored / scale``.

    ``fixed``: scale 1 (CT in HU; MRI under the paper's protocol). ``suv``: PET, the scale comes
    from the file's header or the user (``restore_rwkv.data.intensity``). ``foreground_percentile``:
    ``scale = P_percentile(foreground) / target``, fitted on the model's input volume, where the
    foreground is the voxels above ``foreground`` times the 99.9th percentile of the positive voxels.

    Why this MR rule: a robust reference of tissue brightness that is proportional to the data (so
    restoring is scale-equivariant), ignores the background (air, noise floor below 10 % of bright
    tissue, whose share depends on the field of view) and a few hot voxels (99.9th percentile as
    the maximum, 99th of the foreground as the reference), and is what the demo data were scaled
    with (foreground 99th percentile at 3000), leaving 36 % of headroom in [0, 4095] above it.
    """

    kind: str = "fixed"
    percentile: float = 99.0
    foreground: float = 0.1
    target: float = 3000.0

    def __post_init__(self) -> None:
        if self.kind not in SCALING_KINDS:
            raise ValueError(f"unknown scaling {self.kind!r}; expected one of {SCALING_KINDS}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"scaling percentile must be in (0, 100]; got {self.percentile}")
        if not 0.0 <= float(self.foreground) < 1.0:
            raise ValueError(f"scaling foreground fraction must be in [0, 1); got {self.foreground}")
        if not (math.isfinite(float(self.target)) and float(self.target) > 0):
            raise ValueError(f"scaling target must be a positive number; got {self.target}")

    @property
    def fitted(self) -> bool:
        """True when the scale is fitted on the image's values (``foreground_percentile``)."""
        return self.kind == "foreground_percentile"

    def fit_slices(self, slices: Iterable[np.ndarray], total: int) -> float:
        """The scale of a volume given as its 2-D slices (the model's inputs, in order; ``total`` voxels in all).

        Every k-th voxel of the slices laid end to end enters the fit (k = ceil(total / FIT_SAMPLE)),
        so a volume streamed slice by slice and the same volume as one array give the same scale.
        1.0 for scalings that are not fitted. Raises ValueError when nothing is positive.
        """
        if not self.fitted:
            return 1.0
        step = max(1, -(-int(total) // FIT_SAMPLE))
        parts, offset = [], 0
        for image in slices:
            flat = np.asarray(image).reshape(-1)
            parts.append(np.asarray(flat[(-offset) % step::step], dtype=np.float64))
            offset += flat.size
        return self.scale_of_sample(np.concatenate(parts) if parts else np.zeros(0))

    def fit(self, values: np.ndarray) -> float:
        """The scale of one image or volume (its slices along axis 0; see :meth:`fit_slices`)."""
        values = np.asarray(values)
        slices = values[None] if values.ndim < 3 else values.reshape(-1, *values.shape[-2:])
        return self.fit_slices(slices, values.size)

    def scale_of_sample(self, sample: np.ndarray) -> float:
        """``P_percentile(foreground) / target`` of a sample of voxels."""
        positive = sample[np.isfinite(sample) & (sample > 0)]
        if positive.size == 0:
            raise ValueError("no positive values to take the MR intensity scale from (an empty or negative image)")
        top = float(np.percentile(positive, 99.9))
        foreground = positive[positive > self.foreground * top]
        return float(np.percentile(foreground, self.percentile)) / float(self.target)

    def to_card(self) -> dict:
        """The card form: ``{"kind": ...}`` plus the parameters of a fitted scaling."""
        if not self.fitted:
            return {"kind": self.kind}
        return {"kind": self.kind, "percentile": float(self.percentile), "foreground": float(self.foreground),
                "target": float(self.target)}

    @classmethod
    def from_card(cls, entry: Mapping | str) -> Scaling:
        """A scaling from its card form (a mapping, or just the kind's name)."""
        if isinstance(entry, str):
            return cls(entry)
        if not isinstance(entry, Mapping) or "kind" not in entry:
            raise ValueError(f"a scaling is a kind name or a mapping with 'kind'; got {entry!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            warnings.warn(f"scaling fields {unknown} are unknown to this version of restore-rwkv and are ignored",
                          stacklevel=2)
        return cls(**{k: (v if k == "kind" else float(v)) for k, v in entry.items() if k in known})


# ----------------------------------------------------------------------------- conventions
@dataclass(frozen=True)
class ModalityConvention:
    """One modality's intensity policy: scaling, normalisation range, evaluation and preview windows.

    Attributes:
        name: ``"mri"``, ``"ct"`` or ``"pet"``.
        unit: the unit values are in after scaling (``HU``, ``SUV``, ``a.u.``).
        norm_range: (low, high) in that unit, clipped and mapped linearly to [0, 1] for the network.
        eval_window: (low, high) that outputs and labels are clipped to before metrics.
        preview_window: (low, high) shown as black..white in PNG previews.
        scaling: how stored values become the unit (:class:`Scaling`).
        kept_range: (low, high) in the unit; input values outside it are kept in the output
            (:meth:`keep_outside`); None: ``norm_range``; a None end: no bound on that side.
    """

    name: str
    unit: str
    norm_range: tuple[float, float]
    eval_window: tuple[float, float]
    preview_window: tuple[float, float]
    scaling: Scaling = field(default_factory=Scaling)
    kept_range: tuple[float | None, float | None] | None = None

    @property
    def keep_bounds(self) -> tuple[float, float]:
        """The (low, high) outside which input values are kept: ``kept_range`` (a None end: infinite), else
        ``norm_range``."""
        if self.kept_range is None:
            return self.norm_range
        low, high = self.kept_range
        return (-math.inf if low is None else low, math.inf if high is None else high)

    def normalize(self, x, scale: float = 1.0):
        """``x / scale`` clipped to ``norm_range`` and mapped to [0, 1] (numpy array or tensor)."""
        lo, hi = self.norm_range
        if scale != 1.0:
            x = x / scale
        return _clip(x, lo, hi) * (1.0 / (hi - lo)) - lo / (hi - lo)

    def denormalize(self, x, scale: float = 1.0):
        """Map [0, 1] back to the unit (no clipping), times ``scale``: the input's stored units."""
        lo, hi = self.norm_range
        x = x * (hi - lo) + lo
        return x * scale if scale != 1.0 else x

    def window(self, x):
        """Clip values in the unit to ``eval_window``."""
        return _clip(x, *self.eval_window)

    def outside(self, values: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Boolean mask of the stored ``values`` that lie outside :attr:`keep_bounds` once divided by ``scale``."""
        lo, hi = self.keep_bounds
        unit = np.asarray(values, dtype=np.float64) / scale
        return (unit < lo) | (unit > hi)

    def keep_outside(self, restored: np.ndarray, original: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, int]:
        """``restored`` with ``original``'s values where the original lies outside :attr:`keep_bounds`; returns
        it and the number of such voxels.

        Both are in stored units, (H, W) or (N, H, W) (slices). Around each such region the output
        blends from the original to the restored value over ``OUTSIDE_BLEND`` pixels (raised cosine
        of the in-plane distance), so no edge appears. The network saw those voxels clipped to the
        range's bound, so its output there means nothing; the input's value is the best there is.
        """
        mask = self.outside(original, scale)
        count = int(mask.sum())
        if count == 0:
            return restored, 0
        weight = outside_weight(mask)
        out = restored + weight * (np.asarray(original, dtype=np.float64) - restored)
        return out.astype(np.asarray(restored).dtype, copy=False), count

    def to_card(self) -> dict:
        """The model card's entry for this convention."""
        entry = {"unit": self.unit, "norm_range": [float(v) for v in self.norm_range],
                 "eval_window": [float(v) for v in self.eval_window],
                 "preview_window": [float(v) for v in self.preview_window], "scaling": self.scaling.to_card()}
        if self.kept_range is not None:
            entry["kept_range"] = [None if v is None else float(v) for v in self.kept_range]
        return entry

    @classmethod
    def from_card(cls, entry: Mapping | str | ModalityConvention, name: str | None = None) -> ModalityConvention:
        """A convention from a modality name, a convention, or a model card's entry.

        A card entry has ``norm_range`` and ``eval_window`` (and optionally ``unit``, ``name``,
        ``preview_window``, ``scaling``, ``kept_range``); what it lacks comes from the default
        convention of its modality, except ``scaling``, which comes from ``LEGACY_SCALING`` (cards
        written before scalings existed). Fields this version does not know are ignored with a warning.
        """
        if isinstance(entry, ModalityConvention):
            return entry
        if isinstance(entry, str):
            return get_convention(entry)
        if not isinstance(entry, Mapping):
            raise TypeError(f"a convention is a modality name, a ModalityConvention or a mapping; "
                            f"got {type(entry).__name__}")
        label = entry.get("name", name)
        key = modality_name(label) if label is not None else None
        base = CONVENTIONS.get(key) if key else None
        unknown = sorted(set(entry) - _CARD_KEYS)
        if unknown:
            warnings.warn(f"convention {label!r}: fields {unknown} are unknown to this version of restore-rwkv "
                          "and are ignored", stacklevel=2)
        ranges = {}
        for part in ("norm_range", "eval_window", "kept_range"):
            value = entry.get(part, getattr(base, part, None))
            if value is None and part == "kept_range":
                ranges[part] = None
                continue
            if value is None:
                raise ValueError(f"convention {label or entry!r} lacks {part}")
            if len(value) != 2:
                raise ValueError(f"convention {label or entry!r}: {part} must be (low, high); got {value}")
            low, high = (None if v is None and part == "kept_range" else float(v) for v in value)
            if low is not None and high is not None and not low < high:
                raise ValueError(f"convention {label or entry!r}: {part} must have low < high; got {value}")
            ranges[part] = (low, high)
        preview = entry.get("preview_window", base.preview_window if base else ranges["eval_window"])
        scaling = entry.get("scaling")
        return cls(name=base.name if base else str(label or ""),
                   unit=str(entry.get("unit", base.unit if base else "")),
                   norm_range=ranges["norm_range"], eval_window=ranges["eval_window"],
                   preview_window=tuple(float(v) for v in preview),
                   scaling=Scaling.from_card(scaling) if scaling is not None
                   else LEGACY_SCALING.get(key or "", Scaling()),
                   kept_range=ranges["kept_range"])


_CARD_KEYS = {"name", "unit", "norm_range", "eval_window", "preview_window", "scaling", "kept_range"}


def outside_weight(mask: np.ndarray) -> np.ndarray:
    """Per-pixel weight of the input in :meth:`ModalityConvention.keep_outside`: 1 on ``mask``, falling as a
    raised cosine of the in-plane distance to 0 at ``OUTSIDE_BLEND`` pixels; (H, W) or (N, H, W)."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    planes = mask.reshape(-1, *mask.shape[-2:])
    weight = np.zeros(planes.shape, dtype=np.float64)
    for k, plane in enumerate(planes):
        if plane.any():
            distance = distance_transform_edt(~plane)
            near = distance < OUTSIDE_BLEND
            weight[k][near] = 0.5 + 0.5 * np.cos(np.pi * distance[near] / OUTSIDE_BLEND)
    return weight.reshape(mask.shape)


def _clip(x, lo: float, hi: float):
    if isinstance(x, torch.Tensor):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


# CT values below this are out-of-field padding (scanners write -2000, -2048, -3024 ...) and are kept; between it
# and -1024 HU they are noise in air (nothing attenuates less than air, -1000 HU), which is restored like air.
CT_PADDING_BELOW = -1500.0
# The paper's ranges (PAPER.md, "Data and protocol per task"); CT previews use a soft-tissue window.
CONVENTIONS: dict[str, ModalityConvention] = {
    "mri": ModalityConvention("mri", "a.u.", (0.0, 4095.0), (0.0, 4095.0), (0.0, 4095.0),
                              Scaling("foreground_percentile")),
    "ct": ModalityConvention("ct", "HU", (-1024.0, 3072.0), (-160.0, 240.0), (-160.0, 240.0), Scaling("fixed"),
                             kept_range=(CT_PADDING_BELOW, 3072.0)),
    "pet": ModalityConvention("pet", "SUV", (0.0, 20.0), (0.0, 20.0), (0.0, 10.0), Scaling("suv"),
                              kept_range=(None, 20.0)),  # negative activity is noise: restored
}
# The scaling of a card entry that names none (written before scalings existed): what those models did.
LEGACY_SCALING: dict[str, Scaling] = {"mri": Scaling("fixed"), "ct": Scaling("fixed"), "pet": Scaling("suv")}
# DICOM Modality values -> modality names
DICOM_MODALITIES: dict[str, str] = {label: task.modality for task in TASKS.values() for label in task.dicom_modalities}
_NAMES = {**{name: name for name in CONVENTIONS}, "mr": "mri", "pt": "pet"}


def modality_name(label: str | None) -> str | None:
    """The modality a name or DICOM Modality value stands for (``mri``/``mr``, ``ct``, ``pet``/``pt``,
    any case), or None when it names none."""
    return _NAMES.get(str(label).lower()) if label is not None else None


def get_convention(modality: str, **overrides) -> ModalityConvention:
    """The default convention for ``modality`` (see :func:`modality_name`), with fields replaced."""
    key = modality_name(modality)
    if key is None:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(CONVENTIONS)}")
    convention = CONVENTIONS[key]
    return dataclasses.replace(convention, **overrides) if overrides else convention
