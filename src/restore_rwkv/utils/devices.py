"""Device choice and mixed precision, shared by training, evaluation and restoring."""

from __future__ import annotations

import contextlib

import torch

from restore_rwkv.utils.errors import InputError

# precision name -> autocast dtype (None: plain float32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU; a named device must be available (InputError otherwise).

    CUDA is this process's GPU (``local_rank`` under torchrun).
    """
    if isinstance(name, torch.device):
        return name
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if name == "auto":
        name = next(n for n in ("cuda", "mps", "cpu") if available[n])
    if name not in available:
        raise InputError(None, f"unknown device {name!r}; expected auto, cpu, cuda or mps")
    if not available[name]:
        raise InputError(None, f"device {name} is not available on this machine")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``'s type."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
