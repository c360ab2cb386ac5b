"""Footprint projection and back-projection kernels compiled by numba (CPU, float32 or float64).

Geometry and weights as in ``projector.FootprintProjector``: pixel (i, j) of an N x N image
lies at the fractional detector position t = x cos(theta) + y sin(theta) + (D - 1) / 2
(x = j - (N - 1) / 2, y = i - (N - 1) / 2, bins one pixel apart). Rounded to the nearest
1/S bin (S = ``weights.shape[1]``), t = k + (m - S/2) / S with k the nearest bin and
0 <= m < S; the pixel then meets bins k - 1, k, k + 1 with the weights ``weights[view, m, 0..2]``.

- ``project``: sinogram[b, a, k - 1 + n] += weights[a, m, n] * image[b, i, j];
- ``backproject``: image[b, i, j] = sum over views and n of weights[a, m, n] * sinogram[b, a, k - 1 + n];

so each is the exact transpose of the other. Bins outside 0 .. D - 1 count as zero (the
sinogram is handled with two bins of margin on each side). Positions are computed in float64
as S * t = S * base + j * (S * cos), which is exact scaling by a power of two (the torch
implementation does the same, so both find the same bins). Sums are in float64 and in a fixed
order: one task per (image, view) for ``project`` (no two threads write one sinogram row) and
per (image, row) for ``backproject``, so results do not depend on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np

MARGIN = 2  # bins of zero margin on each side of the detector


def _compile(fn):
    """``fn`` compiled for parallel CPU, cached on disk where numba finds a writable place
    (next to this file, else the user's cache folder); compiled per process where none is."""
    try:
        return numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install and home)
        return numba.njit(parallel=True, cache=False, fastmath=False, error_model="numpy")(fn)


@_compile
def project(images, cos, sin, detectors, weights, out):  # pragma: no cover - compiled
    """(B, N, N) images -> (B, A, D) ``out`` (overwritten)."""
    batch, size, _ = images.shape
    views = cos.shape[0]
    steps = weights.shape[1]
    half = (size - 1) * 0.5
    centre = (detectors - 1) * 0.5
    for task in numba.prange(batch * views):
        b = task // views
        a = task % views
        step = cos[a] * steps
        w = weights[a]
        row = np.zeros(detectors + 2 * MARGIN)
        for i in range(size):
            base = ((i - half) * sin[a] + centre - half * cos[a] + MARGIN) * steps + (steps // 2 + 0.5)
            for j in range(size):
                u = int(base + j * step)
                k = u // steps
                m = u - k * steps
                v = images[b, i, j]
                row[k - 1] += w[m, 0] * v
                row[k] += w[m, 1] * v
                row[k + 1] += w[m, 2] * v
        for k in range(detectors):
            out[b, a, k] = row[k + MARGIN]


@_compile
def backproject(sinograms, cos, sin, size, weights, out):  # pragma: no cover - compiled
    """(B, A, D) sinograms -> (B, N, N) ``out`` (overwritten)."""
    batch, views, detectors = sinograms.shape
    steps = weights.shape[1]
    half = (size - 1) * 0.5
    centre = (detectors - 1) * 0.5
    padded = np.zeros((batch, views, detectors + 2 * MARGIN))
    padded[:, :, MARGIN : MARGIN + detectors] = sinograms
    for task in numba.prange(batch * size):
        b = task // size
        i = task % size
        acc = np.zeros(size)
        for a in range(views):
            step = cos[a] * steps
            w = weights[a]
            p = padded[b, a]
            base = ((i - half) * sin[a] + centre - half * cos[a] + MARGIN) * steps + (steps // 2 + 0.5)
            for j in range(size):
                u = int(base + j * step)
                k = u // steps
                m = u - k * steps
                acc[j] += w[m, 0] * p[k - 1] + w[m, 1] * p[k] + w[m, 2] * p[k + 1]
        for j in range(size):
            out[b, i, j] = acc[j]
