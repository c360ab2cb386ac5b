"""Progress bars for long jobs (tqdm on standard error)."""

from __future__ import annotations

import sys
from typing import Iterable


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", quiet: bool = False):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), hidden when ``quiet``; removed when done."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False)
