"""Public entry points of the Bi-WKV operator; the backend is picked per call."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Sequence

import numpy as np
import torch

from restore_rwkv.ops._chunked import bi_wkv_chunked, bi_wkv_traceable
from restore_rwkv.ops._reference import bi_wkv_reference
from restore_rwkv.ops._sweeps import (
    MAX_SPAN,
    SweepKernels,
    bi_wkv_sweeps,
    fits,
    needs_grad,
    re_wkv_sweeps,
    within_span,
)

ENV_VAR = "RESTORE_RWKV_WKV_BACKEND"
BACKENDS = ("chunked", "native", "numba", "reference", "triton")
_SWEEP_BACKENDS = ("native", "numba")  # fastest first
# Without autograd, on a sweep backend without fused inference (numba), Re-WKV on more than
# _INFERENCE_GROUP_ABOVE elements (a 512x512x96 image stays whole) runs in channel groups of
# about _INFERENCE_GROUP_ELEMENTS elements.
_INFERENCE_GROUP_ABOVE = 1 << 25
_INFERENCE_GROUP_ELEMENTS = 1 << 23
# torch.profiler label of every re_wkv call (the model's attention operator), whatever the backend.
PROFILER_LABEL = "restore_rwkv::re_wkv"
# While a lowered trace is recorded (``lowered``): the |w| bounds of the re_wkv calls still to come.
_LOWERED_BOUNDS: list[float] | None = None
# While ``decay_bound`` records: max |decay| / T seen by each re_wkv call.
_DECAY_RECORD: list[float] | None = None


@contextlib.contextmanager
def decay_bound() -> Iterator[list[float]]:
    """Within the block, each eager ``re_wkv`` call appends ``max |decay| / T`` (its largest decay per
    token, the bound ``lowered`` needs) to the list yielded."""
    global _DECAY_RECORD
    previous, _DECAY_RECORD = _DECAY_RECORD, []
    try:
        yield _DECAY_RECORD
    finally:
        _DECAY_RECORD = previous


@contextlib.contextmanager
def lowered(bounds: Sequence[float]) -> Iterator[None]:
    """Within the block, ``re_wkv`` runs as standard tensor operations that read no tensor value (forward
    only, ``bi_wkv_traceable``), so ONNX, TorchScript or ``torch.export`` can record it for use without
    this package. ``bounds`` are the calls' |w| bounds in call order, as ``decay_bound`` recorded them on
    an eager run of the same computation at the same size (they fix the chunk lengths). The model takes
    its functional path meanwhile (``tracing()``).
    """
    global _LOWERED_BOUNDS
    previous, _LOWERED_BOUNDS = _LOWERED_BOUNDS, [float(b) for b in bounds]
    try:
        yield
    finally:
        _LOWERED_BOUNDS = previous


def _next_bound() -> float:
    if not _LOWERED_BOUNDS:
        raise RuntimeError("lowered: more re_wkv calls than recorded bounds (record them on the same computation)")
    return _LOWERED_BOUNDS.pop(0)


def tracing() -> bool:
    """Whether the operator is being traced (``torch.compile``, ``torch.export`` or a ``lowered`` block):
    callers then take functional code paths (no in-place inference buffers)."""
    return _LOWERED_BOUNDS is not None or torch.compiler.is_compiling()


@functools.lru_cache(maxsize=None)
def _sweep_kernels(name: str) -> SweepKernels | None:
    """The compiled CPU kernels of backend ``name``, or None where they cannot be built or loaded."""
    try:
        if name == "native":
            from restore_rwkv.ops import _native_cpu

            return _native_cpu.load()
        from restore_rwkv.ops import _numba_cpu

        return _numba_cpu.KERNELS
    except Exception:  # ImportError, or a numba/numpy version mismatch
        return None


@functools.lru_cache(maxsize=1)
def _triton_module():
    """``restore_rwkv.ops._triton``, or None where Triton is not installed or does not import."""
    try:
        from restore_rwkv.ops import _triton

        return _triton
    except Exception:  # ImportError, or a Triton that does not match this torch
        return None


def triton_available() -> bool:
    """Whether the Triton kernels (CUDA tensors) can be used in this environment."""
    return _triton_module() is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this environment, fastest first."""
    kind = torch.device(device).type
    if kind == "cpu":
        fast = [n for n in _SWEEP_BACKENDS if _sweep_kernels(n) is not None]
    else:
        fast = ["triton"] if kind == "cuda" and triton_available() else []
    return fast + ["chunked", "reference"]


def numba_available() -> bool:
    """Whether the numba-compiled CPU kernels can be used in this environment."""
    return _sweep_kernels("numba") is not None


def native_available() -> bool:
    """Whether the C CPU kernels compiled (or were already compiled) for this machine."""
    return _sweep_kernels("native") is not None


def select_backend(device: torch.device, backend: str = "auto") -> str:
    """Name of the backend ``bi_wkv`` prefers for tensors on ``device``.

    ``backend="auto"`` reads the environment variable ``RESTORE_RWKV_WKV_BACKEND`` (a name
    in ``BACKENDS`` or ``auto``), then takes the fastest backend available for the device:
    on CPU the C kernels (``native``), else numba, else ``chunked``; on CUDA ``triton``
    where Triton is installed, else ``chunked``. The compiled kernels hand inputs outside
    their range (|w|·T or |u| above 15 nats for float32, see docs/bi_wkv.md), and
    ``native``/``triton`` float64 inputs, to the next backend.
    """
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if backend == "auto":
        return available_backends(device)[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown bi_wkv backend {backend!r}; choose one of {list(BACKENDS)} or 'auto'")
    if backend == "triton":
        if device.type != "cuda" and not _triton_interpreted():
            raise ValueError(f"bi_wkv backend 'triton' runs on CUDA tensors only; got {device.type} tensors")
        if not triton_available():
            raise RuntimeError("bi_wkv backend 'triton' is not available here: it needs the triton package")
    if backend in _SWEEP_BACKENDS:
        if device.type != "cpu":
            raise ValueError(f"bi_wkv backend {backend!r} runs on CPU tensors only; got {device.type} tensors")
        if _sweep_kernels(backend) is None:
            need = "a working C compiler" if backend == "native" else "the numba package"
            raise RuntimeError(f"bi_wkv backend {backend!r} is not available here: it needs {need}")
    return backend


def _triton_interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``; tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_fits(steps: list[tuple[torch.Tensor, torch.Tensor]], length: int, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels take these per-token (w, u) pairs: float32 sums, 15-nat range."""
    if dtype == torch.float64:
        return False
    return all(within_span(w, u, length, MAX_SPAN[torch.float32]) for w, u in steps)


def _pick_sweeps(name: str, explicit: bool, steps: list[tuple[torch.Tensor, torch.Tensor]], length: int,
                 dtype: torch.dtype) -> SweepKernels | None:
    """The compiled kernels to run ``steps`` (per-token (w, u) pairs) with, or None for ``chunked``."""
    chain = [name] if explicit else list(_SWEEP_BACKENDS[_SWEEP_BACKENDS.index(name) :])
    for candidate in chain:
        kernels = _sweep_kernels(candidate)
        if kernels is None or (dtype == torch.float64 and np.float64 not in kernels.dtypes):
            continue
        if all(fits(kernels, w, u, length, dtype) for w, u in steps):
            return kernels
    if explicit:
        raise ValueError(
            f"bi_wkv backend {name!r}: inputs outside its range (|w|*T or |u| above 15 nats for float32, "
            f"100 for float64, or float64 on 'native'); use 'chunked'"
        )
    return None


def _use_triton(explicit: bool, steps: list[tuple[torch.Tensor, torch.Tensor]], length: int,
                dtype: torch.dtype) -> bool:
    """Whether to run ``steps`` on the Triton kernels; an explicit request out of range is an error."""
    if _triton_fits(steps, length, dtype):
        return True
    if explicit:
        raise ValueError("bi_wkv backend 'triton': inputs outside its range (|w|*T or |u| above 15 nats, "
                         "or float64); use 'chunked'")
    return False


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
        backend: ``"auto"`` (default), ``"native"`` (fused C kernel, CPU), ``"numba"``
            (the same in numba, CPU), ``"triton"`` (chunked sums in Triton, CUDA), ``"chunked"``
            (linear-time pure PyTorch, any device)
            or ``"reference"`` (O(T^2); tests only).

    Returns:
        Tensor of shape (B, T, C) in the dtype of ``k``. Half precision inputs are
        computed in float32 (float64 sums on the numba path), float64 inputs in float64.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"bi_wkv expects k and v of one shape (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    channels = k.shape[2]
    if w.shape != (channels,) or u.shape != (channels,):
        raise ValueError(f"bi_wkv expects w and u of shape ({channels},); got {tuple(w.shape)} and {tuple(u.shape)}")
    if torch.compiler.is_compiling():  # one opaque node for torch.compile / torch.export (ops/library.py)
        return torch.ops.restore_rwkv.bi_wkv(w, u, k, v, backend)
    name = select_backend(k.device, backend)
    if name == "triton":
        if _use_triton(backend == name, [(w, u)], k.shape[1], k.dtype):
            length = k.shape[1]
            grid = (k.shape[0], 1, length, channels)
            decay, first = (x[None] * length for x in (w, u))
            return _triton_module().re_wkv_triton(k.reshape(grid), v.reshape(grid), decay, first).view(k.shape)
        name = "chunked"
    if name in _SWEEP_BACKENDS:
        kernels = _pick_sweeps(name, backend == name, [(w, u)], k.shape[1], k.dtype)
        if kernels is not None:
            return bi_wkv_sweeps(kernels, w, u, k, v)
        name = "chunked"
    if name == "reference":
        return bi_wkv_reference(w, u, k, v)
    return bi_wkv_chunked(w, u, k, v)


def re_wkv(
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    first: torch.Tensor,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Re-WKV (Eq. 9-10): ``len(decay)`` Bi-WKV passes over (B, H, W, C) tokens.

    Step j (0-based) scans row-major (H-scan) when j is even and column-major (V-scan)
    when j is odd, with ``w = decay[j] / T`` and ``u = first[j] / T`` (T = H * W), as the
    reference implementation does; the same ``k`` is used at every step. Returns (B, H, W, C),
    possibly as a non-contiguous view (with autograd, the compiled CPU sweeps hand back the last
    V-scan in its column-major memory rather than copying it).

    Without autograd, ``out`` (shape of ``v``) receives the result and is returned; it may be
    ``v`` itself, which then is overwritten (the compiled CPU kernel writes there directly, so
    inference needs no full-size output buffer).
    """
    if out is not None:
        if out.shape != v.shape:
            raise ValueError(f"re_wkv: out has shape {tuple(out.shape)}, expected {tuple(v.shape)}")
        if needs_grad(k, v, decay, first, out):
            raise ValueError("re_wkv: out= is for inference only (inputs require grad)")
    if _LOWERED_BOUNDS is not None:  # standard ops for an exported file
        wmax = _next_bound()
        result = _alternating_scans(k, v, decay, first, lambda w, u, keys, values: bi_wkv_traceable(w, u, keys, values, wmax))
        return out.copy_(result) if out is not None else result
    if torch.compiler.is_compiling():  # one opaque node for torch.compile / torch.export (ops/library.py)
        result = torch.ops.restore_rwkv.re_wkv(k, v, decay, first, backend)
        return out.copy_(result) if out is not None else result
    if _DECAY_RECORD is not None:
        _DECAY_RECORD.append(float(decay.detach().abs().max()) / (k.shape[1] * k.shape[2]))
    with torch.profiler.record_function(PROFILER_LABEL):
        result = _re_wkv(k, v, decay, first, backend, out)
        if out is not None and result.data_ptr() != out.data_ptr():
            out.copy_(result)
            return out
        return result


def _re_wkv(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor, backend: str,
            out: torch.Tensor | None = None) -> torch.Tensor:
    batch, height, width, channels = k.shape
    length = height * width
    name = select_backend(k.device, backend)
    if name == "triton":
        steps = [(decay[j] / length, first[j] / length) for j in range(decay.shape[0])]
        if _use_triton(backend == name, steps, length, k.dtype):
            return _triton_module().re_wkv_triton(k, v, decay, first)
        name = "chunked"
    if name in _SWEEP_BACKENDS:
        steps = [(decay[j] / length, first[j] / length) for j in range(decay.shape[0])]
        kernels = _pick_sweeps(name, backend == name, steps, length, k.dtype)
        if kernels is not None:
            if kernels.fused_inference or torch.is_grad_enabled() or k.numel() <= _INFERENCE_GROUP_ABOVE:
                return re_wkv_sweeps(kernels, k, v, decay, first, out)
            # Inference on a large image: channels are independent, so run them in groups and
            # keep the operator's temporaries (weights, column-major copies) a group in size.
            grouped = torch.empty_like(v)
            group = max(8, (_INFERENCE_GROUP_ELEMENTS // (batch * length)) // 8 * 8)
            for c in range(0, channels, group):
                cs = slice(c, min(c + group, channels))
                grouped[..., cs] = re_wkv_sweeps(kernels, k[..., cs], v[..., cs], decay[:, cs], first[:, cs])
            return grouped
        name = "chunked"
    return _alternating_scans(k, v, decay, first, lambda w, u, keys, values: bi_wkv(w, u, keys, values, name))


def _alternating_scans(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor,
                       bi_pass) -> torch.Tensor:
    """Eq. 9-10 as ``len(decay)`` passes of ``bi_pass(w, u, k, v)`` over (B, T, C) tokens: row-major
    (H-scan) on even steps, column-major (V-scan) on odd ones, ``w = decay[j] / T``, ``u = first[j] / T``."""
    batch, height, width, channels = k.shape
    length = height * width
    k_cols = None
    for step in range(decay.shape[0]):
        w, u = decay[step] / length, first[step] / length
        if step % 2 == 0:  # H-scan: row-major order
            v = bi_pass(w, u, k.reshape(batch, length, channels), v.reshape(batch, length, channels))
            v = v.view(batch, height, width, channels)
        else:  # V-scan: column-major order
            if k_cols is None:
                k_cols = k.transpose(1, 2).reshape(batch, length, channels)
            v_cols = v.transpose(1, 2).reshape(batch, length, channels)
            v = bi_pass(w, u, k_cols, v_cols).view(batch, width, height, channels).transpose(1, 2)
    return v
