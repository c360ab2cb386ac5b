"""Spatial mix (Re-WKV attention) and channel mix of the R-RWKV block.

Both take and return token tensors laid out (B, H, W, C), which is (B, T, C) with
T = H * W in row-major order; convolutions see them as channels-last images.
"""

from __future__ import annotations

import torch
from torch import nn

from restore_rwkv.layers.omni_shift import OmniShift
from restore_rwkv.ops import re_wkv, tracing

# Tokens per chunk of the inference paths' per-token work: on CPU 16384 (16384 x 96 float32 =
# 6 MB stays in cache); on a GPU at least 2^20 (fewer kernel launches, bounded memory). The channel
# mix takes 4096 on CPU, so that its 4x-wide hidden layer (2 MB at C = 32) stays near the core's
# 1 MB L2 (its time at 512² x 32 and 256² x 96: -12 %, isolated; docs/performance.md).
INFERENCE_CHUNK = 16384
CHANNEL_MIX_CHUNK = 4096
_ACCELERATOR_CHUNK = 1 << 20


def _chunk(tokens: torch.Tensor, chunk: int) -> int:
    return chunk if tokens.device.type == "cpu" else max(chunk, _ACCELERATOR_CHUNK)


def omni_shift_tokens(shift: OmniShift, x: torch.Tensor) -> torch.Tensor:
    """Apply an Omni-Shift to (B, H, W, C) tokens, returning (B, H, W, C)."""
    return shift(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SpatialMix(nn.Module):
    """Omni-Shift, K/V/R projections, Re-WKV, ``output(sigmoid(R) * wkv)``."""

    inference_chunk = INFERENCE_CHUNK

    def __init__(self, dim: int, recurrence: int = 2) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.omni_shift = OmniShift(dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.spatial_decay = nn.Parameter(torch.randn(recurrence, dim))
        self.spatial_first = nn.Parameter(torch.randn(recurrence, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(omni_shift_tokens(self.omni_shift, x))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the Omni-Shift, on shifted tokens (B, H, W, C)."""
        if torch.is_grad_enabled() or tracing():  # compiled or exported: no in-place chunks
            wkv = re_wkv(self.key(x), self.value(x), self.spatial_decay, self.spatial_first)
            return self.output(torch.sigmoid(self.receptance(x)) * wkv)
        out = torch.zeros_like(x, memory_format=torch.contiguous_format)
        self.mix_into(x, out, torch.ones(()))
        return out

    @torch.no_grad()
    def mix_into(self, x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor) -> None:
        """Inference: ``residual += scale * mix(x)`` for contiguous (B, H, W, C) ``residual``.

        After Re-WKV, the gate, output projection and residual update run in chunks of
        ``inference_chunk`` tokens, so their intermediates stay in cache.
        """
        k, v = self.key(x), self.value(x)
        # v is not needed again: Re-WKV writes its result there.
        wkv = re_wkv(k, v, self.spatial_decay, self.spatial_first, out=v).reshape(-1, x.shape[-1])
        del k, v
        tokens, out = x.reshape(-1, x.shape[-1]), residual.view(-1, x.shape[-1])
        chunk = _chunk(tokens, self.inference_chunk)
        for start in range(0, tokens.shape[0], chunk):
            part = slice(start, start + chunk)
            gate = self.receptance(tokens[part]).sigmoid_().mul_(wkv[part])
            out[part].addcmul_(self.output(gate), scale)


class ChannelMix(nn.Module):
    """Omni-Shift, then ``sigmoid(R x) * V relu(K x)^2`` with a hidden width of ``hidden_rate * dim``.

    Without autograd the tokens go through in chunks of ``inference_chunk`` tokens, so the
    hidden activations (4x the width) never exist for the whole image at once.
    """

    inference_chunk = CHANNEL_MIX_CHUNK

    def __init__(self, dim: int, hidden_rate: int = 4) -> None:
        super().__init__()
        hidden = int(hidden_rate * dim)
        self.omni_shift = OmniShift(dim)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(omni_shift_tokens(self.omni_shift, x))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the Omni-Shift, on shifted tokens (B, H, W, C)."""
        if torch.is_grad_enabled() or tracing():  # compiled or exported: no in-place chunks
            return torch.sigmoid(self.receptance(x)) * self.value(squared_relu(self.key(x)))
        out = torch.zeros_like(x, memory_format=torch.contiguous_format)
        self.mix_into(x, out, torch.ones(()))
        return out

    @torch.no_grad()
    def mix_into(self, x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor) -> None:
        """Inference: ``residual += scale * mix(x)`` for contiguous (B, H, W, C) ``residual``, in
        chunks of ``inference_chunk`` tokens (the 4x-wide hidden layer never exists whole)."""
        tokens, out = x.reshape(-1, x.shape[-1]), residual.view(-1, x.shape[-1])
        chunk = _chunk(tokens, self.inference_chunk)
        for start in range(0, tokens.shape[0], chunk):
            part = slice(start, start + chunk)
            hidden = self.key(tokens[part]).relu_().square_()
            gated = self.receptance(tokens[part]).sigmoid_().mul_(self.value(hidden))
            out[part].addcmul_(gated, scale)


class _SquaredReLU(torch.autograd.Function):
    """relu(x)^2 that keeps only its input for backward (one activation instead of two)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.relu(x).square_()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.relu(x).mul_(2)


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2, differentiable, storing one tensor for backward (plain operations while traced)."""
    if tracing() or not torch.is_grad_enabled():
        return torch.relu(x).square()
    return _SquaredReLU.apply(x)
