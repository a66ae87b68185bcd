"""Command-line entry point: ``attentionrnn <experiment> <command> ...``.

Each experiment's commands live beside its code: a module listed in ``_COMMAND_MODULES`` exposes
``register(subparsers)``, which adds its sub-parsers and sets ``func`` on them. A problem the
user can fix (a missing or truncated file, a bad value) is printed on one line and the exit
status is 2; ``-v`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from attentionrnn.data.mnist import MnistError
from attentionrnn.engine.errors import UserError

_COMMAND_MODULES = (
    "attentionrnn.experiments.e1.commands",
    "attentionrnn.experiments.e2.commands",
    "attentionrnn.experiments.e3.commands",
    "attentionrnn.experiments.e4.commands",
)

#: Exceptions that describe the user's input rather than a bug.
USER_ERRORS = (UserError, MnistError, FileNotFoundError, NotADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attentionrnn",
        description="AttentionRNN: structured spatial attention, and the paper's experiments.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="EXPERIMENT")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"attentionrnn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
