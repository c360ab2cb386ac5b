"""Linear-time Bi-WKV in pure PyTorch: chunked log-space scans with a custom backward.

Every partial sum is carried as a pair (log of its total weight, weighted average of
its values). Merging two pairs only ever exponentiates non-positive numbers, so no
intermediate overflows for any finite input, whatever the sign of ``w``.

The core primitive is an *inclusive decayed scan* along the last (token) axis::

    Z_t = sum_{i<=t} exp(-(t-i) * w + a_i)          (returned as log Z_t)
    A_t = sum_{i<=t} exp(-(t-i) * w + a_i) * b_i / Z_t

computed in chunks of L tokens: inside a chunk by a cumulative sum rescaled by the
chunk's own maximum, across chunks by the same scan applied recursively to the chunk
totals with decay ``L * w``. L is chosen so that ``L * |w| <= _SPAN`` nats, which bounds
the dynamic range that the per-chunk rescaling has to absorb from the decay.

Internally tensors are laid out channel-first, (C, B, T), so that the scans run along
contiguous memory and channels can be processed in contiguous blocks (bounded memory).
"""

from __future__ import annotations

import math

import torch

_SPAN = 12.0  # largest decay, in nats, that one chunk may span
_MAX_CHUNK = 64
MAX_CHUNKED_DECAY = _SPAN / 2  # above this |w| (nats per token) the scans go token by token
_DENSE_UPTO = 256  # traced graphs: sequences up to this long are scanned densely (T^2 weights)
_BLOCK_ELEMENTS = 1 << 16  # on CPU, channels are processed in blocks of about this many elements
_BLOCK_ELEMENTS_GPU = 1 << 24  # on GPUs fewer, larger launches win


def _merge(
    l1: torch.Tensor, a1: torch.Tensor, l2: torch.Tensor, a2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two weighted averages given as (log total weight, average).

    ``l*`` have shape S; ``a*`` have shape (K, *S). An empty part is ``l = -inf``.
    """
    top = torch.maximum(l1, l2)
    top = torch.where(torch.isfinite(top), top, 0.0)
    e1 = (l1 - top).exp_()
    e2 = (l2 - top).exp_()
    total = e1 + e2  # >= 1 unless both parts are empty
    avg = (a1 * e1).add_(a2 * e2).div_(torch.where(total > 0, total, 1.0))
    return total.log_().add_(top), avg


def _shift_right(x: torch.Tensor, fill: float) -> torch.Tensor:
    """Shift ``x`` by one position along its last axis, filling the first position."""
    return torch.nn.functional.pad(x[..., :-1], (1, 0), value=fill)  # no full-size constant in a traced graph


def _sequential_scan(w: torch.Tensor, loga: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan one token at a time; used only where the decay per token is huge."""
    logz = torch.empty_like(loga)
    avg = torch.empty_like(beta)
    state_l = torch.full_like(loga[..., 0], -math.inf)
    state_a = torch.zeros_like(beta[..., 0])
    w = w[..., 0]
    for t in range(loga.shape[-1]):
        state_l, state_a = _merge(state_l - w, state_a, loga[..., t], beta[..., t])
        logz[..., t] = state_l
        avg[..., t] = state_a
    return logz, avg


def _dense_scan(w: torch.Tensor, loga: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan by the full (T, T) weight matrix, in log space (exact for any decay): a fixed
    number of operations however long the sequence, for short ones in traced graphs."""
    dtype = loga.dtype
    w, loga, beta = w.double(), loga.double(), beta.double()  # log weights reach T |w|: keep their spacing fine
    length = loga.shape[-1]
    pos = torch.arange(length, dtype=loga.dtype, device=loga.device)
    lag = pos[:, None] - pos[None, :]  # t - i
    expo = (loga[..., None, :] - lag * w[..., None]).masked_fill(lag < 0, -math.inf)  # (..., t, i)
    logz = torch.logsumexp(expo, dim=-1)
    top = torch.where(torch.isfinite(logz), logz, 0.0)
    weight = (expo - top[..., None]).exp()  # rows sum to 1; all 0 where nothing is present
    avg = torch.matmul(weight, beta[..., None])[..., 0]
    return logz.to(dtype), avg.to(dtype)


def _chunk_length(length: int, wmax: float, span: float = _SPAN) -> int:
    """Tokens per chunk: at most ``span`` nats of decay across one (traced graphs take half the span,
    so that the next level, one token per chunk, can still be chunked)."""
    if wmax > MAX_CHUNKED_DECAY:
        return 1
    limit = _MAX_CHUNK if wmax == 0 else int(span / wmax)
    return max(1, min(length, _MAX_CHUNK, limit))


class SteepDecayError(ValueError):
    """A decay too steep to record as chunked scans over a sequence too long to scan densely."""


def inclusive_scan(
    w: torch.Tensor, loga: torch.Tensor, beta: torch.Tensor, wmax: float | None = None, dense_upto: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive decayed scan along the last axis.

    Args:
        w: decay per token, broadcastable to ``loga`` with a last axis of size 1.
        loga: log weights, shape (..., T); ``-inf`` marks an empty token.
        beta: values, shape (K, ..., T).
        wmax: a bound on ``|w|`` known in advance (chunk lengths then read no tensor value, as
            tracing for export needs); None: ``max |w|``.
        dense_upto: scan sequences of at most this many chunks (or tokens, where the decay is too
            steep to chunk) with ``_dense_scan`` instead of a further level or a token-by-token loop;
            0: never. A longer one that would need the loop raises SteepDecayError.

    Returns:
        ``(log Z, A)`` with the shapes of ``loga`` and ``beta``, as in the module docstring.
    """
    length = loga.shape[-1]
    if wmax is None:
        wmax = float(w.abs().max()) if w.numel() else 0.0
    size = _chunk_length(length, wmax, MAX_CHUNKED_DECAY if dense_upto else _SPAN)
    if size == 1:
        if length <= dense_upto:
            return _dense_scan(w, loga, beta)
        if dense_upto:
            raise SteepDecayError(f"an attention decay of {wmax:.3g} nats per step over {length} steps is too steep "
                                  f"to scan in chunks (more than {MAX_CHUNKED_DECAY:g}) and too long to scan densely "
                                  f"(more than {dense_upto})")
        return _sequential_scan(w, loga, beta)
    nchunks = -(-length // size)
    pad = nchunks * size - length
    if pad:
        loga = torch.nn.functional.pad(loga, (0, pad), value=-math.inf)
        beta = torch.nn.functional.pad(beta, (0, pad))
    lead = loga.shape[:-1]
    loga = loga.reshape(*lead, nchunks, size)
    beta = beta.reshape(beta.shape[0], *lead, nchunks, size)
    wc = w[..., None]  # (..., 1, 1)

    offsets = torch.arange(size, dtype=loga.dtype, device=loga.device) * wc  # s * w
    rel = loga + offsets
    top = rel.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    weight = rel.sub_(top).exp_()
    cum_wb = (weight * beta).cumsum(dim=-1)
    cum_w = weight.cumsum(dim=-1)
    del weight, rel
    # A sum below the smallest normal number is a vanishing share of its chunk's largest
    # term, which always reaches the same output through a neighbouring part: drop it
    # rather than divide by a denormal.
    present = cum_w > torch.finfo(cum_w.dtype).tiny
    avg = torch.where(present, cum_wb.div_(cum_w), 0.0)
    del cum_wb
    logz = torch.where(present, cum_w.log_(), -math.inf).add_(top).sub_(offsets)
    del present, cum_w

    if nchunks > 1:
        # Chunk totals, scanned across chunks with decay L*w, give what flows into each chunk.
        if nchunks <= dense_upto:
            carry_l, carry_a = _dense_scan(size * w, logz[..., -1], avg[..., -1])
        else:
            carry_l, carry_a = inclusive_scan(size * w, logz[..., -1], avg[..., -1], size * wmax, dense_upto)
        carry_l = _shift_right(carry_l, -math.inf)[..., None]
        carry_a = _shift_right(carry_a, 0.0)[..., None]
        logz, avg = _merge(logz, avg, carry_l - offsets - wc, carry_a)

    logz = logz.reshape(*lead, nchunks * size)[..., :length]
    avg = avg.reshape(avg.shape[0], *lead, nchunks * size)[..., :length]
    return logz, avg


def exclusive_scans(
    w: torch.Tensor, loga: torch.Tensor, beta: torch.Tensor, wmax: float | None = None, dense_upto: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Sums over earlier tokens (i < t) and over later tokens (i > t), each weighted by
    ``exp(-(|t-i|-1) * w + loga_i)``, as (log Z, A) pairs along the last axis."""
    fl, fa = inclusive_scan(w, loga, beta, wmax, dense_upto)
    bl, ba = inclusive_scan(w, loga.flip(-1), beta.flip(-1), wmax, dense_upto)
    forward = (_shift_right(fl, -math.inf), _shift_right(fa, 0.0))
    backward = (_shift_right(bl, -math.inf).flip(-1), _shift_right(ba, 0.0).flip(-1))
    return forward, backward


def _combine(u, k, v, fl, fa, bl, ba):
    """Merge the earlier-token, later-token and own-token parts into (log D, y) of Eq. 8."""
    sl, sa = _merge(fl, fa, bl, ba)
    return _merge(sl, sa, u + k, v[None])


def _channel_blocks(channels: int, per_channel: int, device: torch.device) -> list[slice]:
    budget = _BLOCK_ELEMENTS if device.type == "cpu" else _BLOCK_ELEMENTS_GPU
    width = max(1, min(channels, budget // max(1, per_channel)))
    return [slice(c, min(c + width, channels)) for c in range(0, channels, width)]


def _forward_cbt(w, u, k, v, wmax=None, dense_upto=0):
    """Eq. 8 on channel-first tensors: w, u (C, 1, 1); k, v (C, B, T)."""
    (fl, fa), (bl, ba) = exclusive_scans(w, k, v[None], wmax, dense_upto)
    logd, y = _combine(u, k, v, fl, fa, bl, ba)
    return logd, y[0]


def _backward_cbt(w, u, k, v, g):
    """Gradients of Eq. 8 on channel-first tensors (see ``_BiWKV.backward``)."""
    (fl, fa), (bl, ba) = exclusive_scans(w, k, v[None])
    logd, y = _combine(u, k, v, fl, fa, bl, ba)
    y = y[0]
    gb = torch.stack([g, g * y])  # what target t sends back, per unit of e_ti / D_t
    (f2l, f2a), (b2l, b2a) = exclusive_scans(w, -logd, gb)
    self_l = u - logd
    dv = torch.zeros_like(v)
    dk = torch.zeros_like(k)
    for part_l, part_a in ((f2l, f2a), (b2l, b2a), (self_l, gb)):
        scale = (k + part_l).exp_()
        dv += scale * part_a[0]
        dk += scale * (v * part_a[0] - part_a[1])
    du = ((k + self_l).exp_() * g * (v - y)).sum(dim=(1, 2))
    # d/dw: a pair (i, t) carries the factor |t-i|-1, the number of tokens m strictly
    # between them, so the double sum factors into products of the scans ending at m.
    pair_fwd = (fl + b2l - w).exp_() * (fa[0] * b2a[0] - b2a[1])
    pair_bwd = (bl + f2l - w).exp_() * (ba[0] * f2a[0] - f2a[1])
    dw = -(pair_fwd + pair_bwd).sum(dim=(1, 2))
    return dw, du, dk, dv


def _backward_dtype(device: torch.device) -> torch.dtype:
    # dk, du and dw are differences of nearly equal sums where attention is peaked
    # (large |k|); float64 accumulation keeps them accurate. On CPU this costs little.
    return torch.float64 if device.type == "cpu" else torch.float32


class _BiWKV(torch.autograd.Function):
    """O(B * T * C) forward and backward; saves only the inputs."""

    @staticmethod
    def forward(ctx, w, u, k, v):  # type: ignore[override]
        ctx.in_dtypes = (w.dtype, u.dtype, k.dtype, v.dtype)
        ctx.save_for_backward(w, u, k, v)
        dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
        batch, length, channels = k.shape
        y = torch.empty_like(k)
        for cs in _channel_blocks(channels, batch * length, k.device):
            kb, vb = (x[:, :, cs].to(dtype).permute(2, 0, 1).contiguous() for x in (k, v))
            wb, ub = (x[cs].to(dtype)[:, None, None] for x in (w, u))
            y[:, :, cs] = _forward_cbt(wb, ub, kb, vb)[1].permute(1, 2, 0)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        w, u, k, v = ctx.saved_tensors
        dtype = _backward_dtype(k.device) if k.dtype != torch.float64 else torch.float64
        batch, length, channels = k.shape
        gw, gu = torch.empty_like(w), torch.empty_like(u)
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        for cs in _channel_blocks(channels, batch * length, k.device):
            kb, vb, gb = (x[:, :, cs].to(dtype).permute(2, 0, 1).contiguous() for x in (k, v, gy))
            wb, ub = (x[cs].to(dtype)[:, None, None] for x in (w, u))
            dw, du, dk, dv = _backward_cbt(wb, ub, kb, vb, gb)
            gw[cs], gu[cs] = dw, du
            gk[:, :, cs] = dk.permute(1, 2, 0)
            gv[:, :, cs] = dv.permute(1, 2, 0)
        return gw, gu, gk, gv


def bi_wkv_chunked(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 8 in O(B * T * C) time and memory, forward and backward, on any device."""
    return _BiWKV.apply(w, u, k, v)


def bi_wkv_traceable(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, wmax: float) -> torch.Tensor:
    """Eq. 8, forward only, as standard tensor operations that read no tensor value (so a tracer can
    record them: ONNX, TorchScript, ``torch.export`` without this package). ``wmax`` must bound
    ``|w|``; it fixes the chunk lengths. Short sequences of chunks are scanned densely rather than by
    a loop, so the graph has a fixed number of nodes per call. Float32, like the other forward paths.

    Raises:
        SteepDecayError: a decay too steep to chunk over a sequence too long to scan densely.
    """
    kb, vb = (x.float().permute(2, 0, 1) for x in (k, v))  # (C, B, T)
    logd, y = _forward_cbt(w.float()[:, None, None], u.float()[:, None, None], kb, vb, wmax, _DENSE_UPTO)
    return y.permute(1, 2, 0).to(k.dtype)
