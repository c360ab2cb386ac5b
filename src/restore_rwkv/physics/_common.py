"""Shape and random-number helpers shared by the degradations."""

from __future__ import annotations

import numpy as np
import torch


def as_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """View (H, W), (B, H, W) or (B, 1, H, W) as (B, H, W); returns it and the original shape."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    shape = x.shape
    if x.dim() == 2:
        return x[None], shape
    if x.dim() == 3:
        return x, shape
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0], shape
    raise ValueError(f"expected images shaped (H, W), (B, H, W) or (B, 1, H, W); got {tuple(shape)}")


def restore_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x.reshape(shape)


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator from a seed (fresh entropy when None)."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy generator from a seed (used where torch has no seeded sampler, e.g. binomial)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
