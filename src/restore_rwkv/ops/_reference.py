"""Plain O(T^2) Bi-WKV, evaluated straight from Eq. 8 (for tests and tiny inputs)."""

from __future__ import annotations

from typing import Iterator

import torch

_BLOCK_ELEMENTS = 1 << 21  # (batch, channel, target, source) weights evaluated at once
_MAX_ROWS = 256  # targets per block: more rows amortise the per-block sums over targets


def _blocks(w, u, k) -> Iterator[tuple[slice, slice, torch.Tensor, torch.Tensor]]:
    """Yield (channel slice, target slice, |t-i| - 1 of shape (R, T), normalised weights p[b, c, t, i]).

    Blocks span all sources and up to _MAX_ROWS targets of a group of channels, channels first,
    so that sums over sources (the last axis) and over targets are batched matrix products.
    """
    batch, length, channels = k.shape
    rows = max(1, min(length, _MAX_ROWS, _BLOCK_ELEMENTS // max(1, batch * length)))
    group = max(1, min(channels, _BLOCK_ELEMENTS // max(1, batch * rows * length)))
    pos = torch.arange(length, device=k.device, dtype=k.dtype)
    kc = k.transpose(1, 2)  # (B, C, T)
    for c0 in range(0, channels, group):
        cs = slice(c0, min(c0 + group, channels))
        for t0 in range(0, length, rows):
            ts = slice(t0, min(t0 + rows, length))
            gap = (pos[ts, None] - pos[None, :]).abs() - 1  # (R, T): |t-i| - 1, -1 on the diagonal
            expo = -gap * w[cs, None, None] + kc[:, cs, None, :]  # (B, G, R, T)
            diag = torch.arange(ts.stop - t0, device=k.device)
            expo[:, :, diag, diag + t0] = u[cs, None] + kc[:, cs, ts]  # the bonus u on i = t
            expo = expo - expo.amax(dim=3, keepdim=True)  # per-row shift: exact, keeps exp finite
            weight = expo.exp()
            yield cs, ts, gap, weight / weight.sum(dim=3, keepdim=True)


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 8 with the full weight matrix per channel, evaluated in blocks of target rows.

    Each row's exponents are shifted by their own maximum, which changes nothing
    mathematically and keeps the result finite for any finite input. Time O(B * T^2 * C);
    differentiable through ordinary autograd (which then holds O(B * T^2 * C) memory).
    """
    vc = v.transpose(1, 2)[..., None]  # (B, C, T, 1)
    y = torch.empty_like(vc[..., 0])
    for cs, ts, _, p in _blocks(w, u, k):
        y[:, cs, ts] = (p @ vc[:, cs])[..., 0]
    return y.transpose(1, 2)


def bi_wkv_reference_grad(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gy: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Output y and the gradients of ``sum(gy * bi_wkv(w, u, k, v))`` from the pairwise formulas, in O(T) memory
    per row block, and the sums of absolute values of their terms.

    With p_ti = e_ti / D_t: dv_i = sum_t g_t p_ti, dk_i = sum_t g_t p_ti (v_i - y_t),
    du = sum_t g_t p_tt (v_t - y_t), dw = -sum_{t, i != t} (|t-i|-1) g_t p_ti (v_i - y_t).
    The second tuple bounds each sum by the sum of its terms' absolute values, which is
    the scale that rounding in any summation order is relative to. Each pairwise sum is taken
    as products of the weight matrix p with per-token factors (p >= 0, so |g_t p_ti| = |g_t| p_ti).

    Returns:
        ``(y, (dw, du, dk, dv), (their scales))``.
    """
    vc, gc = v.transpose(1, 2), gy.transpose(1, 2)  # (B, C, T)
    dw, du, sdw, sdu = (torch.zeros_like(w) for _ in range(4))
    y, dk, dv, sdk, sdv = (torch.zeros_like(vc) for _ in range(5))
    by_source_all = torch.stack([vc, vc.abs(), torch.ones_like(vc)], dim=-1)  # (B, C, T, 3)
    for cs, ts, gap, p in _blocks(w, u, k):
        vg, by_source = vc[:, cs], by_source_all[:, cs]
        g, yt = gc[:, cs, ts], (p @ vg[..., None])[..., 0]  # (B, G, R)
        y[:, cs, ts] = yt
        ga, ya = g.abs(), yt.abs()
        # over sources i, with the distance factor: sum_i (|t-i|-1)+ p_ti (v_i, |v_i|, 1)
        qv, qva, qs = ((p * gap.clamp_min(0)) @ by_source).unbind(-1)
        dw[cs] -= (g * (qv - yt * qs)).sum(dim=(0, 2))
        sdw[cs] += (ga * (qva + ya * qs)).sum(dim=(0, 2))
        # the diagonal i = t
        diag = torch.arange(ts.stop - ts.start, device=k.device)
        p_tt, v_t = p[:, :, diag, diag + ts.start], vg[:, :, ts]
        du[cs] += (g * p_tt * (v_t - yt)).sum(dim=(0, 2))
        sdu[cs] += (ga * p_tt * (v_t.abs() + ya)).sum(dim=(0, 2))
        # over targets t: sum_t p_ti (g_t, |g_t|, g_t y_t, |g_t y_t|)
        sg, sga, sgy, sgya = (p.transpose(2, 3) @ torch.stack([g, ga, g * yt, ga * ya], dim=-1)).unbind(-1)
        dk[:, cs] += vg * sg - sgy
        sdk[:, cs] += vg.abs() * sga + sgya
        dv[:, cs] += sg
        sdv[:, cs] += sga

    def tokens_last(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).contiguous()

    return tokens_last(y), (dw, du, tokens_last(dk), tokens_last(dv)), (sdw, sdu, tokens_last(sdk), tokens_last(sdv))
