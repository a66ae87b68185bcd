"""Figures of experiment E1: every method's masks on the same test images; learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.regions import mask_to_image
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.figures import save_figure
from attentionrnn.engine.recipe import load_finished
from attentionrnn.experiments.e1.model import MASK_GEOMETRY, PAN
from attentionrnn.experiments.e1.train import attention_kwargs

__all__ = ["curve_figure", "load_run", "mask_figure", "pick_samples", "show_grid"]

COLOR_NAMES = ("red", "green", "blue", "yellow", "white")


def load_run(run_dir: str | Path) -> PAN:
    """The PAN network of a finished run (its best-validation weights), in eval mode."""

    def build(metrics: dict) -> PAN:
        config = metrics["config"]
        return PAN(
            config["attention"],
            task=config["task"],
            attention_hidden=config["attention_hidden"],
            # the gate the run trained with, which the config leaves out when it was the default
            layer4_gate=metrics.get("layer4_gate") or config.get("layer4_gate"),
            attention_kwargs=attention_kwargs(config),
        )

    return load_finished(run_dir, build)[0]


def pick_samples(data: E1Data, count: int = 4, seed: int = 0, split: str = "test") -> np.ndarray:
    """``count`` samples of ``split``, from different images, chosen reproducibly."""
    test = data.indices(split)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    seen: set[int] = set()
    for i in rng.permutation(test):
        if int(data.image_index[i]) not in seen:
            chosen.append(int(i))
            seen.add(int(data.image_index[i]))
        if len(chosen) == count:
            break
    return np.array(sorted(chosen), dtype=np.int64)


def _label(data: E1Data, value: int) -> str:
    return COLOR_NAMES[value] if data.task == "color" else str(value)


@torch.no_grad()
def mask_figure(
    runs: dict[str, str | Path],
    data: E1Data,
    out: str | Path,
    samples: Sequence[int] | None = None,
    layers: Sequence[int] = (1, 4),
    title: str = "",
) -> Path:
    """Draw each method's masks over the same test images and save the figure to ``out``.

    Rows: each sample × each requested attention layer (1–4); columns: the input with the queried
    digit's box, then one column per method showing its mask (projected onto the image, scaled to
    its maximum) over the dimmed input, titled with the method's prediction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    idx = np.asarray(samples if samples is not None else pick_samples(data), dtype=np.int64)
    images, queries, targets = data.batch(idx)
    outputs = {}
    for method, run_dir in runs.items():
        logits, masks = load_run(run_dir)(images, queries, return_masks=True)
        outputs[method] = (logits.argmax(1), masks)

    n_rows, n_cols = len(idx) * len(layers), 1 + len(runs)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.7 * n_cols, 1.8 * n_rows), squeeze=False)
    for s, sample in enumerate(idx):
        rgb = images[s].permute(1, 2, 0).numpy()
        x0, y0, x1, y1 = data.box[sample]
        query = queries[s].item()
        query_text = _label(data, query) if data.task == "digit" else str(query)
        truth = _label(data, targets[s].item())
        for r, layer in enumerate(layers):
            row = s * len(layers) + r
            ax = axes[row, 0]
            ax.imshow(rgb)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan"))
            ax.set_title(f"q={query_text} → {truth}", fontsize=7)
            ax.set_ylabel(f"layer {layer}", fontsize=7)
            for c, (method, (pred, masks)) in enumerate(outputs.items(), start=1):
                stride, offset = MASK_GEOMETRY[layer - 1]
                heat = mask_to_image(masks[layer - 1][s : s + 1], rgb.shape[:2], stride, offset)[0]
                # drawn scaled to its own peak; the title gives the mask's share in the box
                share = float(heat[y0:y1, x0:x1].sum() / heat.sum().clamp_min(1e-12))
                heat = (heat / heat.max().clamp_min(1e-12)).numpy()
                ax = axes[row, c]
                ax.imshow(rgb * 0.35)
                ax.imshow(heat, cmap="inferno", alpha=0.65, vmin=0, vmax=1)
                ax.add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=0.6)
                )
                mark = "✓" if pred[s].item() == targets[s].item() else "✗"
                ax.set_title(f"{method}: {_label(data, pred[s].item())} {mark}, box {share:.2f}",
                             fontsize=7)  # fmt: skip
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out, title, fontsize=9, dpi=110)


def curve_figure(curves: dict[str, list[list[dict]]], out: str | Path, title: str = "") -> Path:
    """Validation accuracy and mean box correctness of the 4 layers against training steps."""
    from attentionrnn.engine.figures import curve_figure as draw

    def box(h: dict) -> float:
        return float(np.mean([v["box"] for v in h["val_attention_correctness"].values()]))

    panels = [
        ("validation accuracy", lambda h: h["val_accuracy"]),
        ("box correctness (mean of 4 layers)", box),
    ]
    return draw(curves, out, panels, x="step", title=title)


def show_grid(file, out, n: int = 16, split: str = "test", seed: int = 0) -> Path:
    """Save a grid of ``n`` samples (one per image where possible) of ``split`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    from attentionrnn.data.attribute import AttributeDataset
    from attentionrnn.data.generate import COLOR_NAMES

    ds = AttributeDataset(file, split=split, task="color")
    if len(ds) == 0:
        raise UserError(f"{file}: split {split!r} is empty")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    # prefer one sample per image
    images = ds.data.image_index[ds.indices[order]]
    _, first = np.unique(images, return_index=True)
    picked = order[np.sort(first)][:n] if len(first) >= n else order[:n]
    n = len(picked)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, k in enumerate(picked):
        ax = axes.ravel()[j]
        image, query, target, s = ds[int(k)]
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        x0, y0, x1, y1 = ds.box(s)
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.2, ls="--"
            )
        )
        ax.set_title(f"q={query} → {COLOR_NAMES[target]}", fontsize=8)
    meta = ds.metadata
    fig.suptitle(
        f"{meta.get('dataset', '?').upper()} ({meta.get('digit_source', '?')}), {split} split",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        # an adaptive 256-colour palette keeps the grid small (textures compress poorly)
        import io

        from PIL import Image

        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=64, format="png")
        buffer.seek(0)
        with Image.open(buffer) as img:
            img.convert("RGB").quantize(256).save(out, optimize=True)
    else:
        fig.savefig(out, dpi=64)
    plt.close(fig)
    return out
