"""NumPy arrays (.npy, .npz; never unpickled) and the reference code's pickled ``.bin`` (opt-in)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file, refuse_input_target

ARRAY_SUFFIXES = (".npy", ".npz")


def read_array(path: str | os.PathLike, key: str | None = None, mmap: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """NPY, or one array of an NPZ (``key``, else ``image``, else the first); never unpickles.

    ``mmap=True`` maps an ``.npy`` file read-only instead of reading it (slices of a large
    volume are then read on access).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
            meta = ImageMeta(source=path, format="npy")
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                if not keys:
                    raise InputError(path, "NPZ archive holds no arrays")
                chosen = key or ("image" if "image" in keys else keys[0])
                if chosen not in keys:
                    raise InputError(path, f"NPZ archive has no array {chosen!r} (has {keys})")
                data = archive[chosen]
            meta = ImageMeta(source=path, format="npz", extra={"keys": keys, "key": chosen})
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a readable NumPy file ({type(exc).__name__}: {exc})") from None
    if data.dtype == object:
        raise InputError(path, "array of Python objects; only numeric arrays are read")
    meta.dtype, meta.slice_axis = data.dtype, (0 if data.ndim == 3 else None)
    return data, meta


def write_array(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write ``.npy`` (or ``.npz`` with the array under ``image``)."""
    path = Path(path)
    refuse_input_target(path, None if meta is None else meta.source)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            if path.suffix.lower() == ".npz":
                np.savez_compressed(fh, image=np.asarray(array))
            else:
                np.save(fh, np.asarray(array), allow_pickle=False)
    return path


def read_reference_bin(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """A training file of the reference implementation: a pickled 2-D array (or a dict holding one).

    Unpickling can run arbitrary code, so it happens only with ``allow_pickle=True``.
    """
    path = Path(path)
    if not allow_pickle:
        raise InputError(path, "reference .bin files are Python pickles, which can run code; "
                               "pass allow_pickle=True only for files you trust")
    import pickle

    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - explicit opt-in above
    except Exception as exc:
        raise InputError(path, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        arrays = [v for v in obj.values() if isinstance(v, np.ndarray)]
        obj = arrays[0] if len(arrays) == 1 else obj.get("image", obj.get("img"))
    if hasattr(obj, "numpy"):
        obj = obj.numpy()
    if not isinstance(obj, np.ndarray) or obj.dtype == object:
        raise InputError(path, f"pickle holds {type(obj).__name__}, not a numeric array")
    return obj, ImageMeta(source=path, format="bin", dtype=obj.dtype, slice_axis=0 if obj.ndim == 3 else None)
