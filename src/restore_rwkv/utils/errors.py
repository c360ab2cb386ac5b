"""The one exception type for bad user input: a message that names the file and the problem."""

from __future__ import annotations

import os


class InputError(ValueError):
    """A file, folder or array the user gave cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")


def check_finite(array, path: str | os.PathLike | None, what: str = "image") -> None:
    """Raise InputError when ``array`` (numpy or torch) holds NaN or infinite values."""
    import numpy as np

    values = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        raise InputError(path, f"{what} holds {bad} NaN or infinite value(s)")
