"""Named Restore-RWKV variants: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from restore_rwkv.models.restore_rwkv import RestoreRWKV

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``factory`` under its function name."""
    _REGISTRY[factory.__name__] = factory
    return factory


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(name: str, pretrained: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace its constructor arguments.

    ``pretrained`` is a local checkpoint file (safetensors or a PyTorch state dict),
    loaded with ``strict=True``; nothing is ever downloaded.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _REGISTRY[name](**overrides)
    if pretrained is not None:
        from restore_rwkv.models.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model


@register_model
def restore_rwkv(**overrides: Any) -> RestoreRWKV:
    """The paper's configuration: C = 48, N = (4, 6, 6, 8), 4 refinement blocks, M = 2 (28.0 M parameters)."""
    config: dict[str, Any] = dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, recurrence=2)
    return RestoreRWKV(**{**config, **overrides})


@register_model
def restore_rwkv_light(**overrides: Any) -> RestoreRWKV:
    """A light variant (1.24 M parameters): C = 16, N = (2, 2, 2, 2), 2 refinement blocks, M = 2.

    The paper reports a 1.16 M-parameter variant without publishing its shape; this one
    keeps the paper's 4-level layout and recurrence and shrinks width and depth.
    """
    config: dict[str, Any] = dict(dim=16, num_blocks=(2, 2, 2, 2), num_refinement_blocks=2, recurrence=2)
    return RestoreRWKV(**{**config, **overrides})


@register_model
def restormer_light_monai(**overrides: Any) -> nn.Module:
    """Peer: MONAI's Restormer at the light model's shape (C = 16, N = (2, 2, 2, 2), 2 refinement blocks,
    heads 1/2/4/8) with the same output convolution and global residual; needs the ``peers`` extra."""
    from restore_rwkv.models.peers import restormer_peer

    return restormer_peer(**overrides)


@register_model
def unet_light_monai(**overrides: Any) -> nn.Module:
    """Peer: MONAI's BasicUNet (features 24/24/48/96/192/24) with the same output convolution and
    global residual; needs the ``peers`` extra."""
    from restore_rwkv.models.peers import unet_peer

    return unet_peer(**overrides)
