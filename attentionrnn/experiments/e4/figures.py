"""Figures of experiment E4: sample grids (input, exact edit, each method's edit and mask) and
learning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attentionrnn.engine.figures import save_figure
from attentionrnn.experiments.e4.model import Editor

__all__ = ["curve_figure", "sample_grid"]


def _describe(task, b, row: int) -> str:
    if task.query_channels:  # the digit task: "digit k: colour -> colour"
        from attentionrnn.data.generate import COLOR_NAMES

        k = int(b.query[row].argmax())
        old, new = COLOR_NAMES[int(b.labels[row, 0])], COLOR_NAMES[int(b.targets[row, 0])]
        return f"digit {k}: {old}→{new}"
    m = int(b.changed[row])
    return f"{task.attributes[m]} → {int(b.targets[row, m])}"


@torch.no_grad()
def sample_grid(
    editors: dict[str, Editor], task, idx: np.ndarray, targets: np.ndarray, out: str | Path,
    title: str = "",
) -> Path:  # fmt: skip
    """One row per edit: the input, the exact edit (where the task has one), then each editor's
    edited image and the mask of the module that made the edit (upsampled to the image);
    ``editors`` maps a row's label to its editor."""
    b = task.batch(idx, targets)
    rgb = b.x.permute(0, 2, 3, 1).numpy()
    columns: list[tuple[str, np.ndarray, bool]] = [("input", rgb, False)]
    if b.truth is not None:
        columns.append(("exact edit", b.truth.permute(0, 2, 3, 1).numpy(), False))
    for label, editor in editors.items():
        edited, masks = editor.eval()(b.x, b.targets, b.query)
        mask = masks[torch.arange(len(b)), b.changed][:, None].float()
        up = F.interpolate(mask, size=b.x.shape[-2:], mode="nearest")[:, 0].numpy()
        columns += [(label, edited.float().permute(0, 2, 3, 1).numpy(), False),
                    (f"{label}\nmask", up, True)]  # fmt: skip

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(idx), len(columns)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.5 * n_cols, 1.6 * n_rows), squeeze=False)
    for r in range(n_rows):
        for c, (label, images, is_mask) in enumerate(columns):
            ax = axes[r, c]
            if is_mask:
                ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(images[r], 0, 1))
            ax.set_title(label if r == 0 else "", fontsize=6)
            ax.axis("off")
        axes[r, 0].set_title(("input\n" if r == 0 else "") + _describe(task, b, r), fontsize=5)
    return save_figure(fig, out, title, fontsize=8, dpi=110)


def curve_figure(curves: dict[str, list[list[dict]]], out: str | Path, title: str = "") -> Path:
    """Validation edit success, preservation L1, mask on the digit's strokes and the generator's
    loss against epochs."""
    from attentionrnn.engine.figures import curve_figure as draw

    def value(key: str):
        return lambda h: float("nan") if h.get(key) is None else h[key]

    panels = [
        ("validation edit success", value("val_edit_success")),
        ("validation preservation L1", value("val_preservation_l1")),
        ("validation mask on digit", value("val_mask_correctness")),
        ("generator loss", value("train_loss")),
    ]
    return draw(curves, out, panels, x="epoch", title=title)
