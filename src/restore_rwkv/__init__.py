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

# The in-memory and file entry points for restoring scans, imported on first use (they bring the I/O
# libraries: pydicom, nibabel, ...), so ``import restore_rwkv`` stays light.
_LAZY = {"restore_array": "restore_rwkv.inference.files", "restore_file": "restore_rwkv.inference.files"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'restore_rwkv' has no attribute {name!r}")


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
    "restore_array",
    "restore_file",
    "save_state_dict",
    "tune_cpu_allocator",
]
