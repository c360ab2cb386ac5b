"""Atomic writes: a file or folder appears under its final name only when it is complete.

Every writer of the package goes through :func:`atomic_file` or :func:`atomic_folder`, so an
error or Ctrl-C leaves nothing half-written, and what is written follows the user's umask
(the temporary names come from ``mkstemp``/``mkdtemp``, which create 0600/0700 entries).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from restore_rwkv.utils.errors import InputError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _full_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); it becomes ``path`` only if the block succeeds.

    The parent folder is created; on success the file gets ``0666 & ~umask``; on any error
    (or KeyboardInterrupt) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", suffix=_full_suffix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden folder beside ``path`` that becomes ``path`` when the block succeeds.

    ``path`` must not exist or be an empty folder, unless ``replace`` (then the old folder is
    removed only after the new one is complete). On error the staged folder is removed.
    Folders inside the stage keep the modes they were created with; the stage itself gets
    ``0777 & ~umask``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not replace:
        raise InputError(path, "output folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~current_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.replace(old)
            stage.replace(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.replace(path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def refuse_input_target(path: str | os.PathLike, source: str | os.PathLike | None) -> None:
    """Raise InputError when writing ``path`` would replace, or write inside, the input ``source``."""
    if source is None:
        return
    target, src = Path(path).resolve(), Path(source).resolve()
    if target == src:
        raise InputError(path, "refusing to overwrite the input")
    if src.is_dir() and src in target.parents:
        raise InputError(path, f"refusing to write inside the input folder {source}")
