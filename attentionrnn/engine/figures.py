"""Learning-curve figures shared by the experiments (matplotlib, the ``experiments`` extra)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["curve_figure", "save_figure"]

History = list[dict[str, Any]]


def curve_figure(
    curves: dict[str, list[History]],
    out: str | Path,
    panels: Sequence[tuple[str, Callable[[dict[str, Any]], float]]],
    x: str = "step",
    title: str = "",
) -> Path:
    """One panel per ``(y label, value of a history entry)``, against the entries' ``x``.

    ``curves`` maps a row label to the ``history`` of each of its runs (seeds); each seed is a
    thin line, their mean (over the points all seeds reached) a thick one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    axes = axes[0]
    for k, (label, runs) in enumerate(curves.items()):
        color = f"C{k % 10}"  # past ten rows the colours repeat: another line style then
        style = ("-", "--", ":", "-.")[k // 10 % 4]
        series = []
        for history in runs:
            xs = np.array([h[x] for h in history])
            ys = [np.array([value(h) for h in history], dtype=float) for _, value in panels]
            series.append((xs, ys))
            if len(runs) > 1:
                for ax, y in zip(axes, ys, strict=True):
                    ax.plot(xs, y, color=color, ls=style, lw=0.6, alpha=0.4)
        n = min(len(xs) for xs, _ in series)
        for p, ax in enumerate(axes):
            mean = np.mean([ys[p][:n] for _, ys in series], 0)
            ax.plot(series[0][0][:n], mean, color=color, ls=style, lw=1.8, marker=".",
                    label=f"{label} (n={len(runs)})")  # fmt: skip
    for ax, (ylabel, _) in zip(axes, panels, strict=True):
        ax.set(xlabel="training steps" if x == "step" else x, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, out, title, fontsize=10, dpi=100)


def save_figure(
    fig: Any, out: str | Path, title: str = "", fontsize: int = 10, dpi: int = 100
) -> Path:
    """Give ``fig`` its title, lay it out, write it to ``out`` (making the folder) and close it,
    as every figure of the experiments ends."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
