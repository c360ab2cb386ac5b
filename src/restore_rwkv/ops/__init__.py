"""The Bi-WKV attention operator (Eq. 8) with interchangeable backends."""

from restore_rwkv.ops.bi_wkv import BACKENDS, bi_wkv, select_backend

__all__ = ["BACKENDS", "bi_wkv", "select_backend"]
