"""Command-line entry point: ``attentionrnn <experiment> <command> ...``.

Each experiment is declared once (:class:`attentionrnn.engine.experiment.Experiment`); its
``train``, ``reproduce`` and ``table`` commands, and its own ones, are built from that declaration
(:func:`attentionrnn.engine.reproduce.add_commands`). A problem the
user can fix (a missing or truncated file, a bad value, a folder that cannot be written) is
printed on one line and the exit status is 2; ``-v`` (before or after the command) shows the
traceback as well. A flag's bad value is one line too (argparse's message without the usage).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from attentionrnn.data.mnist import MnistError
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.experiment import experiments
from attentionrnn.engine.reproduce import add_commands

#: Exceptions that describe the user's input rather than a bug.
USER_ERRORS = (UserError, MnistError, FileNotFoundError, NotADirectoryError, PermissionError)
#: ``OSError`` numbers that are the file system's answer to the user's paths (a file where a
#: folder is needed and the reverse, a read-only or full disk, a name too long).
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EEXIST", "EISDIR", "ENOTDIR", "EROFS", "EACCES", "EPERM", "ENOSPC", "EDQUOT",
                 "ENAMETOOLONG", "ELOOP", "ETXTBSY")  # fmt: skip
    if hasattr(errno, name)
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block): ``PROG: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after the experiment and command names too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "-v" not in sub._option_string_actions:
                    sub.add_argument(
                        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, tracebacks",
                    )  # fmt: skip
                _verbose_everywhere(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attentionrnn",
        description="AttentionRNN: structured spatial attention, and the paper's experiments.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="EXPERIMENT")
    for experiment in experiments().values():
        add_commands(sub, experiment)
    _verbose_everywhere(parser)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a bad flag (one line, status 2) or --help (status 0)
        return exit_.code if isinstance(exit_.code, int) else 2
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
    except (*USER_ERRORS, OSError) as exc:
        if args.verbose or (not isinstance(exc, USER_ERRORS) and exc.errno not in USER_ERRNOS):
            raise
        print(f"attentionrnn: error: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
