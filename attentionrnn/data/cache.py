"""The cache folder of the experiments' data (generated sets, decoded images)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "ATTENTIONRNN_DATA_DIR"

__all__ = ["ENV_DATA_DIR", "cache_dir"]


def cache_dir(name: str) -> Path:
    """``$ATTENTIONRNN_DATA_DIR``, else ``$XDG_CACHE_HOME/attentionrnn/NAME`` (``~/.cache``)."""
    root = os.environ.get(ENV_DATA_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attentionrnn" / name
