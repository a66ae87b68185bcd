"""The ``attentionrnn e1 train`` command line the E1 and engine tests run on tiny data."""

from __future__ import annotations

from pathlib import Path


def train_args(data: Path, out: Path, epochs: int, attention: str = "ctx") -> list[str]:
    """``e1 train`` on ``data`` into ``out``: seed 3, batch 8, one thread, no progress bar."""
    return [
        "e1", "train",
        "--dataset", "mref", "--attention", attention, "--data", str(data), "--out", str(out),
        "--epochs", str(epochs), "--seed", "3", "--batch-size", "8", "--threads", "1",
        "--no-progress",
    ]  # fmt: skip
