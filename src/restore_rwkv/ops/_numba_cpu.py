"""Bi-WKV sweep kernels compiled by numba (any CPU numba supports, float32 or float64).

Same algorithm as the C kernels in ``csrc/bi_wkv_cpu.c`` (see ``_sweeps.py``); used where no
C compiler is available, and for float64 inputs. Imported lazily; without numba the package
falls back to the chunked backend.
"""

from __future__ import annotations

import numba
import numpy as np

from restore_rwkv.ops._sweeps import SweepKernels

_WIDTH = 8  # channels per task: one or two SIMD registers of float64


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward_kernel(ek, v, decay, bonus, y):  # pragma: no cover - compiled
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
                e = ek[b, t, c]
                num[j] = num[j] * decay[c] + e * v[b, t, c]
                den[j] = den[j] * decay[c] + e
        num[:] = 0.0
        den[:] = 0.0
        for t in range(length - 1, -1, -1):
            for j in range(n):
                c = c0 + j
                e = ek[b, t, c]
                own = bonus[c] * e
                vt = v[b, t, c]
                y[b, t, c] = (pre_num[t, j] + num[j] + own * vt) / (pre_den[t, j] + den[j] + own)
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




class NumbaKernels(SweepKernels):
    """The numba-compiled sweeps; float32 or float64 weights and values."""

    name = "numba"
    dtypes = (np.float32, np.float64)

    def forward(self, a, v, decay, bonus, out, threads):
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _forward_kernel(a, v, decay, bonus, out)

    def backward(self, a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, threads):
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _backward_kernel(a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part)


KERNELS = NumbaKernels()
