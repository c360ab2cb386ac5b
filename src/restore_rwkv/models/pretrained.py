"""Reading and writing model weights safely (no unpickling of arbitrary objects)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

# Keys under which training scripts commonly nest the weights, most preferred first.
_NESTED_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a PyTorch file (``weights_only=True``).

    Nested checkpoints (``{"state_dict": ...}``, BasicSR's ``params``/``params_ema``) are
    unwrapped and a DistributedDataParallel ``module.`` prefix is removed.

    Raises:
        InputError: ``"<path>: <problem>"`` where the file is missing, unreadable or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or pickled with foreign objects
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__}: {first[:300]})") from exc
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_pretrained(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place) and return it.

    Raises:
        InputError: ``"<path>: <problem>"`` as :func:`load_state_dict_file`, or where the weights do not fit.
    """
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(path, f"weights do not fit {type(model).__name__}: {detail[:500]}") from exc
    return model


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` to ``.safetensors`` (recommended) or a ``.pt``/``.pth`` file.

    Written to a temporary file first and renamed, so a failed save leaves nothing behind.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return path
