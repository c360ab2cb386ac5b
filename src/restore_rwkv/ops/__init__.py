"""The Bi-WKV attention operator (Eq. 8) and Re-WKV (Eq. 9-10) with interchangeable backends."""

from restore_rwkv.ops.dispatch import (
    BACKENDS,
    available_backends,
    bi_wkv,
    decay_bound,
    lowered,
    native_available,
    numba_available,
    triton_available,
    re_wkv,
    select_backend,
    tracing,
)
from restore_rwkv.ops._chunked import SteepDecayError  # noqa: E402
from restore_rwkv.ops import library  # registers torch.ops.restore_rwkv.re_wkv / .bi_wkv  # noqa: E402,F401

__all__ = [
    "BACKENDS",
    "SteepDecayError",
    "available_backends",
    "bi_wkv",
    "decay_bound",
    "lowered",
    "native_available",
    "numba_available",
    "triton_available",
    "re_wkv",
    "select_backend",
    "tracing",
]
