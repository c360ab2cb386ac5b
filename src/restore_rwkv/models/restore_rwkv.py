"""Restore-RWKV: a 4-level U-Net of R-RWKV blocks (Yang et al., IEEE JBHI 2026)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from restore_rwkv.layers import Downsample, OmniShift, RRWKVBlock, Upsample
from restore_rwkv.ops import tracing

_MULTIPLE = 8  # three 2x downsamplings


class RestoreRWKV(nn.Module):
    """Restore-RWKV for 2D images (B, in_channels, H, W) -> (B, out_channels, H, W).

    Parameter names follow the authors' reference implementation, so its checkpoints
    load with ``strict=True`` and ours load into it. Any H and W are accepted: the input
    is padded (reflect) to a multiple of 8 and the output cropped back. Note that the
    attention decay is divided by the token count T of each level, as in the reference,
    so a model's behaviour depends on the (padded) image size it runs at.

    Args:
        in_channels, out_channels: image channels; with equal counts the network predicts
            a residual that is added to the input (as in the paper).
        dim: width C of level 1; levels 2-4 use 2C, 4C, 8C.
        num_blocks: R-RWKV blocks per level (encoder levels 1-3 and the latent level);
            decoder levels 3-1 mirror levels 3-1.
        num_refinement_blocks: blocks after decoder level 1 (width 2C).
        recurrence: M, Bi-WKV passes per spatial mix (alternating H- and V-scans).
        hidden_rate: channel-mix expansion.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        recurrence: int = 2,
        hidden_rate: int = 4,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 entries (3 encoder levels and the latent); got {num_blocks}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.residual = in_channels == out_channels
        self.gradient_checkpointing = False

        def level(width: int, count: int) -> nn.Sequential:
            return nn.Sequential(*[RRWKVBlock(width, recurrence, hidden_rate) for _ in range(count)])

        n1, n2, n3, n4 = num_blocks
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=True)
        self.encoder_level1 = level(dim, n1)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, n2)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, n3)
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, n4)
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=True)
        self.decoder_level3 = level(dim * 4, n3)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=True)
        self.decoder_level2 = level(dim * 2, n2)
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = level(dim * 2, n1)
        self.refinement = level(dim * 2, num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"RestoreRWKV expects (B, {self.in_channels}, H, W) input; got shape {tuple(image.shape)}"
            )
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, _MULTIPLE).contiguous(memory_format=torch.channels_last)

        run = self._run_level
        enc1 = run(self.encoder_level1, self.patch_embed(padded))
        enc2 = run(self.encoder_level2, self.down1_2(enc1))
        enc3 = run(self.encoder_level3, self.down2_3(enc2))
        latent = run(self.latent, self.down3_4(enc3))

        dec3 = run(self.decoder_level3, self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = run(self.decoder_level2, self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = run(self.decoder_level1, torch.cat([self.up2_1(dec2), enc1], 1))
        out = self.output(run(self.refinement, dec1))
        if self.residual:
            out = out + padded
        return out[:, :, :height, :width].contiguous()

    def set_gradient_checkpointing(self, enabled: bool = True) -> "RestoreRWKV":
        """Recompute each block's activations in backward instead of storing them (training memory)."""
        self.gradient_checkpointing = enabled
        return self

    def _run_level(self, level: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and not tracing():
            # Every level input is a fresh tensor that nothing else holds: update it in place.
            for block in level:
                x = block(x, inplace=True)
            return x
        if not self.gradient_checkpointing:
            return level(x)
        for block in level:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x

    def reparameterize(self) -> "RestoreRWKV":
        """Fuse every Omni-Shift in place (see :func:`reparameterize_model` for a fused copy)."""
        for module in self.modules():
            if isinstance(module, OmniShift):
                module.reparameterize()
        return self


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W at the bottom/right to a multiple of ``multiple`` (reflect, or replicate
    where the image is too small to reflect)."""
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` in eval mode with every Omni-Shift fused into one 5x5 kernel.

    The original model is left untouched (it can go on training).
    """
    fused = copy.deepcopy(model)
    for module in fused.modules():
        if isinstance(module, OmniShift):
            module.reparameterize()
    return fused.eval()
