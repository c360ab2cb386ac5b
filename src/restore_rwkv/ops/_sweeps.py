"""Re-WKV by fused sweeps on CPU: the autograd function shared by the compiled kernels.

A kernel backend (C in ``csrc/bi_wkv_cpu.c``, or numba) provides a forward and a backward
sweep over (B, T, C) float arrays in memory order; V-scans run them on column-major copies.
Each parallel task owns one batch element and a block of channels and keeps float64 running
sums vectorised across them. Weights are ``a = exp(k - max_t k)``, computed once per Re-WKV
call, so the sweeps need no exponentials; this is exact, and safe while the decay and bonus
stay within ``MAX_SPAN`` nats (see ``fits``), where ``chunked`` takes over.
Without autograd, a backend with ``fused_inference`` (the C one) runs every step of a call in
one kernel: weights computed in C, V-scans read row-major memory directly (no copies).
"""

from __future__ import annotations

import numpy as np
import torch

# Largest |w| * T and |u| (nats) taken by the sweeps, by weight dtype. float32 weights
# underflow for k more than 87 below its maximum; such a weight must stay negligible against
# the largest weight after decay and bonus, which 2*15 + 2*15 < 87 - 27 guarantees to a
# relative 1e-12. float64 weights underflow only at e^-708.
MAX_SPAN = {torch.float32: 15.0, torch.float64: 100.0}


class SweepKernels:
    """Interface of a sweep backend (arrays are numpy and must be C-contiguous: the C backend checks).

    ``forward`` and ``backward`` sweep (B, T, C) tokens in memory order (``rows`` is that order for
    ``backward``). A backend may also offer ``infer(k, v, decay, bonus, out, threads)``: all Re-WKV
    steps without autograd on (B, H, W, C) float32 tokens, weights included (``fused_inference``).
    """

    name = "sweeps"
    dtypes: tuple = (np.float32,)
    fused_inference = False

    def forward(self, a, v, decay, bonus, out, threads):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, threads):  # pragma: no cover
        raise NotImplementedError


def weight_dtype(kernels: SweepKernels, dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 and np.float64 in kernels.dtypes else torch.float32


def within_span(w: torch.Tensor, u: torch.Tensor, length: int, span: float) -> bool:
    """Whether |w| * length and |u| (per-token decay and bonus, in nats) are at most ``span``."""
    return bool(float(w.detach().abs().max()) * length <= span and float(u.detach().abs().max()) <= span)


def fits(kernels: SweepKernels, w: torch.Tensor, u: torch.Tensor, length: int, dtype: torch.dtype) -> bool:
    """Whether per-token ``w`` and ``u`` are in the range the sweeps handle exactly for ``dtype`` inputs."""
    return within_span(w, u, length, MAX_SPAN[weight_dtype(kernels, dtype)])


def _weights(k: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """exp(k - max over tokens), shape (B, T, C), C-contiguous whatever the layout of ``k``
    (elementwise results keep a strided input's layout); the shift cancels in Eq. 8."""
    kd = k.detach().reshape(k.shape[0], -1, k.shape[-1]).to(dtype)
    return (kd - kd.amax(dim=1, keepdim=True)).exp_().contiguous().numpy()


def _array(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(B, T, C) array of (B, ..., C) ``x`` in ``dtype``, without a copy where possible."""
    x = x.detach().to(dtype)
    return x.reshape(x.shape[0], -1, x.shape[-1]).contiguous().numpy()


def _to_columns(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, H*W, C) row-major tokens -> (B, W*H, C) column-major, contiguous (a streaming copy)."""
    t = torch.from_numpy(x)
    return t.view(t.shape[0], height, width, t.shape[-1]).transpose(1, 2).contiguous().view(t.shape).numpy()


def _to_rows(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of ``_to_columns``."""
    t = torch.from_numpy(x)
    return t.view(t.shape[0], width, height, t.shape[-1]).transpose(1, 2).contiguous().view(t.shape).numpy()


class _Layouts:
    """The weights in row-major order, and (made on first use) in column-major order.

    Odd steps (V-scans) run the row-major kernel on column-major copies: the copies stream
    through memory, where a strided column walk would touch a new cache line and page per token.
    """

    def __init__(self, weights: np.ndarray, height: int, width: int) -> None:
        self.rows, self.columns, self.height, self.width = weights, None, height, width
        self.order = np.arange(height * width, dtype=np.int64)
        self.steps_left_with_rows = 1 << 30  # set by callers that know when row-major steps end

    def weights(self, step: int, last: bool = False) -> np.ndarray:
        """The weights for ``step``; with ``last`` the other layout is released (inference)."""
        if step % 2 == 0:
            rows = self.rows
            if last:
                self.rows = self.columns = None
            return rows
        if self.columns is None:
            self.columns = _to_columns(self.rows, self.height, self.width)
        columns = self.columns
        if last or step + 1 >= self.steps_left_with_rows:
            self.rows = None
        if last:
            self.columns = None
        return columns

    def into(self, x: np.ndarray, step: int) -> np.ndarray:
        return x if step % 2 == 0 else _to_columns(x, self.height, self.width)

    def back(self, x: np.ndarray, step: int) -> np.ndarray:
        return x if step % 2 == 0 else _to_rows(x, self.height, self.width)


def _prepare(kernels: SweepKernels, k: torch.Tensor, decay: torch.Tensor, first: torch.Tensor):
    """What forward and backward both start from: weight dtype, layouts, per-token w and u."""
    height, width = k.shape[1:3]
    length = height * width
    dtype = weight_dtype(kernels, k.dtype)
    layouts = _Layouts(_weights(k, dtype), height, width)
    w = decay.detach().to(torch.float64).numpy() / length
    u = first.detach().to(torch.float64).numpy() / length
    return dtype, layouts, w, u


class _ReWKVSweeps(torch.autograd.Function):
    """All M Bi-WKV steps of Re-WKV on (B, H, W, C) tokens, without transposes."""

    @staticmethod
    def forward(ctx, k, v, decay, first, kernels):  # type: ignore[override]
        batch, height, width, channels = k.shape
        threads = torch.get_num_threads()
        dtype, layouts, w, u = _prepare(kernels, k, decay, first)
        steps = decay.shape[0]
        training = any(ctx.needs_input_grad[:4])
        # Without a backward to come, every intermediate is dropped as soon as it is used.
        layouts.steps_left_with_rows = max([s for s in range(steps) if s % 2 == 0], default=-1) + 1
        values = [v]
        current = _array(v, dtype)
        for step in range(steps):
            inputs = layouts.into(current, step)
            del current
            out = np.empty_like(inputs)
            weights = layouts.weights(step, last=not training and step == steps - 1)
            kernels.forward(weights, inputs, np.exp(-w[step]), np.exp(u[step]), out, threads)
            del inputs, weights
            if step == steps - 1 and step % 2 == 1:
                # The last scan was a V-scan: hand back its column-major result as a (B, H, W, C)
                # view instead of copying it to row-major; the consumer reads it in one pass anyway.
                ctx.kernels = kernels
                if training:
                    ctx.save_for_backward(k, decay, first, *values)
                columns = torch.from_numpy(out).view(batch, width, height, channels)
                return columns.to(v.dtype).transpose(1, 2)
            current = layouts.back(out, step)
            del out
            if training:
                values.append(torch.from_numpy(current).view(batch, height, width, channels))
        ctx.kernels = kernels
        if training:
            ctx.save_for_backward(k, decay, first, *values[:-1])
        return torch.from_numpy(current).view(batch, height, width, channels).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        k, decay, first, *values = ctx.saved_tensors
        kernels = ctx.kernels
        batch, height, width, channels = k.shape
        length = height * width
        threads = torch.get_num_threads()
        dtype, layouts, w, u = _prepare(kernels, k, decay, first)
        dk_total = None
        g = _array(grad, dtype)
        d_decay = np.zeros(decay.shape)
        d_first = np.zeros(first.shape)
        for step in range(decay.shape[0] - 1, -1, -1):
            vn = layouts.into(_array(values[step], dtype), step)
            g = layouts.into(g, step)
            dk = np.empty_like(vn)
            dv = np.empty_like(vn)
            dw_part = np.empty((batch, channels))
            du_part = np.empty((batch, channels))
            kernels.backward(
                layouts.weights(step), vn, g, np.exp(-w[step]), np.exp(u[step]), layouts.order,
                dk, dv, dw_part, du_part, threads,
            )
            d_decay[step] = dw_part.sum(0) / length
            d_first[step] = du_part.sum(0) / length
            dk = layouts.back(dk, step)
            dk_total = dk if dk_total is None else dk_total + dk
            g = layouts.back(dv, step)
        shape = (batch, height, width, channels)
        return (
            torch.from_numpy(dk_total).view(shape).to(k.dtype),
            torch.from_numpy(g).view(shape).to(values[0].dtype),
            torch.from_numpy(d_decay).to(decay.dtype),
            torch.from_numpy(d_first).to(first.dtype),
            None,
        )


def _infer(kernels: SweepKernels, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Re-WKV without autograd by the backend's fused ``infer`` (float32 tokens), into ``out``
    where it is a contiguous float32 tensor (it may be ``v``: each channel block's values are
    read before its results are written)."""
    length = k.shape[1] * k.shape[2]
    keys = k.detach().to(torch.float32).contiguous()
    values = v.detach().to(torch.float32).contiguous()
    if out is None or out.dtype != torch.float32 or not out.is_contiguous() or out.shape != values.shape:
        out = torch.empty(values.shape, dtype=torch.float32)
    d = np.ascontiguousarray(np.exp(-decay.detach().to(torch.float64).numpy() / length))
    bonus = np.ascontiguousarray(np.exp(first.detach().to(torch.float64).numpy() / length))
    kernels.infer(keys.numpy(), values.numpy(), d, bonus, out.numpy(), torch.get_num_threads())
    return out.to(v.dtype)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an operation on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def re_wkv_sweeps(kernels: SweepKernels, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Re-WKV on CPU tokens (B, H, W, C) by ``kernels``; requires ``fits`` for every step.

    Without autograd the fused kernel may write into ``out`` (see ``_infer``); check the result.
    """
    if kernels.fused_inference and k.dtype != torch.float64 and not needs_grad(k, v, decay, first):
        return _infer(kernels, k, v, decay, first, out)
    return _ReWKVSweeps.apply(k, v, decay, first, kernels)


def bi_wkv_sweeps(kernels: SweepKernels, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 8 on CPU (one row-major step) by ``kernels``; requires ``fits(w, u, T)``."""
    length = k.shape[1]
    grid = (k.shape[0], 1, length, k.shape[2])
    decay, first = (x.to(torch.float64)[None] * length for x in (w, u))  # exact: no rounding in w.dtype
    return re_wkv_sweeps(kernels, k.reshape(grid), v.reshape(grid), decay, first).view(k.shape)
