"""Atomic writes: a file or folder appears under its final name only when it is complete.

Every writer of the package goes through :func:`atomic_file` or :func:`atomic_folder`, so an
error or Ctrl-C leaves nothing half-written, and what is written follows the user's umask
(the temporary names come from ``mkstemp``/``mkdtemp``, which create 0600/0700 entries).

Temporary names carry their owner, ``.<name>.partial-<pid>@<host>-<random>``, so a later
run can tell a leftover of a killed process (SIGKILL, power loss) from a write in progress
and remove it (:func:`remove_stale_partials`, called by both helpers before they start).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from restore_rwkv.utils.errors import InputError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove leftovers of interrupted writes of ``path`` by dead processes of this host; returns them.

    Leftovers are the siblings ``.<name>.partial-<pid>@<host>-*`` and ``.<name>.old-<pid>@<host>``
    whose process no longer runs. Entries of other hosts (a shared file system) or of live
    processes are left alone.
    """
    path = Path(path)
    parent, host = path.parent, socket.gethostname()
    if not parent.is_dir():
        return []
    pattern = re.compile(r"(\d+)@(.*)")
    removed = []
    for kind in ("partial-", "old-"):
        prefix = f".{path.name}.{kind}"
        try:
            candidates = [p for p in parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            return removed
        for candidate in candidates:
            match = pattern.match(candidate.name[len(prefix):])
            if not match or not match.group(2).startswith(host) or _process_alive(int(match.group(1))):
                continue
            rest = match.group(2)[len(host):]
            if kind == "partial-" and not re.fullmatch(r"-[a-z0-9_]{8}(\..*)?", rest):
                continue
            if kind == "old-" and (rest or not path.exists()):  # without ``path``, the old one is all there is
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def check_writable_target(path: str | os.PathLike, folder: bool = True) -> None:
    """Raise InputError (one line) unless ``path`` can be created: checked before any work starts.

    Refused: ``path`` is a file where a folder is wanted (or the reverse), a component of its
    parent is a file, or the nearest existing parent folder does not let us create entries
    (checked by creating and removing a probe folder, so read-only mounts are caught too).
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise InputError(path, "exists and is a file, not a folder")
        if not folder and path.is_dir():
            raise InputError(path, "exists and is a folder, not a file")
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise InputError(path, f"{ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(path, f"cannot be created: {ancestor} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".restore-rwkv-probe-", dir=ancestor)
        os.rmdir(probe)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            reason = "no permission to write there"
        elif exc.errno == errno.EROFS:
            reason = "read-only file system"
        raise InputError(path, f"cannot be created in {ancestor}: {reason}") from None


def _os_error(path: Path, exc: OSError) -> InputError:
    """A one-line InputError for an OSError met while creating ``path``."""
    reason = exc.strerror or type(exc).__name__
    return InputError(path, f"cannot write: {reason}")


# errors of the target's storage, not of the data: a full disk or quota, a file-size limit, a read-only or
# failing file system
_STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _created_parents(path: Path) -> list[Path]:
    """The missing parent folders of ``path``, deepest first (those ``mkdir(parents=True)`` will create)."""
    created = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    return created


def _storage_error(path: Path, exc: BaseException) -> InputError | None:
    """The one-line InputError naming ``path`` for a storage failure while writing it, else None.

    Writers may wrap the operating system's error (pydicom re-raises it with the tag it was writing
    and no errno), so the chain of causes is searched."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRORS:
            return _os_error(path, exc)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _full_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); it becomes ``path`` only if the block succeeds.

    The parent folder is created; on success the file gets ``0666 & ~umask``; on any error
    (or KeyboardInterrupt) the temporary file is removed, and so are the parent folders this call
    created, and ``path`` is left as it was. A storage failure (full disk, quota, file-size limit,
    read-only file system) becomes an InputError naming ``path``.
    """
    path = Path(path)
    created = _created_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-{_owner_tag()}", suffix=_full_suffix(path),
                                    dir=path.parent)
    except OSError as exc:
        _remove_empty(created)
        raise _os_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        storage = _storage_error(path, exc)
        if storage is not None:
            raise storage from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden folder beside ``path`` that becomes ``path`` when the block succeeds.

    ``path`` must not exist or be an empty folder, unless ``replace`` (then the old folder is
    removed only after the new one is complete). On error the staged folder is removed, and so
    are the parent folders this call created; a storage failure (full disk, quota, file-size
    limit, read-only file system) becomes an InputError naming ``path``.
    Folders inside the stage keep the modes they were created with; the stage itself gets
    ``0777 & ~umask``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not replace:
        raise InputError(path, "output folder exists and is not empty")
    created = _created_parents(path)  # removed again if the block fails
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{_owner_tag()}", dir=path.parent))
    except OSError as exc:
        _remove_empty(created)
        raise _os_error(path, exc) from None
    try:
        yield stage
        os.chmod(stage, 0o777 & ~current_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{_owner_tag()[:-1]}")
            path.replace(old)
            stage.replace(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.replace(path)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        storage = _storage_error(path, exc)
        if storage is not None:
            raise storage from None
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def refuse_replacing_foreign_folder(path: str | os.PathLike, markers: tuple[str, ...], writer: str) -> None:
    """Raise InputError when the non-empty folder ``path`` holds none of the files ``markers`` that ``writer``
    leaves in its outputs: ``--overwrite`` replaces only a folder that command wrote."""
    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()) and not any((folder / name).is_file() for name in markers):
        raise InputError(path, f"is not a folder written by {writer} (no {' or '.join(markers)}); "
                               "refusing to replace it with --overwrite")


def refuse_target_holding(path: str | os.PathLike, source: str | os.PathLike, what: str) -> None:
    """Raise InputError when ``path`` is ``source`` or a folder holding it (replacing ``path`` would remove
    ``source``); ``what`` says what ``source`` is, for the message."""
    target, src = Path(path).resolve(), Path(source).resolve()
    if src == target or target in src.parents:
        raise InputError(path, f"refusing to write over {src}, {what}")


def refuse_input_target(path: str | os.PathLike, source: str | os.PathLike | None) -> None:
    """Raise InputError when writing ``path`` would replace, or write inside, the input ``source``."""
    if source is None:
        return
    target, src = Path(path).resolve(), Path(source).resolve()
    if target == src:
        raise InputError(path, "refusing to overwrite the input")
    if src.is_dir() and src in target.parents:
        raise InputError(path, f"refusing to write inside the input folder {source}")
