"""Whether a run's validation curves have flattened: the final slope of a curve.

The one rule every experiment uses to show that a budget ran until its curves were flat: the
least-squares slope per epoch of a validation curve over the run's last :data:`SLOPE_EPOCHS`
epochs; a curve is flat where that slope lies under :data:`FLAT_SLOPE` in size. An experiment
declares its curves (``Experiment.curves``: ``{name: (label, path of keys in a history
entry)}``); ``results.md`` lists every run's final slopes (:func:`~attentionrnn.engine.markdown.
runs_section`), and E1's table and E4's screening show the steepest over a row's seeds.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FLAT_SLOPE", "SLOPE_EPOCHS", "Curves", "final_slope", "final_slopes", "slope_text",
           "value_at"]

#: the number of last epochs a final slope is fitted over
SLOPE_EPOCHS = 5
#: the size of a final slope (per epoch) from which a curve is not flat
FLAT_SLOPE = 0.005

#: the validation curves of an experiment: name -> (label, path of keys in a history entry,
#: e.g. ``("val_attention_correctness", "layer4", "box")``)
Curves = dict[str, tuple[str, tuple[str, ...]]]


def final_slope(history: list[dict[str, Any]], path: str | tuple[str, ...]) -> float | None:
    """Least-squares slope per epoch of the curve at ``path`` (a key, or keys into nested
    entries) of ``history`` over its last :data:`SLOPE_EPOCHS` epochs; ``None`` for a shorter
    history or where one of those epochs lacks a finite value. An entry without ``epoch`` counts
    as its place in ``history`` (from 1)."""
    from scipy import stats

    keys = (path,) if isinstance(path, str) else tuple(path)
    tail = history[-SLOPE_EPOCHS:]
    values = [_at(h, keys) for h in tail]
    if len(tail) < SLOPE_EPOCHS or any(v is None or not math.isfinite(v) for v in values):
        return None
    epochs = [h.get("epoch", len(history) - len(tail) + k + 1) for k, h in enumerate(tail)]
    return float(stats.linregress(epochs, values).slope)


def final_slopes(history: list[dict[str, Any]], curves: Curves) -> dict[str, float | None]:
    """:func:`final_slope` of each of ``curves`` (by name)."""
    return {name: final_slope(history, path) for name, (_, path) in curves.items()}


def slope_text(slope: float | None) -> str:
    """A final slope as the tables show it: ``+0.0012``; ``↗`` / ``↘`` added where the curve
    is not flat; ``–`` where there is none."""
    if slope is None:
        return "–"
    mark = "" if abs(slope) < FLAT_SLOPE else (" ↗" if slope > 0 else " ↘")
    return f"{slope:+.4f}{mark}"


def value_at(entry: Any, keys: tuple[str, ...]) -> Any:
    """What ``keys`` reach in nested dicts (``None`` where one is missing)."""
    for key in keys:
        entry = entry.get(key) if isinstance(entry, dict) else None
    return entry


def _at(entry: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    value = value_at(entry, keys)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
