"""Process-wide settings that make CPU inference and training faster.

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MB) with fresh
pages from the kernel and hands them back on free, so each large activation of a
whole-image forward pass page-faults its way in again: at 512x512 that doubled the time of
the model's matrix products on our 2-core machine (docs/performance.md). Raising the
threshold and the trim threshold lets freed memory be reused instead. The price: up to
``trim_threshold`` of freed memory stays with the process, and a heap of reused blocks can
fragment, which raises the peak a little.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: dict[str, int] | None = None


def tune_cpu_allocator(mmap_threshold: int = 128 << 20, trim_threshold: int = 256 << 20) -> dict[str, int]:
    """Keep freed blocks up to ``mmap_threshold`` bytes in the heap for reuse (glibc only; elsewhere a no-op).

    The defaults (128 MB, 256 MB) were chosen by measurement (docs/performance.md): larger
    thresholds are a little faster still but raise the peak memory of very large images,
    whose activations stay above the threshold and keep glibc's return-to-kernel behaviour.

    Returns the settings that took effect (empty where the C library is not glibc or
    refuses them). Safe to call more than once; later calls return the first result.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    applied: dict[str, int] = {}
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # glibc caps the mmap threshold (32 MB on some releases): try the request, then the cap.
            for value in (mmap_threshold, 32 << 20):
                if mallopt(_M_MMAP_THRESHOLD, min(value, 2**31 - 1)) == 1:
                    applied["mmap_threshold"] = min(value, 2**31 - 1)
                    break
            if mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1:
                applied["trim_threshold"] = min(trim_threshold, 2**31 - 1)
    _applied = applied
    return dict(applied)


def release_free_memory() -> bool:
    """Hand freed heap memory back to the kernel now (glibc ``malloc_trim``); False elsewhere.

    A long-lived process that ran large images with the tuned allocator keeps their pages;
    call this before starting other memory-hungry work (e.g. a child process).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
