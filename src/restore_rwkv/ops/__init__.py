"""The Bi-WKV attention operator (Eq. 8) and Re-WKV (Eq. 9-10) with interchangeable backends."""

from restore_rwkv.ops.dispatch import (
    BACKENDS,
    available_backends,
    bi_wkv,
    native_available,
    numba_available,
    triton_available,
    re_wkv,
    select_backend,
)

__all__ = [
    "BACKENDS",
    "available_backends",
    "bi_wkv",
    "native_available",
    "numba_available",
    "triton_available",
    "re_wkv",
    "select_backend",
]
