"""Peer networks for fair comparisons, built from MONAI's implementations (``pip install 'restore-rwkv[peers]'``).

Each peer is wrapped like Restore-RWKV: a body network, one 3 x 3 output convolution and the global
residual (output = input + correction), so ``model.zero_init_output`` and the whole training recipe
apply to it unchanged. MONAI is imported only when a peer is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from restore_rwkv.models.restore_rwkv import pad_to_multiple


def _monai_nets():  # MONAI exports BasicUNet at the top level, Restormer only in its module
    try:
        from monai.networks import nets
    except ImportError:
        raise ImportError("peer models need MONAI: pip install 'restore-rwkv[peers]'") from None
    return nets


class ResidualPeer(nn.Module):
    """``input + output(body(input))``; the input is padded to ``multiple`` for the body and cropped back."""

    def __init__(self, body: nn.Module, features: int, channels: int = 1, multiple: int = 1) -> None:
        super().__init__()
        self.body = body
        self.output = nn.Conv2d(features, channels, kernel_size=3, padding=1, bias=True)
        self.residual = True
        self.multiple = int(multiple)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        features = self.body(pad_to_multiple(image, self.multiple))
        return image + self.output(features)[..., :height, :width]


def restormer_peer(in_channels: int = 1, dim: int = 16, num_blocks: tuple[int, ...] = (2, 2, 2, 2),
                   heads: tuple[int, ...] = (1, 2, 4, 8), num_refinement_blocks: int = 2,
                   ffn_expansion_factor: float = 2.66, **kwargs: Any) -> ResidualPeer:
    """MONAI's Restormer (transposed-attention transformer) at the light model's widths and depths."""
    body = _monai_nets().restormer.Restormer(spatial_dims=2, in_channels=in_channels, out_channels=in_channels, dim=dim,
                                   num_blocks=tuple(num_blocks), heads=tuple(heads),
                                   num_refinement_blocks=num_refinement_blocks,
                                   ffn_expansion_factor=ffn_expansion_factor, **kwargs)
    body.output = nn.Identity()  # the wrapper's output convolution takes the 2 * dim refined features
    return ResidualPeer(body, 2 * dim, in_channels, multiple=2 ** (len(tuple(num_blocks)) - 1))


def unet_peer(in_channels: int = 1, features: tuple[int, ...] = (24, 24, 48, 96, 192, 24), **kwargs: Any) -> ResidualPeer:
    """MONAI's BasicUNet (a plain convolutional U-Net, four downsamplings) of about the light model's size."""
    body = _monai_nets().BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=in_channels,
                                   features=tuple(features), **kwargs)
    body.final_conv = nn.Identity()  # the wrapper's output convolution takes the last decoder features
    return ResidualPeer(body, int(features[-1]), in_channels, multiple=16)
