"""E1's rows: every general attention method of the registry, with its table label and run cost.

A general method registered with :func:`~attentionrnn.layers.registry.register_attention` before
the experiments are imported is a row of E1 (label: its name, cost: 1) without anything here.
"""

from __future__ import annotations

import attentionrnn.layers.factory  # noqa: F401  (registers the library's methods)
from attentionrnn.layers.registry import attention_names

__all__ = ["COST", "LABELS", "ROWS", "label"]

#: The rows, in the order of the paper's table (the library's methods first).
ROWS: tuple[str, ...] = attention_names(general=True)

LABELS = {
    "none": "no attention",
    "san": "SAN (global softmax)",
    "local": "¬CTX (1×1 local)",
    "ctx": "CTX (PAN)",
    "arnn_ind": "ARNN_ind (no recurrence)",
    "arnn": "ARNN (bi)",
    "arnn_quad": "ARNN (quad)",
    "brnn": "BRNN",
}

#: Rough training cost relative to CTX (after ``benchmarks/bench_epoch.py``): parallel runs start
#: with the most expensive so they finish together.
COST = {"none": 0.8, "san": 1.05, "local": 0.9, "ctx": 1.0, "arnn_ind": 1.2, "arnn": 1.4,
        "arnn_quad": 1.9, "brnn": 1.1}  # fmt: skip


def label(method: str) -> str:
    """The table label of ``method`` (its name where it has none)."""
    return LABELS.get(method, method)
