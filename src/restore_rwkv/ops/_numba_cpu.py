"""Fused CPU kernels for Bi-WKV (numba), for inputs whose decay range fits float64.

Each (batch element, block of channels) is one parallel task that sweeps the tokens
left-to-right and right-to-left with float64 running sums, vectorised across the
channels of its block. Weights are ``exp(k - max_t k)`` (computed once, in float64), so
the sweeps need no exponentials; this is exact arithmetic-wise, and safe while
``|w| * T`` and ``|u|`` stay far below float64's exponent range (see ``fits``).
Imported lazily; without numba the package falls back to the chunked backend.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_WIDTH = 8  # channels per task: one or two SIMD registers of float64
# Largest |w| * T and |u| (nats) taken on this path. The weights exp(k - max k) are float32
# for float32 inputs: a weight that underflows (k more than 87 below the maximum) must stay
# negligible against the largest weight after decay and bonus, which 2*15 + 2*15 < 87 - 27
# guarantees to a relative 1e-12. float64 inputs keep float64 weights (e^-708).
_MAX_SPAN = {torch.float32: 15.0, torch.float64: 100.0}


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward_kernel(ek, v, decay, bonus, rows, y):  # pragma: no cover - compiled
    batch, length, channels = ek.shape
    nblocks = (channels + _WIDTH - 1) // _WIDTH
    for task in numba.prange(batch * nblocks):
        b = task // nblocks
        c0 = (task % nblocks) * _WIDTH
        n = min(_WIDTH, channels - c0)
        num = np.zeros(n)
        den = np.zeros(n)
        pre_num = np.empty((length, n))
        pre_den = np.empty((length, n))
        for t in range(length):
            for j in range(n):
                c = c0 + j
                pre_num[t, j] = num[j]
                pre_den[t, j] = den[j]
                e = ek[b, rows[t], c]
                num[j] = num[j] * decay[c] + e * v[b, rows[t], c]
                den[j] = den[j] * decay[c] + e
        num[:] = 0.0
        den[:] = 0.0
        for t in range(length - 1, -1, -1):
            for j in range(n):
                c = c0 + j
                e = ek[b, rows[t], c]
                own = bonus[c] * e
                vt = v[b, rows[t], c]
                y[b, rows[t], c] = (pre_num[t, j] + num[j] + own * vt) / (pre_den[t, j] + den[j] + own)
                num[j] = num[j] * decay[c] + e * vt
                den[j] = den[j] * decay[c] + e


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_kernel(ek, v, g, decay, bonus, rows, dk, dv, dw_part, du_part):  # pragma: no cover - compiled
    batch, length, channels = ek.shape
    nblocks = (channels + _WIDTH - 1) // _WIDTH
    for task in numba.prange(batch * nblocks):
        b = task // nblocks
        c0 = (task % nblocks) * _WIDTH
        n = min(_WIDTH, channels - c0)
        s0 = np.zeros(n)
        s1 = np.zeros(n)
        s2 = np.zeros(n)
        s3 = np.zeros(n)
        acc_w = np.zeros(n)
        acc_u = np.zeros(n)
        suf_num = np.empty((length, n))  # later reused for the prefix sums of q and r
        suf_den = np.empty((length, n))
        pre_num = np.empty((length, n))
        pre_den = np.empty((length, n))
        q = np.empty((length, n))
        r = np.empty((length, n))
        # Sweep 1, right to left: sums over later tokens of e_i v_i and e_i.
        for t in range(length - 1, -1, -1):
            for j in range(n):
                c = c0 + j
                suf_num[t, j] = s0[j]
                suf_den[t, j] = s1[j]
                e = ek[b, rows[t], c]
                s0[j] = s0[j] * decay[c] + e * v[b, rows[t], c]
                s1[j] = s1[j] * decay[c] + e
        # Sweep 2, left to right: y, D, q = g / D, r = q * y; prefix sums of q and r.
        s0[:] = 0.0
        s1[:] = 0.0
        for t in range(length):
            for j in range(n):
                c = c0 + j
                e = ek[b, rows[t], c]
                vt = v[b, rows[t], c]
                own = bonus[c] * e
                num = s0[j] + suf_num[t, j] + own * vt
                den = s1[j] + suf_den[t, j] + own
                yt = num / den
                qt = g[b, rows[t], c] / den
                rt = qt * yt
                # pairs (i > m > t): later sources times earlier targets
                acc_w[j] += suf_num[t, j] * s2[j] - suf_den[t, j] * s3[j]
                acc_u[j] += own * qt * (vt - yt)
                pre_num[t, j] = s0[j]
                pre_den[t, j] = s1[j]
                suf_num[t, j] = s2[j]
                suf_den[t, j] = s3[j]
                q[t, j] = qt
                r[t, j] = rt
                s0[j] = s0[j] * decay[c] + e * vt
                s1[j] = s1[j] * decay[c] + e
                s2[j] = s2[j] * decay[c] + qt
                s3[j] = s3[j] * decay[c] + rt
        # Sweep 3, right to left: suffix sums of q and r; gradients of k and v.
        s2[:] = 0.0
        s3[:] = 0.0
        for t in range(length - 1, -1, -1):
            for j in range(n):
                c = c0 + j
                e = ek[b, rows[t], c]
                # pairs (i < m < t): earlier sources times later targets
                acc_w[j] += pre_num[t, j] * s2[j] - pre_den[t, j] * s3[j]
                p_all = suf_num[t, j] + s2[j] + bonus[c] * q[t, j]
                r_all = suf_den[t, j] + s3[j] + bonus[c] * r[t, j]
                dv[b, rows[t], c] = e * p_all
                dk[b, rows[t], c] = e * (v[b, rows[t], c] * p_all - r_all)
                s2[j] = s2[j] * decay[c] + q[t, j]
                s3[j] = s3[j] * decay[c] + r[t, j]
        for j in range(n):
            dw_part[b, c0 + j] = -decay[c0 + j] * acc_w[j]
            du_part[b, c0 + j] = acc_u[j]


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def fits(w: torch.Tensor, u: torch.Tensor, length: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether per-token ``w`` and ``u`` are in the range this kernel handles exactly for ``dtype`` inputs."""
    span = _MAX_SPAN[_weight_dtype(dtype)]
    return bool(float(w.detach().abs().max()) * length <= span and float(u.detach().abs().max()) <= span)


def _weights(k: torch.Tensor) -> np.ndarray:
    """exp(k - max over tokens), shape (B, T, C); the shift cancels in Eq. 8."""
    kd = k.detach().reshape(k.shape[0], -1, k.shape[-1]).to(_weight_dtype(k.dtype))
    return torch.exp(kd - kd.amax(dim=1, keepdim=True)).numpy()


def _native(x: torch.Tensor) -> np.ndarray:
    """(B, T, C) float32/float64 array of (B, ..., C) ``x``, without a copy where possible."""
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.reshape(x.shape[0], -1, x.shape[-1]).contiguous().numpy()


def _scan_rows(height: int, width: int, step: int) -> np.ndarray:
    """Memory row of each scan position: row-major (H-scan) on even steps, column-major on odd."""
    rows = np.arange(height * width, dtype=np.int64)
    if step % 2 == 1:
        rows = rows.reshape(height, width).T.reshape(-1).copy()
    return rows


def _set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _ReWKVNumba(torch.autograd.Function):
    """All M Bi-WKV steps of Re-WKV on (B, H, W, C) tokens, without transposes."""

    @staticmethod
    def forward(ctx, k, v, decay, first):  # type: ignore[override]
        batch, height, width, channels = k.shape
        length = height * width
        _set_threads()
        ek = _weights(k)
        w = decay.detach().to(torch.float64).numpy() / length
        u = first.detach().to(torch.float64).numpy() / length
        values = [v]
        current = _native(v)
        for step in range(decay.shape[0]):
            out = np.empty_like(current)
            _forward_kernel(ek, current, np.exp(-w[step]), np.exp(u[step]), _scan_rows(height, width, step), out)
            current = out
            values.append(torch.from_numpy(out).view(batch, height, width, channels))
        ctx.save_for_backward(k, decay, first, *values[:-1])
        return values[-1].to(v.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        k, decay, first, *values = ctx.saved_tensors
        batch, height, width, channels = k.shape
        length = height * width
        _set_threads()
        ek = _weights(k)
        w = decay.detach().to(torch.float64).numpy() / length
        u = first.detach().to(torch.float64).numpy() / length
        dk_total = None
        g = _native(grad)
        d_decay = np.zeros(decay.shape)
        d_first = np.zeros(first.shape)
        for step in range(decay.shape[0] - 1, -1, -1):
            vn = _native(values[step])
            g = g.astype(vn.dtype, copy=False)
            dk = np.empty_like(vn)
            dv = np.empty_like(vn)
            dw_part = np.empty((batch, channels))
            du_part = np.empty((batch, channels))
            _backward_kernel(
                ek, vn, g, np.exp(-w[step]), np.exp(u[step]), _scan_rows(height, width, step),
                dk, dv, dw_part, du_part,
            )
            d_decay[step] = dw_part.sum(0) / length
            d_first[step] = du_part.sum(0) / length
            dk_total = dk if dk_total is None else dk_total + dk
            g = dv
        shape = (batch, height, width, channels)
        return (
            torch.from_numpy(dk_total).view(shape).to(k.dtype),
            torch.from_numpy(g).view(shape).to(values[0].dtype),
            torch.from_numpy(d_decay).to(decay.dtype),
            torch.from_numpy(d_first).to(first.dtype),
        )


def re_wkv_numba(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Re-WKV on CPU tokens (B, H, W, C); requires ``fits(decay[j] / T, first[j] / T, T)`` for every j."""
    return _ReWKVNumba.apply(k, v, decay, first)


def bi_wkv_numba(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 8 on CPU (one row-major step); requires ``fits(w, u, T)``."""
    length = k.shape[1]
    grid = (k.shape[0], 1, length, k.shape[2])
    decay, first = (x.to(torch.float64)[None] * length for x in (w, u))  # exact: no rounding in w.dtype
    return _ReWKVNumba.apply(k.reshape(grid), v.reshape(grid), decay, first).view(k.shape)
