"""Command-line entry point: ``attentionrnn <command> ...``.

Each command lives beside the code it drives; a module listed in ``_COMMAND_MODULES`` exposes
``register(subparsers)``, which adds its sub-parsers and sets ``func`` on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

_COMMAND_MODULES = (
    "attentionrnn.data.commands",  # generate, show
    "attentionrnn.experiments.commands",  # train, reproduce, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attentionrnn",
        description="AttentionRNN: structured spatial attention, and the paper's experiments.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
