"""The R-RWKV block and the U-Net resampling layers."""

from __future__ import annotations

import torch
from torch import nn

from restore_rwkv.layers.mixing import ChannelMix, SpatialMix, omni_shift_tokens
from restore_rwkv.ops import tracing


class RRWKVBlock(nn.Module):
    """``x + gamma1 * SpatialMix(LN1(x))``, then ``x + gamma2 * ChannelMix(LN2(x))``, on (B, C, H, W)."""

    def __init__(self, dim: int, recurrence: int = 2, hidden_rate: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = SpatialMix(dim, recurrence)
        self.ffn = ChannelMix(dim, hidden_rate)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Apply the block; with ``inplace`` (inference only) ``x`` itself is updated and returned."""
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view when x is channels-last
        if torch.is_grad_enabled() or tracing():  # compiled or exported: functional
            tokens = tokens + self.gamma1 * self.att(self.ln1(tokens))
            tokens = tokens + self.gamma2 * self.ffn(self.ln2(tokens))
        else:  # inference: update in place (on a copy unless the caller gives x away)
            if not (inplace and tokens.is_contiguous()):
                tokens = tokens.clone(memory_format=torch.contiguous_format)
            # The normalised tokens are dropped as soon as the Omni-Shift has read them; each mix
            # adds its scaled output into the tokens chunk by chunk.
            self.att.mix_into(omni_shift_tokens(self.att.omni_shift, self.ln1(tokens)), tokens, self.gamma1)
            self.ffn.mix_into(omni_shift_tokens(self.ffn.omni_shift, self.ln2(tokens)), tokens, self.gamma2)
        return tokens.permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """3x3 conv to half the channels, then PixelUnshuffle(2): (C, H, W) -> (2C, H/2, W/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv to double the channels, then PixelShuffle(2): (C, H, W) -> (C/2, 2H, 2W)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
