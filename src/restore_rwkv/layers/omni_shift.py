"""Omni-Shift: a re-parameterisable multi-scale depth-wise token shift."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class FusedKernel(nn.Module):
    """Holds the fused 5x5 depth-wise kernel of an :class:`OmniShift` as a buffer.

    A buffer, not a parameter, so that it is never trained (no unused parameters
    under DistributedDataParallel); it is still saved under the reference name
    ``...omni_shift.conv5x5_reparam.weight``. Loading a state dict that lacks it is
    not an error: a fused :class:`OmniShift` recomputes the kernel from the loaded branches.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(dim, 1, 5, 5))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args: Any) -> None:
        if prefix + "weight" not in state_dict:
            return  # optional: the reference's checkpoints may or may not carry it
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)


class OmniShift(nn.Module):
    """``alpha0 * x + alpha1 * dw1x1(x) + alpha2 * dw3x3(x) + alpha3 * dw5x5(x)`` on (B, C, H, W).

    Because every branch is linear and depth-wise, the sum equals one 5x5 depth-wise
    convolution whose kernel is the alpha-weighted sum of the zero-padded branch kernels
    (the identity being a centred 1). Training evaluates that single convolution with
    the kernel rebuilt from the live parameters on each call (same result as four branches,
    one pass over the image); :meth:`reparameterize` freezes the kernel for inference.

    A fused module that loads a state dict carrying its branches ignores any stored 5x5 kernel and
    recomputes it from them (the reference saves a stale one in training mode); only where a state dict
    holds the fused kernel without the branches (``strict=False``) is that kernel used as loaded.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, kernel_size=1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(4))
        self.conv5x5_reparam = FusedKernel(dim)
        self.fused = False
        self._branches_loaded = False
        self._register_state_dict_hook(_store_current_kernel)
        self.register_load_state_dict_post_hook(_refresh_fused_kernel)

    def combined_kernel(self) -> torch.Tensor:
        """The (C, 1, 5, 5) kernel equal to the four branches, differentiable in their parameters."""
        identity = torch.zeros_like(self.conv5x5.weight)
        identity[:, :, 2, 2] = 1.0
        return (
            self.alpha[0] * identity
            + self.alpha[1] * F.pad(self.conv1x1.weight, (2, 2, 2, 2))
            + self.alpha[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1))
            + self.alpha[3] * self.conv5x5.weight
        )

    @torch.no_grad()
    def reparameterize(self) -> "OmniShift":
        """Freeze the current branches into the single 5x5 kernel used from now on."""
        self.conv5x5_reparam.weight.copy_(self.combined_kernel())
        self.fused = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.conv5x5_reparam.weight if self.fused else self.combined_kernel()
        return F.conv2d(x, kernel.to(x.dtype), padding=2, groups=x.shape[1])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args: Any) -> None:
        # Runs before the children load; _refresh_fused_kernel runs after them.
        names = ("alpha", "conv1x1.weight", "conv3x3.weight", "conv5x5.weight")
        self._branches_loaded = any(prefix + name in state_dict for name in names)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"


def _store_current_kernel(module: OmniShift, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Save the kernel that the branches define now, so a checkpoint is consistent either way."""
    if not module.fused:
        state_dict[prefix + "conv5x5_reparam.weight"] = module.combined_kernel().detach()


def _refresh_fused_kernel(module: OmniShift, incompatible_keys: Any) -> None:
    """After a load: a fused module's 5x5 kernel follows the branches just loaded (not a stale stored one)."""
    if module.fused and module._branches_loaded:
        module.reparameterize()
    module._branches_loaded = False
