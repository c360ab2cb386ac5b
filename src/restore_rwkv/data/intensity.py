"""The scale of a scan under its modality's intensity policy: stored units per unit of the convention.

``restore_rwkv.modality`` defines the policies; this module finds the one number a given scan
needs, from what its file says: a PET DICOM header's units, weight, dose and times (Bq/ml to
SUV), a user's factor, or (MRI) a fit on the values themselves. Datasets, ``prepare`` and
``restore`` all call :func:`input_scale`, so a scan is scaled the same way wherever it goes.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta
from restore_rwkv.modality import ModalityConvention
from restore_rwkv.utils.errors import InputError

# PET units that are SUV already (no conversion), as DICOM Units or as a user names them
SUV_UNITS = ("GML", "G/ML", "SUV", "SUVBW")
# units that need a factor: Bq/ml with a DICOM header, or any other unit with --pet-scale
BQML_UNITS = ("BQML", "BQ/ML")


def check_scale(scale: float, what: str = "--pet-scale") -> float:
    """``scale`` as a float, refused (InputError) unless positive and finite."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise InputError(None, f"{what} must be a number; got {scale!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(None, f"{what} must be a positive number (stored units per SUV); got {scale!r}")
    return value


def pet_header_scale(meta: ImageMeta | None, source,
                     advice: str = "give --pet-scale FACTOR (stored units per SUV) if you know it"
                     ) -> tuple[float, str] | None:
    """(Bq/ml per SUV, how) from a PET DICOM header; None when ``meta`` holds no PET DICOM header.

    Units GML give 1. Other units (CNTS, ...) or a header that lacks what Bq/ml to SUV needs are
    refused with an InputError naming ``source``, ending with ``advice``.
    """
    from restore_rwkv.data.io.dicom import pet_suv_factor

    if meta is None or not meta.datasets or str(meta.modality or "").upper() not in ("PT", "PET"):
        return None
    try:
        factor, how = pet_suv_factor(meta.datasets[0])
    except ValueError as exc:
        raise InputError(source, f"cannot express the PET values in SUV ({exc}); {advice}") from None
    return 1.0 / factor, how


def input_scale(convention: ModalityConvention, meta: ImageMeta | None = None,
                slices: Iterable[np.ndarray] | None = None, total: int = 0, *, scale: float | None = None,
                units: str | None = None, source=None) -> tuple[float, str]:
    """(scale, how it was found): the stored units per unit of ``convention`` for one scan.

    ``scale`` given: used as it is (``--pet-scale``; checked positive). PET (``suv``): from a DICOM
    header (:func:`pet_header_scale`); else from ``units`` (SUV or g/ml: 1; Bq/ml without a header:
    refused, it needs ``scale``); else 1 (other formats are SUV). MRI (``foreground_percentile``):
    fitted on ``slices`` (the model's input slices, ``total`` voxels; ``Scaling.fit_slices``). Others: 1.
    CT given ``units`` other than HU is refused.
    """
    if scale is not None:
        value = check_scale(scale, "--pet-scale" if convention.scaling.kind == "suv" else "scale")
        return value, f"{value:.6g} stored units per {convention.unit} (given)"
    kind = convention.scaling.kind
    label = str(units or "").strip().upper()
    if kind == "suv":
        from_header = pet_header_scale(meta, source)
        if from_header is not None:
            return from_header
        if label in ("",) + SUV_UNITS:
            return 1.0, "values taken as SUV"
        if label in BQML_UNITS:
            raise InputError(source, "PET in Bq/ml without a DICOM header to convert it: give the scale "
                                     "(--pet-scale FACTOR, Bq/ml per SUV)")
        raise InputError(source, f"PET units {units!r} are not SUV; give the scale (--pet-scale FACTOR, stored "
                                 "units per SUV)")
    if convention.name == "ct" and label not in ("", "HU"):
        raise InputError(source, f"CT values must be in HU, got units {units!r}")
    if convention.scaling.fitted:
        if slices is None:
            raise ValueError("a fitted scaling needs the slices to fit on")
        try:
            value = convention.scaling.fit_slices(slices, total)
        except ValueError as exc:
            raise InputError(source, str(exc)) from None
        percentile = convention.scaling.percentile
        return value, (f"foreground {percentile:g}th percentile {value * convention.scaling.target:.6g} "
                       f"-> {convention.scaling.target:g}")
    return 1.0, f"values taken as {convention.unit}"
