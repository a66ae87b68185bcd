"""CLI commands of this sub-package (placeholder until the commands are written)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this sub-package's commands to the ``attentionrnn`` CLI."""
