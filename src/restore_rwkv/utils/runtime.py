"""Process-wide settings that make CPU inference and training faster.

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MB) with fresh
pages from the kernel and hands them back on free, so each large activation of a
whole-image forward pass page-faults its way in again: at 512x512 that doubled the time of
the model's matrix products on our 2-core machine (docs/performance.md). Raising the
threshold and the trim threshold lets freed memory be reused instead (preset "speed"; the
trim threshold matters as much: at 256 MB a 512x512 pass still page-faulted 0.3-2 GB back in). The
price: up to ``trim_threshold`` of freed memory stays with the process, and a heap of reused
blocks can fragment, which raises the peak a little. Preset "memory" goes the other way, for
gradient checkpointing: blocks above 4 MB are unmapped as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

PRESETS: dict[str, tuple[int, int | None]] = {
    # reuse freed blocks up to 128 MB (fast; keeps up to 1 GB of free heap)
    "speed": (128 << 20, 1 << 30),
    # map every block above 4 MB on its own and unmap it on free, so the resident size follows
    # the live tensors (what gradient checkpointing saves actually leaves the process)
    "memory": (4 << 20, None),
}


def tune_cpu_allocator(preference: str = "speed", mmap_threshold: int | None = None,
                       trim_threshold: int | None = None) -> dict[str, int]:
    """Set glibc's mmap and trim thresholds for this process (glibc only; elsewhere a no-op).

    ``preference="speed"`` (128 MB / 1 GB) lets large freed blocks be reused instead of
    page-faulted in again; ``"memory"`` (4 MB, trim left alone) returns every block above
    4 MB to the kernel as soon as it is freed, so peak memory is that of the live tensors
    (use it with gradient checkpointing). Explicit thresholds override the preset. Values
    were chosen by measurement (docs/performance.md). Returns the settings that took
    effect (empty where the C library is not glibc or refuses them); may be called again.
    """
    if preference not in PRESETS:
        raise ValueError(f"preference must be one of {sorted(PRESETS)}, got {preference!r}")
    preset_mmap, preset_trim = PRESETS[preference]
    mmap_threshold = preset_mmap if mmap_threshold is None else mmap_threshold
    trim_threshold = preset_trim if trim_threshold is None else trim_threshold
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
            if trim_threshold is not None and mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1:
                applied["trim_threshold"] = min(trim_threshold, 2**31 - 1)
    return applied


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
