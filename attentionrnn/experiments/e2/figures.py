"""Figures of experiment E2: attention maps of each estimator at the three layers; curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attentionrnn.engine.figures import save_figure
from attentionrnn.engine.recipe import load_finished
from attentionrnn.experiments.e2.data import ImageSet, stratified_order
from attentionrnn.experiments.e2.model import AttnVGG
from attentionrnn.experiments.e2.train import E2Config, E2Data, read_images

__all__ = ["curve_figure", "load_run", "mask_figure"]


def load_run(run_dir: str | Path) -> tuple[AttnVGG, E2Config]:
    """The network of a finished run (its best-validation weights, eval mode) and its config."""

    def build(metrics: dict) -> AttnVGG:
        config = E2Config(**metrics["config"])
        return AttnVGG(
            config.attention, num_classes=len(metrics["classes"]), width=config.width,
            depth=config.depth, attention_hidden=config.attention_hidden,
        )  # fmt: skip

    model, metrics = load_finished(run_dir, build)
    return model, E2Config(**metrics["config"])


def _pick(images: ImageSet, count: int) -> np.ndarray:
    """``count`` test images of different classes, the same every time."""
    chosen, seen = [], set()
    for i in stratified_order(images.test_y, seed=2):
        if int(images.test_y[i]) not in seen:
            chosen.append(int(i))
            seen.add(int(images.test_y[i]))
        if len(chosen) == count:
            break
    return np.array(chosen, dtype=np.int64)


@torch.no_grad()
def mask_figure(
    runs: dict[str, str | Path], out: str | Path, title: str = "", count: int = 4
) -> Path | None:
    """Each test image beside every run's masks at the three layers (upsampled, overlaid).

    ``runs`` maps a row's label to a finished run folder; the images are read with the first
    run's data options. Returns ``None`` when no run has attention.
    """
    loaded = {m: load_run(r) for m, r in runs.items()}
    loaded = {m: v for m, v in loaded.items() if v[0].attention != "none"}
    if not loaded:
        return None
    config = next(iter(loaded.values()))[1]
    images = read_images(config)
    data = E2Data(images, _all_images(config))
    idx = _pick(images, count)
    x, y = data.batch("test", idx)
    columns: list[tuple[str, np.ndarray, list[float]]] = []
    for label, (model, _) in loaded.items():
        logits, masks = model(x, return_masks=True)
        for k, mask in enumerate(masks):
            # drawn scaled to its own peak; the title gives the peak's share of the mask (a
            # uniform mask's: one over the map's positions), so a flat mask does not look peaked
            flat = mask.float().flatten(1)
            peak = (flat.amax(1) / flat.sum(1).clamp_min(1e-12)).tolist()
            up = F.interpolate(mask.float(), size=x.shape[-2:], mode="nearest")[:, 0]
            up = up / up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            columns.append((f"{label}\nlayer {k + 1}", up.numpy(), peak))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols, n_rows = 1 + len(columns), len(idx)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.5 * n_cols, 1.6 * n_rows), squeeze=False)
    rgb = images.test_x[idx]
    for r in range(n_rows):
        axes[r, 0].imshow(rgb[r])
        axes[r, 0].set_title(images.classes[int(y[r])], fontsize=7)
        for c, (label, maps, peak) in enumerate(columns, start=1):
            axes[r, c].imshow(rgb[r].mean(-1), cmap="gray", vmin=0, vmax=255)
            axes[r, c].imshow(maps[r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            text = f"peak {peak[r]:.3f}"
            axes[r, c].set_title(f"{label}\n{text}" if r == 0 else text, fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, out, title, fontsize=9, dpi=110)


def _all_images(config: E2Config) -> E2Config:
    """The config with its sample limits lifted (the figure reads the test images)."""
    import dataclasses

    return dataclasses.replace(config, train_samples=None, test_samples=None)


def curve_figure(curves: dict[str, list[list[dict]]], out: str | Path, title: str = "") -> Path:
    """Validation top-1 error and training loss against epochs."""
    from attentionrnn.engine.figures import curve_figure as draw

    panels = [
        ("validation top-1 error (%)", lambda h: 100 * h["val_error"]),
        ("training loss", lambda h: h["train_loss"]),
    ]
    return draw(curves, out, panels, x="epoch", title=title)
