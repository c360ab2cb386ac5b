"""Public entry point of the Bi-WKV operator; picks a backend per call."""

from __future__ import annotations

import os
from typing import Callable

import torch

from restore_rwkv.ops._chunked import bi_wkv_chunked
from restore_rwkv.ops._reference import bi_wkv_reference

ENV_VAR = "RESTORE_RWKV_WKV_BACKEND"

BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": bi_wkv_reference,
    "chunked": bi_wkv_chunked,
}


def select_backend(device: torch.device, backend: str = "auto") -> str:
    """Name of the backend that ``bi_wkv`` uses for tensors on ``device``.

    ``backend="auto"`` reads the environment variable ``RESTORE_RWKV_WKV_BACKEND``
    (any name in ``BACKENDS``, or ``auto``), then falls back to the best backend
    available for the device.
    """
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if backend == "auto":
        return "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown bi_wkv backend {backend!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    return backend


def bi_wkv(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Bidirectional WKV of Eq. 8 (Restore-RWKV), for each batch element and channel::

        y_t = (sum_{i != t} exp(-(|t-i|-1) w + k_i) v_i + exp(u + k_t) v_t)
            / (sum_{i != t} exp(-(|t-i|-1) w + k_i)       + exp(u + k_t))

    Args:
        w: decay per token, shape (C,). The model passes ``spatial_decay / T``, as the
            reference does; negative values (growth with distance) are allowed.
        u: bonus of the own token, shape (C,), likewise already divided by T.
        k: keys, shape (B, T, C).
        v: values, shape (B, T, C).
        backend: ``"auto"`` (default), ``"chunked"`` (linear time, any device) or
            ``"reference"`` (O(T^2) memory and time; tests and tiny inputs only).

    Returns:
        Tensor of shape (B, T, C) in the dtype of ``k``. Half precision inputs are
        computed in float32, float64 inputs in float64.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"bi_wkv expects k and v of one shape (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    channels = k.shape[2]
    if w.shape != (channels,) or u.shape != (channels,):
        raise ValueError(f"bi_wkv expects w and u of shape ({channels},); got {tuple(w.shape)} and {tuple(u.shape)}")
    return BACKENDS[select_backend(k.device, backend)](w, u, k, v)
