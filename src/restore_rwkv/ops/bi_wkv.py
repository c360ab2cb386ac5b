"""Public entry points of the Bi-WKV operator; the backend is picked per call."""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from restore_rwkv.ops._chunked import bi_wkv_chunked
from restore_rwkv.ops._reference import bi_wkv_reference

ENV_VAR = "RESTORE_RWKV_WKV_BACKEND"
BACKENDS = ("chunked", "numba", "reference")


@functools.lru_cache(maxsize=1)
def _numba_kernels() -> ModuleType | None:
    """The compiled CPU kernels, or None where numba is not installed or does not load."""
    try:
        from restore_rwkv.ops import _numba_cpu
    except Exception:  # ImportError, or a numba/numpy version mismatch
        return None
    return _numba_cpu


def numba_available() -> bool:
    """Whether the fused CPU kernels (numba) can be used in this environment."""
    return _numba_kernels() is not None


def select_backend(device: torch.device, backend: str = "auto") -> str:
    """Name of the backend ``bi_wkv`` prefers for tensors on ``device``.

    ``backend="auto"`` reads the environment variable ``RESTORE_RWKV_WKV_BACKEND`` (a name
    in ``BACKENDS`` or ``auto``), then takes the fastest backend available for the device:
    ``numba`` on CPU where numba is installed, ``chunked`` elsewhere. ``numba`` hands inputs
    outside its range (|w|·T or |u| above 15 nats for float32, 100 for float64; see
    docs/bi_wkv.md) to ``chunked``.
    """
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if backend == "auto":
        return "numba" if device.type == "cpu" and numba_available() else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown bi_wkv backend {backend!r}; choose one of {list(BACKENDS)} or 'auto'")
    if backend == "numba" and not numba_available():
        raise RuntimeError("bi_wkv backend 'numba' needs the numba package (pip install numba)")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"bi_wkv backend 'numba' runs on CPU tensors only; got {device.type} tensors")
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
        backend: ``"auto"`` (default), ``"numba"`` (fused CPU kernel), ``"chunked"``
            (linear-time pure PyTorch, any device) or ``"reference"`` (O(T^2); tests only).

    Returns:
        Tensor of shape (B, T, C) in the dtype of ``k``. Half precision inputs are
        computed in float32 (float64 sums on the numba path), float64 inputs in float64.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"bi_wkv expects k and v of one shape (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    channels = k.shape[2]
    if w.shape != (channels,) or u.shape != (channels,):
        raise ValueError(f"bi_wkv expects w and u of shape ({channels},); got {tuple(w.shape)} and {tuple(u.shape)}")
    name = select_backend(k.device, backend)
    if name == "numba":
        kernels = _numba_kernels()
        if kernels.fits(w, u, k.shape[1], k.dtype):
            return kernels.bi_wkv_numba(w, u, k, v)
        if backend == "numba":
            raise ValueError("bi_wkv backend 'numba': |w|*T or |u| exceeds its range (15 nats for float32, 100 for float64); use 'chunked'")
        name = "chunked"
    if name == "reference":
        return bi_wkv_reference(w, u, k, v)
    return bi_wkv_chunked(w, u, k, v)


def re_wkv(
    k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Re-WKV (Eq. 9-10): ``len(decay)`` Bi-WKV passes over (B, H, W, C) tokens.

    Step j (0-based) scans row-major (H-scan) when j is even and column-major (V-scan)
    when j is odd, with ``w = decay[j] / T`` and ``u = first[j] / T`` (T = H * W), as the
    reference implementation does; the same ``k`` is used at every step. Returns (B, H, W, C).
    """
    batch, height, width, channels = k.shape
    length = height * width
    name = select_backend(k.device, backend)
    if name == "numba":
        kernels = _numba_kernels()
        if all(kernels.fits(decay[j] / length, first[j] / length, length, k.dtype) for j in range(decay.shape[0])):
            return kernels.re_wkv_numba(k, v, decay, first)
        if backend == "numba":
            raise ValueError("re_wkv backend 'numba': |w|*T or |u| exceeds its range (15 nats for float32, 100 for float64); use 'chunked'")
        name = "chunked"
    k_cols = None
    for step in range(decay.shape[0]):
        w, u = decay[step] / length, first[step] / length
        if step % 2 == 0:  # H-scan: row-major order
            v = bi_wkv(w, u, k.reshape(batch, length, channels), v.reshape(batch, length, channels), name)
            v = v.view(batch, height, width, channels)
        else:  # V-scan: column-major order
            if k_cols is None:
                k_cols = k.transpose(1, 2).reshape(batch, length, channels)
            v_cols = v.transpose(1, 2).reshape(batch, length, channels)
            v = bi_wkv(w, u, k_cols, v_cols, name).view(batch, width, height, channels).transpose(1, 2)
    return v
