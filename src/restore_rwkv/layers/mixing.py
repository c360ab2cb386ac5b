"""Spatial mix (Re-WKV attention) and channel mix of the R-RWKV block.

Both take and return token tensors laid out (B, H, W, C), which is (B, T, C) with
T = H * W in row-major order; convolutions see them as channels-last images.
"""

from __future__ import annotations

import torch
from torch import nn

from restore_rwkv.layers.omni_shift import OmniShift
from restore_rwkv.ops import bi_wkv


def omni_shift_tokens(shift: OmniShift, x: torch.Tensor) -> torch.Tensor:
    """Apply an Omni-Shift to (B, H, W, C) tokens, returning (B, H, W, C)."""
    return shift(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def re_wkv(
    k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Re-WKV (Eq. 9-10): ``len(decay)`` Bi-WKV passes, alternating H-scan and V-scan.

    Args:
        k, v: (B, H, W, C) tokens; the same ``k`` is used at every step.
        decay, first: (M, C) learnable ``w`` and ``u``; step j uses ``decay[j] / T`` and
            ``first[j] / T`` (T = H * W), as the reference implementation does.
    """
    batch, height, width, channels = k.shape
    length = height * width
    k_cols = None
    for step in range(decay.shape[0]):
        w, u = decay[step] / length, first[step] / length
        if step % 2 == 0:  # H-scan: row-major order
            v = bi_wkv(w, u, k.reshape(batch, length, channels), v.reshape(batch, length, channels), backend)
            v = v.view(batch, height, width, channels)
        else:  # V-scan: column-major order
            if k_cols is None:
                k_cols = k.transpose(1, 2).reshape(batch, length, channels)
            v_cols = v.transpose(1, 2).reshape(batch, length, channels)
            v = bi_wkv(w, u, k_cols, v_cols, backend).view(batch, width, height, channels).transpose(1, 2)
    return v


class SpatialMix(nn.Module):
    """Omni-Shift, K/V/R projections, Re-WKV, ``output(sigmoid(R) * wkv)``."""

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
        x = omni_shift_tokens(self.omni_shift, x)
        k, v, r = self.key(x), self.value(x), self.receptance(x)
        wkv = re_wkv(k, v, self.spatial_decay, self.spatial_first)
        return self.output(torch.sigmoid(r) * wkv)


class ChannelMix(nn.Module):
    """Omni-Shift, then ``sigmoid(R x) * V relu(K x)^2`` with a hidden width of ``hidden_rate * dim``."""

    def __init__(self, dim: int, hidden_rate: int = 4) -> None:
        super().__init__()
        hidden = int(hidden_rate * dim)
        self.omni_shift = OmniShift(dim)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = omni_shift_tokens(self.omni_shift, x)
        hidden = torch.square(torch.relu(self.key(x)))
        return torch.sigmoid(self.receptance(x)) * self.value(hidden)
