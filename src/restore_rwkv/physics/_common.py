"""The degradation protocol shared by the simulators, and shape and random-number helpers.

Every simulator is a :class:`Degradation`: ``degrade(hq, seed) -> lq`` with ``seed`` an
``int`` (or None for fresh entropy), ``hq`` a torch tensor or a numpy array shaped (H, W),
(B, H, W) or (B, 1, H, W), and ``lq`` of the same kind (numpy in -> numpy out, torch in ->
torch out), shape and floating dtype (integer input gives float32). One seed covers a whole
batch; the same seed gives the same output.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from typing import Callable, TypeVar, Union

import numpy as np
import torch

Image = TypeVar("Image", torch.Tensor, np.ndarray)
Seed = Union[int, None]


def as_batch(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Size]:
    """View (H, W), (B, H, W) or (B, 1, H, W) as (B, H, W); returns it and the original shape."""
    if not isinstance(x, torch.Tensor):
        x = to_tensor(x)
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


def to_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A torch view or copy of ``x`` (numpy arrays of any stride or byte order are accepted)."""
    if isinstance(x, torch.Tensor):
        return x
    array = np.asarray(x)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(array))


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of an image computed from input of ``dtype``: the same if floating, else float32."""
    return dtype if dtype.is_floating_point else torch.float32


def like_input(out: torch.Tensor, hq: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``out`` (shaped like ``hq``) as the same kind as ``hq``: numpy array or tensor, floating dtype kept."""
    if isinstance(hq, torch.Tensor):
        return out.to(output_dtype(hq.dtype))
    array = out.detach().cpu().numpy()
    kind = np.asarray(hq).dtype
    return array.astype(kind if kind.kind == "f" else np.float32, copy=False)


def check_seed(seed: Seed) -> int | None:
    """``seed`` as an int >= 0 or None; anything else (e.g. a Generator) raises TypeError."""
    if seed is None:
        return None
    if isinstance(seed, bool):
        raise TypeError("seed must be an int or None, not bool")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}") from None
    if value < 0:
        raise ValueError(f"seed must be >= 0, got {value}")
    return value


def make_generator(seed: Seed, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator from a seed (fresh entropy when None)."""
    seed = check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def make_rng(seed: Seed) -> np.random.Generator:
    """A numpy generator from a seed (used where torch has no seeded sampler, e.g. binomial)."""
    return np.random.default_rng(check_seed(seed))


def apply_batched(hq: Image, fn: Callable[[torch.Tensor], torch.Tensor]) -> Image:
    """Run ``fn`` on ``hq`` viewed as a (B, H, W) tensor and return the result like ``hq``."""
    x, shape = as_batch(hq)
    return like_input(restore_shape(fn(x), shape), hq)


class Degradation(ABC):
    """A seedable simulator HQ -> LQ: ``lq = degradation(hq, seed)``.

    ``hq`` is a torch tensor or numpy array shaped (H, W), (B, H, W) or (B, 1, H, W) in the
    modality's physical units; ``lq`` has the same kind, shape and floating dtype (float32 for
    integer input). ``seed`` is an ``int`` >= 0, or None for fresh entropy; one seed covers the
    whole batch and the same seed gives the same ``lq``.
    """

    def __call__(self, hq: Image, seed: Seed = None) -> Image:
        seed = check_seed(seed)
        return apply_batched(hq, lambda x: self.degrade_batch(x, seed))

    @abstractmethod
    def degrade_batch(self, x: torch.Tensor, seed: int | None) -> torch.Tensor:
        """LQ of a (B, H, W) tensor (any dtype) as a (B, H, W) tensor; cast by ``__call__``."""
