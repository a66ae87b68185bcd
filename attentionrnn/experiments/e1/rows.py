"""E1's rows: every general attention method of the registry, and the table's rows (label, run
cost, spread seeds).

A general method registered with :func:`~attentionrnn.layers.registry.register_attention` before
the experiments are imported is a row of E1 (label: its name, cost: 1) without anything here.
"""

from __future__ import annotations

import attentionrnn.layers.factory  # noqa: F401  (registers the library's methods)
from attentionrnn.engine.experiment import Row
from attentionrnn.layers.registry import attention_names

__all__ = ["ROWS", "ROW_TABLE", "label"]

#: The rows, in the order of the paper's table (the library's methods first).
ROWS: tuple[str, ...] = attention_names(general=True)

#: The table's rows. Costs: rough training cost relative to CTX (after
#: ``benchmarks/bench_epoch.py``; parallel runs start with the most expensive so they finish
#: together). Spread: CTX and ARNN, the comparison the paper makes, train with the budget's
#: ``spread_seeds``.
ROW_TABLE: dict[str, Row] = {
    "none": Row("no attention", cost=0.8),
    "san": Row("SAN (global softmax)", cost=1.05),
    "local": Row("¬CTX (1×1 local)", cost=0.9),
    "ctx": Row("CTX (PAN)", cost=1.0, spread=True),
    "arnn_ind": Row("ARNN_ind (no recurrence)", cost=1.2),
    "arnn": Row("ARNN (bi)", cost=1.4, spread=True),
    "arnn_quad": Row("ARNN (quad)", cost=1.9),
    "brnn": Row("BRNN", cost=1.1),
}


def label(method: str) -> str:
    """The table label of ``method`` (its name where it has none)."""
    return ROW_TABLE.get(method, Row(method)).label
