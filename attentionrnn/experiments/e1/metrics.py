"""Metrics of attribute prediction (E1): accuracy and accuracy by scale.

Attention correctness, shared with E4, is in :mod:`attentionrnn.data.regions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "SCALE_EDGES",
    "accuracy",
    "accuracy_by_scale",
    "scale_bin_labels",
]

#: Edges of the digit-scale bins used in the accuracy-by-scale table (PAN: 0.5–1.0, …, 2.5–3.0).
SCALE_EDGES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of samples whose arg-max logit equals the target (``nan`` for no samples)."""
    if targets.numel() == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == targets).float().mean())


def scale_bin_labels(edges: Sequence[float] = SCALE_EDGES) -> list[str]:
    """Labels ``"0.5-1.0"``, ``"1.0-1.5"``, … of the scale bins."""
    return [f"{lo:.1f}-{hi:.1f}" for lo, hi in (edges[i : i + 2] for i in range(len(edges) - 1))]


def accuracy_by_scale(
    correct: np.ndarray, scales: np.ndarray, edges: Sequence[float] = SCALE_EDGES
) -> dict[str, dict[str, float]]:
    """Accuracy of the samples in each scale bin.

    Args:
        correct: per-sample booleans (prediction right or wrong).
        scales: per-sample digit scale.
        edges: bin edges; bins are ``[lo, hi)``, the last one closed, and values outside the range
            go to the nearest bin.

    Returns:
        ``{label: {"accuracy": float or nan, "count": int}}`` in bin order.
    """
    correct = np.asarray(correct, dtype=bool)
    scales = np.asarray(scales, dtype=np.float64)
    bins = np.clip(np.searchsorted(np.asarray(edges), scales, side="right") - 1, 0, len(edges) - 2)
    out: dict[str, dict[str, float]] = {}
    for b, label in enumerate(scale_bin_labels(edges)):
        sel = bins == b
        n = int(sel.sum())
        out[label] = {"accuracy": float(correct[sel].mean()) if n else float("nan"), "count": n}
    return out
