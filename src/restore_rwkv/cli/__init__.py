"""The ``restore-rwkv`` command. Each subcommand lives in its own module and registers itself
through ``add_parser(subparsers)``; ``main`` only dispatches, so later subcommands (train,
predict, evaluate) plug in without touching the existing ones."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator, Sequence

from restore_rwkv.utils.errors import InputError

WEIGHTS_HELP = "weights with their card: a .safetensors file, its .json card, a folder holding both, or a shipped name"


def build_parser() -> argparse.ArgumentParser:
    from restore_rwkv import __version__
    from restore_rwkv.cli import demo, evaluate, export, prepare, restore, train

    parser = argparse.ArgumentParser(prog="restore-rwkv", description="Restore-RWKV for medical image restoration.")
    parser.add_argument("--version", action="version", version=f"restore-rwkv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (prepare, train, evaluate, restore, export, demo):
        module.add_parser(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``) raised in the main thread, handled like Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`, so staged output is removed as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done. 2: bad input or arguments, nothing written (one line on stderr). 3: done, but
    some inputs were skipped (listed). 130 / 143: interrupted by Ctrl-C / SIGTERM, nothing
    half-written kept. 1 is left to Python: an unexpected error (a bug), with its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return int(args.run(args) or 0)
    except InputError as exc:
        print(f"restore-rwkv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"restore-rwkv: {'terminated (SIGTERM)' if terminated else 'interrupted'}; "
              "nothing half-written was kept", file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
