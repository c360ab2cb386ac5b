"""PNG (8/16-bit) and TIFF through Pillow and tifffile; values as stored, no geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from restore_rwkv.data.io.meta import ImageMeta
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file, refuse_input_target

PICTURE_SUFFIXES = (".png", ".tif", ".tiff")


def read_picture(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """PNG (8/16-bit grey) or TIFF (any bit depth, one page or a stack), values as stored."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                data = np.asarray(image)
            if image.mode == "I" and data.max(initial=0) <= 65535 and data.min(initial=0) >= 0:
                data = data.astype(np.uint16)  # Pillow widens 16-bit PNG to int32
            fmt = "png"
        else:
            import tifffile

            data = tifffile.imread(path)
            fmt = "tiff"
    except Exception as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3 and data.shape[-1] in (3, 4) and fmt == "png":
        raise InputError(path, "colour pictures are not supported; save a single-channel image")
    return data, ImageMeta(source=path, format=fmt, slice_axis=0 if data.ndim == 3 else None, dtype=data.dtype)


def write_picture(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write a 2-D uint8/uint16 array as PNG, or any 2-D/3-D array as TIFF, values unchanged."""
    path = Path(path)
    refuse_input_target(path, None if meta is None else meta.source)
    array = np.asarray(array)
    if path.suffix.lower() == ".png" and (array.ndim != 2 or array.dtype not in (np.uint8, np.uint16)):
        raise InputError(path, f"PNG holds 2-D uint8 or uint16 images, got {array.dtype} {array.shape}")
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".png":
            from PIL import Image

            Image.fromarray(array).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, array, photometric="minisblack")  # grey slices, never RGB planes
    return path


def write_preview(path: str | os.PathLike, image: np.ndarray, modality: str | None = None,
                  window: tuple[float, float] | None = None) -> Path:
    """An 8-bit PNG of a 2-D image in physical units, through the modality's preview window."""
    from restore_rwkv.modality import get_convention

    image = np.asarray(image, dtype=np.float64)
    if window is None:
        window = get_convention(modality).preview_window if modality else (float(image.min()), float(image.max()))
    lo, hi = window
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return write_picture(path, np.rint(scaled * 255).astype(np.uint8))
