"""Figures of experiment E3: image, question, each method's glimpse masks and answer; curves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attentionrnn.engine.errors import UserError
from attentionrnn.engine.figures import save_figure
from attentionrnn.engine.recipe import load_finished
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.model import VQANet
from attentionrnn.experiments.e3.rundata import E3Data, load_data
from attentionrnn.experiments.e3.train import build_model

__all__ = ["curve_figure", "load_run", "mask_figure"]


def load_run(run_dir: str | Path, data: E3Data | None = None) -> tuple[VQANet, E3Config, E3Data]:
    """The network of a finished run (best-validation weights, eval mode), its config and data
    (read again unless ``data`` is given: the vocabulary and answers follow from the config)."""
    made: dict[str, Any] = {}

    def build(metrics: dict) -> VQANet:
        config = E3Config(**metrics["config"])
        run_data = data or load_data(dataclasses.replace(config, progress=False))
        if run_data.answers != metrics["answers"]:
            raise UserError(f"{run_dir}: the data read now has other answer classes than the run's")
        made.update(config=config, data=run_data)
        return build_model(config, run_data)

    model = load_finished(run_dir, build)[0]
    return model, made["config"], made["data"]


@torch.no_grad()
def mask_figure(
    runs: dict[str, str | Path], out: str | Path, title: str = "", count: int = 4
) -> Path | None:
    """One row per test question: the image with the question and the true answer, then each
    run's glimpse masks (upsampled, over the image, each scaled to its own peak) with its answer
    and the peak's share of the mask (a uniform mask's: one over the grid's cells).

    ``runs`` maps a row's label to a finished run folder; every run must use the same dataset.
    Returns ``None`` when no run has attention or the data are feature grids (no image to show).
    """
    loaded, data = {}, None
    for label, run in runs.items():
        model, config, data = load_run(run, data)
        loaded[label] = model
    if data is None or data.dataset.features or all(m.attention == "none" for m in loaded.values()):
        return None
    split = data.split("test")
    picks = data.test_idx[np.random.default_rng(3).permutation(len(data.test_idx))[:count]]
    x, ids, lengths, target = data.batch("test", picks)
    columns: list[tuple[str, np.ndarray | None, list[str]]] = []
    for label, model in loaded.items():
        logits, masks = model(x, ids, lengths, return_masks=True,
                              boxes=data.boxes("test", picks))  # fmt: skip
        answers = [data.answers[int(k)] for k in logits.argmax(1)]
        if masks is None:
            columns.append((label, None, answers))
            continue
        # each map scaled to its own peak, so the peak's share of the mask (a uniform mask:
        # 1 / cells) goes beside the answer: a flat mask drawn to its peak would look peaked
        peaks = masks.float().flatten(2).amax(-1)  # (B, G)
        up = F.interpolate(masks.float(), size=x.shape[-2:], mode="nearest")
        up = up / peaks.clamp_min(1e-12)[..., None, None]
        for g in range(up.shape[1]):
            peak = peaks[:, g].tolist()
            shown = [f"{a}, peak {p:.2f}" for a, p in zip(answers, peak, strict=True)]
            columns.append((f"{label}\nglimpse {g + 1}", up[:, g].numpy(), shown))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols, n_rows = 1 + len(columns), len(picks)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.1 * n_rows), squeeze=False)
    rgb = split.images[split.image_index[picks]]
    for r, q in enumerate(picks):
        axes[r, 0].imshow(rgb[r])
        text = split.questions[q]
        axes[r, 0].set_title(f"{text[:38]}\n{text[38:76]}\ntrue: {split.answers[q]}", fontsize=5)
        for c, (label, maps, answers) in enumerate(columns, start=1):
            axes[r, c].imshow(rgb[r].mean(-1), cmap="gray", vmin=0, vmax=255)
            if maps is not None:
                axes[r, c].imshow(maps[r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[r, c].set_title(f"{label}\nanswer: {answers[r]}" if r == 0 else
                                 f"answer: {answers[r]}", fontsize=5)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, out, title, fontsize=8, dpi=120)


def curve_figure(curves: dict[str, list[list[dict]]], out: str | Path, title: str = "") -> Path:
    """Validation accuracy and training loss against epochs."""
    from attentionrnn.engine.figures import curve_figure as draw

    panels = [
        ("validation accuracy (%)", lambda h: 100 * h["val_accuracy"]),
        ("training loss", lambda h: h["train_loss"]),
    ]
    return draw(curves, out, panels, x="epoch", title=title)
