"""The ``restore-rwkv`` command. Each subcommand lives in its own module and registers itself
through ``add_parser(subparsers)``; ``main`` only dispatches, so later subcommands (train,
predict, evaluate) plug in without touching the existing ones."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from restore_rwkv.utils.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from restore_rwkv import __version__
    from restore_rwkv.cli import prepare

    parser = argparse.ArgumentParser(prog="restore-rwkv", description="Restore-RWKV for medical image restoration.")
    parser.add_argument("--version", action="version", version=f"restore-rwkv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (prepare,):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors in user input print one line, status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"restore-rwkv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("restore-rwkv: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
