"""E1's measurements: :func:`evaluate` (accuracy and, in full, accuracy by scale, attention
correctness of every attention layer for the queried digit's box and strokes, mask statistics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.regions import attention_correctness
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.precision import autocast
from attentionrnn.experiments.e1.mask_stats import (
    mask_statistic_names,
    mask_statistics,
    summarize_statistics,
)
from attentionrnn.experiments.e1.metrics import accuracy_by_scale
from attentionrnn.experiments.e1.model import MASK_GEOMETRY

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: E1Data,
    indices: np.ndarray,
    batch_size: int,
    ctx: DistContext | None = None,
    full: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy on ``indices`` (every rank measures a shard; results are gathered).

    With ``full=True`` also per-sample correctness by scale and attention correctness of every
    attention layer for the queried digit's box and stroke pixels.
    """
    ctx = ctx or DistContext()
    model.eval()
    # the mask statistics' names, in mask_statistics' order (an empty shard has columns too)
    names = mask_statistic_names(len(MASK_GEOMETRY)) if full else []

    def rows_of(idx: np.ndarray) -> np.ndarray:
        img, query, target = data.batch(idx)
        with autocast(precision):
            logits, masks = model(img, query, return_masks=True)
        cols = [idx.astype(np.float64), (logits.argmax(1) == target).double().numpy()]
        if full:
            boxes, strokes = data.regions(idx)
            for k, (stride, offset) in enumerate(MASK_GEOMETRY):
                for region in (boxes, strokes):
                    share = attention_correctness(masks[k].float(), region, stride, offset)
                    cols.append(share.double().numpy())
            stats = mask_statistics(masks, MASK_GEOMETRY, data.region_labels(idx))
            cols += [stats[n].astype(np.float64) for n in names]
        return np.stack(cols, axis=1)

    first = 2 + 2 * len(MASK_GEOMETRY)
    table = ctx.gather_batches(indices, batch_size, rows_of, (first + len(names)) if full else 2)
    correct = table[:, 1].astype(bool)
    result: dict[str, Any] = {"accuracy": float(correct.mean()) if len(correct) else math.nan}
    if full:
        sample = table[:, 0].astype(np.int64)
        result["accuracy_by_scale"] = accuracy_by_scale(correct, data.scale[sample])
        result["attention_correctness"] = {
            f"layer{k + 1}": {
                "box": float(np.nanmean(table[:, 2 + 2 * k])),
                "stroke": float(np.nanmean(table[:, 3 + 2 * k])),
            }
            for k in range(len(MASK_GEOMETRY))
        }
        result["masks"] = summarize_statistics(
            {n: [table[:, first + j]] for j, n in enumerate(names)}
        )
    return result
