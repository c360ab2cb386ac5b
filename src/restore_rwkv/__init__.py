"""restore-rwkv: Restore-RWKV for medical image restoration, on every device."""

from restore_rwkv.models import (
    RestoreRWKV,
    create_model,
    list_models,
    load_pretrained,
    reparameterize_model,
    save_state_dict,
)
from restore_rwkv.ops import bi_wkv, re_wkv
from restore_rwkv.utils.runtime import release_free_memory, tune_cpu_allocator

__version__ = "0.1.0"

__all__ = [
    "RestoreRWKV",
    "__version__",
    "bi_wkv",
    "create_model",
    "list_models",
    "load_pretrained",
    "re_wkv",
    "reparameterize_model",
    "release_free_memory",
    "save_state_dict",
    "tune_cpu_allocator",
]
