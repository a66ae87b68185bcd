"""Helpers of E4's test modules: a small run config and a batch of training edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attentionrnn.experiments.e4.config import E4Config


def e4_config(tmp_path: Path, **kw) -> E4Config:
    """A run small enough for a test: tiny networks, 48 px, one epoch, fp32."""
    base = dict(
        dataset="mref", out=str(tmp_path / "run"), epochs=1, images=10, canvas=48, batch_size=8,
        val_samples=8, test_samples=8, channels=4, d_channels=4, mask_hidden=4, judge_epochs=1,
        judge_channels=4, progress=False, threads=1, samples=2, eval_batch_size=64,
        precision="fp32",
    )  # fmt: skip
    return E4Config(**{**base, **kw})


def edit_batch(task, n: int = 4, seed: int = 0):
    """The first ``n`` training samples of ``task`` with targets drawn from ``seed``."""
    idx = task.indices("train")[:n]
    return task.batch(idx, task.draw_targets(idx, np.random.default_rng(seed)))
