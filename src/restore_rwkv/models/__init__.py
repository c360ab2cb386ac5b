"""Restore-RWKV models, named variants and weight loading."""

from restore_rwkv.models.card import (
    ModelCard,
    load_model,
    load_model_card,
    resolve_weights,
    save_model_with_card,
    shipped_models,
)
from restore_rwkv.models.pretrained import load_pretrained, load_state_dict_file, save_state_dict
from restore_rwkv.models.registry import create_model, list_models, register_model
from restore_rwkv.models.restore_rwkv import RestoreRWKV, pad_to_multiple, reparameterize_model

__all__ = [
    "ModelCard",
    "RestoreRWKV",
    "create_model",
    "list_models",
    "load_model",
    "load_model_card",
    "load_pretrained",
    "load_state_dict_file",
    "pad_to_multiple",
    "register_model",
    "reparameterize_model",
    "resolve_weights",
    "save_model_with_card",
    "save_state_dict",
    "shipped_models",
]
