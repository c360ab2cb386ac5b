"""What a training checkpoint holds besides the model: EMA weights, random states, safe saving.

Checkpoints are written with ``torch.save`` to a temporary name and renamed, and read back
with ``torch.load(weights_only=True)``: everything in them is tensors, numbers, strings,
lists and dicts (numpy's random state is stored as a list), so no pickle runs code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file


class ExponentialMovingAverage:
    """A float32 copy of a model's floating parameters and buffers, ``ema = d * ema + (1 - d) * current``.

    The decay of update n is ``min(decay, (1 + n) / (10 + n))``, so early averages are not
    dominated by the random initial weights (a short run's EMA follows the model).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for name, value in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].mul_(decay).add_(value.detach().float(), alpha=1 - decay)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (a model of the same architecture)."""
        state = model.state_dict()
        merged = {k: (self.shadow[k].to(v.dtype) if k in self.shadow else v) for k, v in state.items()}
        model.load_state_dict(merged)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore a saved average, onto ``device`` (the model's) when given."""
        self.decay, self.updates = float(state["decay"]), int(state.get("updates", 0))
        self.shadow = {k: v.float().to(device) if device is not None else v.float() for k, v in state["shadow"].items()}


def rng_state() -> dict:
    """The random states of this process (torch CPU and its current CUDA device, numpy's global, Python's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (ranks may see other GPU sets)
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``torch.save`` through a temporary file (a crash never leaves a half-written checkpoint)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(path, f"not a readable training checkpoint ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise InputError(path, "not a training checkpoint of restore-rwkv (no model or iteration)")
    return state
