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


def _ptr(x: np.ndarray, dtype: type) -> int:
    """Address of ``x`` for the C kernels, which read every array as C-contiguous ``dtype`` memory.

    Every pointer handed to C is taken here. A strided or mistyped array is refused rather than copied:
    a copy would not receive what the kernel writes into an output, and an input read as contiguous
    through its raw pointer gives silently wrong results.
    """
    if x.dtype != dtype or not x.flags.c_contiguous:
        raise ValueError(f"native Bi-WKV kernel: expected a C-contiguous {np.dtype(dtype).name} array, got "
                         f"{x.dtype.name} with shape {x.shape} and strides {x.strides}")
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
        f32, f64 = np.float32, np.float64
        self._lib.wkv_forward(_ptr(a, f32), _ptr(v, f32), _ptr(decay, f64), _ptr(bonus, f64), _ptr(out, f32),
                              batch, length, channels, threads)

    def infer(self, k, v, decay, bonus, out, threads):
        batch, height, width, channels = k.shape
        f32, f64 = np.float32, np.float64
        if self._lib.rewkv_infer(_ptr(k, f32), _ptr(v, f32), _ptr(out, f32), _ptr(decay, f64), _ptr(bonus, f64),
                                 batch, height, width, channels, decay.shape[0], threads):
            raise MemoryError(f"Re-WKV on {tuple(k.shape)} tokens: out of memory for the sweep buffers")

    def backward(self, a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, threads):
        batch, length, channels = a.shape
        f32, f64 = np.float32, np.float64
        self._lib.wkv_backward(_ptr(a, f32), _ptr(v, f32), _ptr(g, f32), _ptr(decay, f64), _ptr(bonus, f64),
                               _ptr(rows, np.int64), _ptr(dk, f32), _ptr(dv, f32), _ptr(dw_part, f64),
                               _ptr(du_part, f64), batch, length, channels, threads)
