"""The paper's evaluation protocol: physical units, the modality's evaluation window, the label's range.

``evaluate_physical`` clips restored image and reference to the evaluation window (CT
[-160, 240] HU; MRI [0, 4095] and PET [0, 20] SUV, their whole ranges), takes ``data_range`` as
the windowed reference's max − min per image, and returns PSNR, SSIM and RMSE per image.
``evaluate_normalized`` first maps network-range [0, 1] images back to physical units.
"""

from __future__ import annotations

from typing import Mapping, Union

from restore_rwkv.metrics.functional import Array, DataRange, _Batch, _data_range, _mse, _psnr, _ssim
from restore_rwkv.modality import ModalityConvention

ConventionSpec = Union[str, ModalityConvention, Mapping]


def _evaluate(batch: _Batch, convention: ModalityConvention, data_range: str | DataRange,
              window: tuple[float, float] | None, ssim_boundary: str) -> dict[str, Array]:
    low, high = (float(v) for v in (window if window is not None else convention.eval_window))
    if not low < high:
        raise ValueError(f"window must have low < high; got {(low, high)}")
    batch.pred = batch.pred.clamp(low, high)
    batch.target = batch.target.clamp(low, high)
    if isinstance(data_range, str):
        if data_range != "label":
            raise ValueError(f"data_range must be 'label' or a number (or one per image); got {data_range!r}")
        flat = batch.target.flatten(1)
        dr = flat.amax(dim=1) - flat.amin(dim=1)
    else:
        dr = _data_range(data_range, batch)
    return {"psnr": batch.out(_psnr(batch, dr)), "ssim": batch.out(_ssim(batch, dr, ssim_boundary)),
            "rmse": batch.out(_mse(batch).sqrt())}


def evaluate_physical(restored: Array, reference: Array, modality: ConventionSpec,
                      data_range: str | DataRange = "label", window: tuple[float, float] | None = None,
                      ssim_boundary: str = "zero") -> dict[str, Array]:
    """PSNR, SSIM and RMSE per image of ``restored`` against ``reference``, both in physical units.

    Both are clipped to ``window`` (default: the modality's ``eval_window``). ``data_range="label"``
    uses each windowed reference's max − min; a number (or one per image) fixes it instead.
    A flat windowed reference (range 0, e.g. a CT slice of air only) has no label range: its
    PSNR and SSIM are NaN and its RMSE is still given. RMSE is in physical units, after windowing.
    ``modality`` is a name, a :class:`ModalityConvention` or a model card's convention entry.
    Values are in the convention's unit (after its scaling).
    SSIM is zero-padded and averaged over the whole map (the paper's protocol; ``ssim_boundary="valid"``
    for the textbook variant). Returns ``{"psnr", "ssim", "rmse"}``, each of shape ``()`` or ``(B,)`` (see ``metrics.psnr``).
    """
    return _evaluate(_Batch(restored, reference), ModalityConvention.from_card(modality), data_range, window, ssim_boundary)


def evaluate_normalized(restored01: Array, reference01: Array, modality: ConventionSpec,
                        data_range: str | DataRange = "label", window: tuple[float, float] | None = None,
                        ssim_boundary: str = "zero") -> dict[str, Array]:
    """:func:`evaluate_physical` of network-range images: both are first mapped from [0, 1] to
    physical units with the convention's ``norm_range`` (in float64, without clipping)."""
    convention = ModalityConvention.from_card(modality)
    batch = _Batch(restored01, reference01)
    low, high = convention.norm_range
    batch.pred = batch.pred * (high - low) + low
    batch.target = batch.target * (high - low) + low
    return _evaluate(batch, convention, data_range, window, ssim_boundary)

