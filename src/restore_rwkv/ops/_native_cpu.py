"""Bi-WKV sweep kernels in C (``csrc/bi_wkv_cpu.c``), compiled on first use for this machine.

The library is built once with the system C compiler (``$CC``, ``cc`` or ``gcc``; OpenMP
when available) into ``$RESTORE_RWKV_CACHE`` (default ``~/.cache/restore_rwkv``), keyed by
the source, compiler, flags and CPU, and loaded with ctypes. Where no compiler works the
loader returns None and the package uses numba or the chunked backend instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from restore_rwkv.ops._sweeps import SweepKernels

_SOURCE = Path(__file__).with_name("csrc") / "bi_wkv_cpu.c"
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)
_log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    root = os.environ.get("RESTORE_RWKV_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "restore_rwkv")
    return Path(root)


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compile(compiler: str) -> Path | None:
    source = _SOURCE.read_bytes()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(), _cpu_id().encode()])).hexdigest()[:16]
        target = _cache_dir() / f"bi_wkv_cpu-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            cmd = [compiler, *flags, "-shared", "-fPIC", str(_SOURCE), "-lm", "-o", str(built)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode == 0:
                built.replace(target)  # atomic: a concurrent build never sees half a file
                return target
            _log.debug("compiling %s with %s failed: %s", _SOURCE.name, flags, result.stderr[-500:])
    return None


@functools.lru_cache(maxsize=1)
def load() -> "NativeKernels | None":
    """The compiled kernels, or None where no C compiler can build them."""
    if os.environ.get("RESTORE_RWKV_NO_NATIVE"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    try:
        path = _compile(compiler)
        if path is None:
            _log.warning("restore-rwkv: could not compile the C Bi-WKV kernel; using a slower backend")
            return None
        return NativeKernels(ctypes.CDLL(str(path)))
    except OSError as exc:
        _log.warning("restore-rwkv: the C Bi-WKV kernel did not load (%s); using a slower backend", exc)
        return None


def _ptr(x: np.ndarray) -> int:
    return x.ctypes.data


class NativeKernels(SweepKernels):
    """The C sweeps; float32 weights and values, float64 running sums."""

    name = "native"
    dtypes = (np.float32,)
    fused_inference = True

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int64
        lib.wkv_forward.argtypes = [p, p, p, p, p, i, i, i, ctypes.c_int]
        lib.wkv_forward.restype = None
        lib.rewkv_infer.argtypes = [p, p, p, p, p, i, i, i, i, i, ctypes.c_int]
        lib.rewkv_infer.restype = ctypes.c_int
        lib.wkv_backward.argtypes = [p, p, p, p, p, p, p, p, p, p, i, i, i, ctypes.c_int]
        lib.wkv_backward.restype = None
        self._lib = lib

    def forward(self, a, v, decay, bonus, out, threads):
        batch, length, channels = a.shape
        self._lib.wkv_forward(_ptr(a), _ptr(v), _ptr(decay), _ptr(bonus), _ptr(out), batch, length, channels, threads)

    def infer(self, k, v, decay, bonus, out, threads):
        batch, height, width, channels = k.shape
        if self._lib.rewkv_infer(_ptr(k), _ptr(v), _ptr(out), _ptr(decay), _ptr(bonus), batch, height, width,
                                 channels, decay.shape[0], threads):
            raise MemoryError(f"Re-WKV on {tuple(k.shape)} tokens: out of memory for the sweep buffers")

    def backward(self, a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, threads):
        batch, length, channels = a.shape
        self._lib.wkv_backward(_ptr(a), _ptr(v), _ptr(g), _ptr(decay), _ptr(bonus), _ptr(rows), _ptr(dk),
                               _ptr(dv), _ptr(dw_part), _ptr(du_part), batch, length, channels, threads)
