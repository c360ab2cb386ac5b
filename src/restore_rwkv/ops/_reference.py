"""Plain O(T^2) Bi-WKV, evaluated straight from Eq. 8 (for tests and tiny inputs)."""

from __future__ import annotations

from typing import Iterator

import torch

_BLOCK_ELEMENTS = 1 << 22  # (target row, source, channel) triples evaluated at once


def _row_blocks(w, u, k) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (target slice, dist - 1 factor, normalised weights p[b, t, i, c])."""
    batch, length, channels = k.shape
    rows = max(1, _BLOCK_ELEMENTS // max(1, batch * length * channels))
    pos = torch.arange(length, device=k.device, dtype=k.dtype)
    for start in range(0, length, rows):
        ts = slice(start, min(start + rows, length))
        gap = (pos[ts, None] - pos[None, :]).abs() - 1  # (R, T): |t-i| - 1, -1 on the diagonal
        diag = (gap < 0)[None, :, :, None]
        expo = torch.where(diag, (u + k[:, ts])[:, :, None, :], -gap[None, :, :, None] * w + k[:, None, :, :])
        expo = expo - expo.amax(dim=2, keepdim=True)  # per-row shift: exact, keeps exp finite
        weight = expo.exp()
        yield ts, gap, diag, weight / weight.sum(dim=2, keepdim=True)


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 8 with the full weight matrix per channel, evaluated in blocks of target rows.

    Each row's exponents are shifted by their own maximum, which changes nothing
    mathematically and keeps the result finite for any finite input. Time O(B * T^2 * C);
    differentiable through ordinary autograd (which then holds O(B * T^2 * C) memory).
    """
    rows = [(p * v[:, None, :, :]).sum(dim=2) for _, _, _, p in _row_blocks(w, u, k)]
    return torch.cat(rows, dim=1)


def bi_wkv_reference_grad(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gy: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Output y and the gradients of ``sum(gy * bi_wkv(w, u, k, v))`` from the pairwise formulas, in O(T) memory
    per row block, and the sums of absolute values of their terms.

    With p_ti = e_ti / D_t: dv_i = sum_t g_t p_ti, dk_i = sum_t g_t p_ti (v_i - y_t),
    du = sum_t g_t p_tt (v_t - y_t), dw = -sum_{t, i != t} (|t-i|-1) g_t p_ti (v_i - y_t).
    The second tuple bounds each sum by the sum of its terms' absolute values, which is
    the scale that rounding in any summation order is relative to.

    Returns:
        ``(y, (dw, du, dk, dv), (their scales))``.
    """
    y = bi_wkv_reference(w, u, k, v)
    grads = [torch.zeros_like(w), torch.zeros_like(u), torch.zeros_like(k), torch.zeros_like(v)]
    scales = [torch.zeros_like(w), torch.zeros_like(u), torch.zeros_like(k), torch.zeros_like(v)]
    for ts, gap, diag, p in _row_blocks(w, u, k):
        g = gy[:, ts, None, :]
        gp = g * p  # (B, R, T, C)
        diff = v[:, None, :, :] - y[:, ts, None, :]
        mag = v[:, None, :, :].abs() + y[:, ts, None, :].abs()
        term = gp * diff
        dist = gap.clamp_min(0)[None, :, :, None]
        grads[0] -= (term * dist).sum(dim=(0, 1, 2))
        scales[0] += (gp.abs() * mag * dist).sum(dim=(0, 1, 2))
        grads[1] += torch.where(diag, term, 0).sum(dim=(0, 1, 2))
        scales[1] += torch.where(diag, gp.abs() * mag, 0).sum(dim=(0, 1, 2))
        grads[2] += term.sum(dim=1)
        scales[2] += (gp.abs() * mag).sum(dim=1)
        grads[3] += gp.sum(dim=1)
        scales[3] += gp.abs().sum(dim=1)
    return y, tuple(grads), tuple(scales)
