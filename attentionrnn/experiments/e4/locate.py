"""E4's locate stage: a curriculum's first step that shows the mask heads the queried digit.

With ``--locate-steps N`` the editor's encoder and mask heads train alone for ``N`` steps before
the GAN, supervised by :func:`~.losses.locate_loss` against the queried digit's stroke pixels —
the region the data knows and that the GAN's losses never see — with an Adam of their own
(``--locate-lr``). The GAN then trains from those weights without it, so its epochs show whether
the editor's training signal keeps a mask that picks the queried digit once it has one.
``scripts/e4_mask_probe.py`` runs the same stage alone and measures it as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from attentionrnn.engine.precision import autocast
from attentionrnn.experiments.e4.losses import locate_loss
from attentionrnn.experiments.e4.model import Editor

__all__ = ["locate_parameters", "train_locate"]


def locate_parameters(editor: Editor, encoder: bool = True) -> list[nn.Parameter]:
    """What the stage trains: the mask heads, and the encoder unless ``encoder=False``."""
    heads = [p for module in editor.transformers for p in module.mask.parameters()]
    return [*editor.encoder.parameters(), *heads] if encoder else heads


def train_locate(
    editor: Editor,
    task,
    train_idx: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int | Sequence[int],
    precision: str = "fp32",
    layout: Callable[[Tensor], Tensor] = lambda x: x,
    params: list[nn.Parameter] | None = None,
    every: int = 0,
    on_every: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``params`` (default :func:`locate_parameters`) for ``steps`` steps of ``batch_size``
    training edits drawn with ``np.random.default_rng(seed)``; every ``every`` steps and at the
    last, call ``on_every(step, loss)``. Returns the last step's loss."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(locate_parameters(editor) if params is None else params, lr=lr)
    value = float("nan")
    for step in range(1, steps + 1):
        chunk = np.sort(rng.choice(train_idx, batch_size, replace=False))
        b = task.batch(chunk, task.draw_targets(chunk, rng))
        with autocast(precision):
            _, masks = editor.edit_features(layout(b.x), b.targets, b.query)
            loss = locate_loss(masks, b.region)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if on_every is not None and every and (step % every == 0 or step == steps):
            on_every(step, value)
    editor.zero_grad(set_to_none=True)  # nothing of the stage reaches the GAN's first step
    return value
