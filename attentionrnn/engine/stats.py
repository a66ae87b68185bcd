"""The one statistical rule of every results table: mean ± std over seeds, a 95 % interval, and a
Welch t-test against the reference row; a difference is *called* only where p < 0.05.

All statistics come from :mod:`scipy.stats`; nothing here is hand-derived. With one seed a row
has a mean but no spread, interval or test (``None``), and a comparison reports "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ALPHA", "compare", "describe", "format_comparison"]

#: The significance level at which a difference is called.
ALPHA = 0.05


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def describe(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, the 95 % t-interval of the mean and the values.

    ``std`` and ``ci95`` are ``None`` for fewer than two values; ``ci95`` is ``[low, high]``.
    """
    from scipy import stats

    arr = _finite(values)
    out: dict[str, Any] = {
        "mean": float(arr.mean()) if len(arr) else None,
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "ci95": None,
        "n": int(len(arr)),
        "values": [float(v) for v in arr],
    }
    if len(arr) > 1:
        if out["std"] == 0:
            out["ci95"] = [out["mean"], out["mean"]]
        else:
            low, high = stats.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=stats.sem(arr))
            out["ci95"] = [float(low), float(high)]
    return out


def compare(
    values: Sequence[float | None], reference: Sequence[float | None], alpha: float = ALPHA
) -> dict[str, Any]:
    """Welch's t-test of ``values`` against ``reference`` (two-sided, unequal variances).

    Returns ``{"difference", "t", "p", "called", "n", "n_reference"}``: ``difference`` is the
    difference of the means; ``called`` is ``True`` only where ``p < alpha``; ``p`` is ``None``
    (and nothing is called) where either side has fewer than two values or both have no spread.
    """
    from scipy import stats

    a, b = _finite(values), _finite(reference)
    result: dict[str, Any] = {
        "difference": float(a.mean() - b.mean()) if len(a) and len(b) else None,
        "t": None,
        "p": None,
        "called": False,
        "n": int(len(a)),
        "n_reference": int(len(b)),
    }
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):  # no spread at all
        return result
    test = stats.ttest_ind(a, b, equal_var=False)
    result["t"], result["p"] = float(test.statistic), float(test.pvalue)
    result["called"] = bool(test.pvalue < alpha)
    return result


def format_comparison(c: dict[str, Any] | None, digits: int = 3) -> str:
    """``"+0.032 (p 0.20)"``, bold where called, ``"n/a"`` without a test, ``"ref"`` for the
    reference row itself (``None``)."""
    if c is None:
        return "ref"
    if c.get("difference") is None:
        return "n/a"
    text = f"{c['difference']:+.{digits}f}"
    if c.get("p") is None:
        return f"{text} (n/a)"
    p = c["p"]
    ptext = f"p {p:.3f}" if p >= 0.001 else "p < 0.001"
    return f"**{text}** ({ptext})" if c["called"] else f"{text} ({ptext})"
