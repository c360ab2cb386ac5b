"""Self-ensemble: a model averaged over rotations and flips of its input, each undone on its output.

Restoration networks are not exactly equivariant to the square's eight symmetries (Re-WKV scans rows
end to end, convolution kernels are not symmetric), so the outputs for a rotated or flipped input,
turned back, differ a little and their mean is a better estimate (the "x8" self-ensemble of EDSR and
SwinIR). It costs one forward pass per transform; docs/inference.md ("Self-ensemble") gives the gain
measured on the demo's validation and test splits. ``SELF_ENSEMBLE_SIZES`` are the subgroups it can
average over: 1 (off), 2 (the half turn), 4 (the four quarter turns) and 8 (turns and their mirror
images), so the mean is equivariant to the transforms it averages over.
"""

from __future__ import annotations

import torch
from torch import nn

from restore_rwkv.utils.errors import InputError

# (quarter turns, then mirrored left-right) in the order the sizes take them: each prefix is a group
TRANSFORMS = ((0, False), (2, False), (1, False), (3, False), (0, True), (2, True), (1, True), (3, True))
SELF_ENSEMBLE_SIZES = (1, 2, 4, 8)


def check_self_ensemble(size: int) -> int:
    """``size`` as an int when it is one of ``SELF_ENSEMBLE_SIZES``; InputError otherwise."""
    if isinstance(size, bool) or size not in SELF_ENSEMBLE_SIZES:
        raise InputError(None, f"--self-ensemble must be one of {', '.join(map(str, SELF_ENSEMBLE_SIZES))}; "
                               f"got {size!r}")
    return int(size)


class SelfEnsemble(nn.Module):
    """``module`` run on ``size`` rotated/flipped copies of each (N, C, H, W) input, each output turned
    back, then averaged (summed in at least float32). Non-square inputs work for models that
    take either orientation. ``module`` is the wrapped model, as in DistributedDataParallel."""

    def __init__(self, module: nn.Module, size: int = 8):
        super().__init__()
        self.module = module
        self.size = check_self_ensemble(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for turns, mirrored in TRANSFORMS[:self.size]:
            view = torch.rot90(images, turns, (-2, -1))
            view = view.flip(-1) if mirrored else view
            out = self.module(view)
            out = out.flip(-1) if mirrored else out
            out = torch.rot90(out, -turns, (-2, -1))
            out = out.to(torch.promote_types(out.dtype, torch.float32))  # autocast's halves summed in float32
            total = out if total is None else total + out
        return total / self.size


def with_self_ensemble(model: nn.Module, size: int = 1) -> nn.Module:
    """``model`` itself for size 1, else :class:`SelfEnsemble` over it (an InputError for other sizes, and
    for a model that already is one: an ensemble of ensembles would run size x size passes)."""
    size = check_self_ensemble(size)
    if size > 1 and isinstance(model, SelfEnsemble):
        raise InputError(None, f"the model already averages {model.size} copies; --self-ensemble {size} would "
                               f"run {model.size * size} passes per slice")
    return model if size == 1 else SelfEnsemble(model, size)


def inner_model(model: nn.Module) -> nn.Module:
    """The network inside any :class:`SelfEnsemble` wrappers."""
    while isinstance(model, SelfEnsemble):
        model = model.module
    return model
