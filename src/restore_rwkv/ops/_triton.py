"""Re-WKV on CUDA with Triton: chunked decayed sums, no transposes, forward and backward.

Everything reduces to one primitive, the *bidirectional exclusive decayed sums* of a
tensor X along the scan order::

    P_t = sum_{i<t} d^(t-1-i) X_i,    S_t = sum_{i>t} d^(i-t-1) X_i,    d = exp(-w)

Eq. 8 is ``y = (P(a v) + S(a v) + e^u a v) / (P(a) + S(a) + e^u a)`` with weights
``a = exp(k - max_t k)``, and its gradients are the same sums of ``q = g / D`` and
``r = q y`` (docs/bi_wkv.md). The sums run in chunks of ``CHUNK`` tokens: a first kernel
gives each chunk's two totals, a float64 cumulative sum over chunks gives what flows into
each chunk, and a second kernel scans inside the chunk with ``tl.cumsum``. Within the
range that ``fits`` allows (|w| T and |u| at most 15 nats) every power of ``d`` over any
span of the sequence lies in [e^-15, e^15], so scaled cumulative sums are exact in float32
(no log-space bookkeeping). The V-scan reads the (B, H, W, C) tokens in column-major order
through index arithmetic instead of a transposed copy. Imported only where Triton is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64
BLOCK_C = 32


@triton.jit
def _token_offsets(t, height, width, COLUMN_MAJOR: tl.constexpr):
    """Memory index (in tokens) of scan position ``t`` in a row-major (H, W) image."""
    if COLUMN_MAJOR:
        return (t % height) * width + t // height
    return t


@triton.jit
def _program_tile(channels, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's chunk index, batch element, channel indices, positions in the chunk and tokens."""
    chunk = tl.program_id(0)
    pid_bc = tl.program_id(1)
    c_blocks = tl.cdiv(channels, BLOCK_C)
    b = pid_bc // c_blocks
    c = (pid_bc % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.arange(0, CHUNK)
    return chunk, b, c, s, chunk * CHUNK + s


@triton.jit
def _chunk_totals_kernel(x_ptr, w_ptr, tot_ptr, length, channels, height, width, n_chunks,
                         CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, COLUMN_MAJOR: tl.constexpr):
    """tot[b, j, 0] = sum_s d^(CHUNK-1-s) X_(jL+s),  tot[b, j, 1] = sum_s d^s X_(jL+s)."""
    chunk, b, c, s, t = _program_tile(channels, CHUNK, BLOCK_C)
    tok = _token_offsets(t, height, width, COLUMN_MAJOR)
    mask = (t < length)[:, None] & (c < channels)[None, :]
    x = tl.load(x_ptr + b * length * channels + tok[:, None] * channels + c[None, :], mask=mask, other=0.0)
    w = tl.load(w_ptr + c, mask=c < channels, other=0.0)
    # Powers of d are taken only where they stay within the sequence (padding rows get 0):
    # the last chunk's end total is never used, and a padded exponent could overflow.
    sf = tl.where(t < length, s, 0).to(tl.float32)[:, None]
    last = chunk == n_chunks - 1
    ending = tl.sum(tl.exp(-tl.where(last, 0.0, CHUNK - 1 - sf) * w[None, :]) * x, axis=0)
    starting = tl.sum(tl.exp(-sf * w[None, :]) * x, axis=0)
    base = tot_ptr + ((b * n_chunks + chunk) * 2) * channels + c
    tl.store(base, ending, mask=c < channels)
    tl.store(base + channels, starting, mask=c < channels)


@triton.jit
def _chunk_sums_kernel(x_ptr, w_ptr, carry_ptr, p_ptr, s_ptr, length, channels, height, width, n_chunks,
                       CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, COLUMN_MAJOR: tl.constexpr):
    """P and S of every token of one chunk, from the chunk's carries and its own tokens."""
    chunk, b, c, s, t = _program_tile(channels, CHUNK, BLOCK_C)
    cmask = c < channels
    row = b * length * channels
    w = tl.load(w_ptr + c, mask=cmask, other=0.0)[None, :]
    # Exponents are bounded by |w| T <= 15 on real tokens; padding rows use 0 (no overflow).
    sf = tl.where(t < length, s, 0).to(tl.float32)[:, None]
    # Exclusive prefix: the token before each position, weighted d^-(s-1), summed inclusively.
    before = t - 1
    tok = _token_offsets(before, height, width, COLUMN_MAJOR)
    mask = ((before >= chunk * CHUNK) & (before < length))[:, None] & cmask[None, :]
    x = tl.load(x_ptr + row + tok[:, None] * channels + c[None, :], mask=mask, other=0.0)
    local = tl.cumsum(tl.exp((sf - 1.0) * w) * x, axis=0) * tl.exp(-(sf - 1.0) * w)
    base = carry_ptr + ((b * n_chunks + chunk) * 2) * channels + c
    p_in = tl.load(base, mask=cmask, other=0.0)[None, :]
    s_in = tl.load(base + channels, mask=cmask, other=0.0)[None, :]
    prefix = local + tl.exp(-sf * w) * p_in
    # Exclusive suffix: the token after each position, weighted d^(s+1), summed from the right.
    after = t + 1
    tok = _token_offsets(after, height, width, COLUMN_MAJOR)
    mask = ((after < chunk * CHUNK + CHUNK) & (after < length))[:, None] & cmask[None, :]
    x = tl.load(x_ptr + row + tok[:, None] * channels + c[None, :], mask=mask, other=0.0)
    local = tl.cumsum(tl.exp(-(sf + 1.0) * w) * x, axis=0, reverse=True) * tl.exp((sf + 1.0) * w)
    last = chunk == n_chunks - 1  # nothing flows in from the right (s_in = 0): skip its power
    suffix = local + tl.exp(-tl.where(last, 0.0, CHUNK - 1 - sf) * w) * s_in
    tok = _token_offsets(t, height, width, COLUMN_MAJOR)
    out = row + tok[:, None] * channels + c[None, :]
    mask = (t < length)[:, None] & cmask[None, :]
    tl.store(p_ptr + out, prefix, mask=mask)
    tl.store(s_ptr + out, suffix, mask=mask)


def decayed_sums(x: torch.Tensor, w: torch.Tensor, column_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, S) of float32 tokens ``x`` (B, H, W, C) scanned row- or column-major; ``w`` (C,) per token.

    Requires |w| * H * W <= 15 (``fits``): powers of d over the whole sequence stay in float32.
    """
    batch, height, width, channels = x.shape
    length = height * width
    x = x.contiguous()
    w = w.to(device=x.device, dtype=torch.float32).contiguous()
    n_chunks = triton.cdiv(length, CHUNK)
    grid = (n_chunks, batch * triton.cdiv(channels, BLOCK_C))  # axis 0 takes up to 2^31 - 1 chunks
    totals = torch.empty(batch, n_chunks, 2, channels, device=x.device, dtype=torch.float32)
    _chunk_totals_kernel[grid](x, w, totals, length, channels, height, width, n_chunks,
                               CHUNK=CHUNK, BLOCK_C=BLOCK_C, COLUMN_MAJOR=column_major)
    # What flows into chunk j: P_in = sum_{m<j} D^(j-1-m) F_m and S_in = sum_{m>j} D^(m-j-1) R_m,
    # D = d^CHUNK, as scaled cumulative sums (exponents bounded by |w| T) in float64.
    wd = w.to(torch.float64) * CHUNK
    j = torch.arange(n_chunks, device=x.device, dtype=torch.float64)[:, None]
    ending, starting = totals[:, :, 0].double(), totals[:, :, 1].double()
    prefix = torch.cumsum(ending * torch.exp(wd * j), dim=1) * torch.exp(-wd * j)
    suffix = torch.cumsum((starting * torch.exp(-wd * j)).flip(1), dim=1).flip(1) * torch.exp(wd * j)
    carries = torch.empty_like(totals)
    carries[:, 0, 0] = 0.0
    carries[:, 1:, 0] = prefix[:, :-1]
    carries[:, -1, 1] = 0.0
    carries[:, :-1, 1] = suffix[:, 1:]
    p_out = torch.empty_like(x)
    s_out = torch.empty_like(x)
    _chunk_sums_kernel[grid](x, w, carries, p_out, s_out, length, channels, height, width, n_chunks,
                             CHUNK=CHUNK, BLOCK_C=BLOCK_C, COLUMN_MAJOR=column_major)
    return p_out, s_out


def _weights(k: torch.Tensor) -> torch.Tensor:
    """exp(k - max over tokens) in float32, (B, H, W, C); the shift cancels in Eq. 8."""
    k = k.detach().float()
    return torch.exp(k - k.amax(dim=(1, 2), keepdim=True))


def _paired_sums(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, column_major: bool):
    """(P(x), S(x), P(y), S(y)) from one pass of the kernels over x and y side by side."""
    channels = x.shape[-1]
    prefix, suffix = decayed_sums(torch.cat([x, y], dim=-1), torch.cat([w, w]), column_major)
    return (prefix[..., :channels], suffix[..., :channels], prefix[..., channels:], suffix[..., channels:])


def _step_forward(a, v, w, u, column_major):
    """One Bi-WKV step: returns (y, D, e^u a, (Pn, Sn, Pd, Sd)) for weights a and values v (float32)."""
    sums = _paired_sums(a * v, a, w, column_major)
    pn, sn, pd, sd = sums
    own = torch.exp(u) * a
    den = pd + sd + own
    return (pn + sn + own * v) / den, den, own, sums


class _ReWKVTriton(torch.autograd.Function):
    """All M Bi-WKV steps of Re-WKV on CUDA tokens (B, H, W, C)."""

    @staticmethod
    def forward(ctx, k, v, decay, first):  # type: ignore[override]
        height, width = k.shape[1:3]
        length = height * width
        a = _weights(k)
        values = [v]
        current = v.float()
        for step in range(decay.shape[0]):
            w, u = decay[step].float() / length, first[step].float() / length
            current = _step_forward(a, current, w, u, step % 2 == 1)[0]
            values.append(current)
        if any(ctx.needs_input_grad[:4]):
            ctx.save_for_backward(k, decay, first, *values[:-1])
        return current.to(v.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        k, decay, first, *values = ctx.saved_tensors
        height, width = k.shape[1:3]
        length = height * width
        a = _weights(k)
        g = grad.float()
        dk_total = torch.zeros_like(a)
        d_decay = torch.zeros(decay.shape, dtype=torch.float64, device=k.device)
        d_first = torch.zeros(first.shape, dtype=torch.float64, device=k.device)
        for step in range(decay.shape[0] - 1, -1, -1):
            column_major = step % 2 == 1
            w, u = decay[step].float() / length, first[step].float() / length
            v = values[step].float()
            y, den, own, (pn, sn, pd, sd) = _step_forward(a, v, w, u, column_major)
            q = g / den
            r = q * y
            pq, sq, pr, sr = _paired_sums(q, r, w, column_major)
            eu = torch.exp(u)
            pall = pq + sq + eu * q
            rall = pr + sr + eu * r
            dk_total += a * (v * pall - rall)
            dims = (0, 1, 2)
            d_first[step] = (own * q * (v - y)).double().sum(dims) / length
            pairs = pn * sq - pd * sr + sn * pq - sd * pr
            d_decay[step] = -torch.exp(-w.double()) * pairs.double().sum(dims) / length
            g = a * pall
        return dk_total.to(k.dtype), g.to(values[0].dtype), d_decay.to(decay.dtype), d_first.to(first.dtype)


def re_wkv_triton(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Re-WKV on (B, H, W, C) tokens by the Triton kernels; requires ``fits`` for every step."""
    return _ReWKVTriton.apply(k, v, decay, first)
