"""An experiment's results folder: the table and figures from every finished run.

Each experiment's ``assemble`` sums up the runs under ``OUT/runs`` the same way — one row per
``OUT/runs/DATASET/ROW`` summed over its seeds, the datasets in the experiment's order, its
figures per dataset — and writes ``OUT/results.json`` and ``OUT/results.md``. :func:`assemble`
does that once; the experiment gives what differs (a row's summary, the row order, the Markdown,
the figures).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from attentionrnn.engine.convergence import Curves
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.markdown import (
    Compared,
    Rows,
    decimals,
    markdown_table,
    run_records,
    runs_section,
    stat_at,
    table_line,
)
from attentionrnn.engine.runs import finished_runs, format_stats
from attentionrnn.engine.state import atomic_write_json
from attentionrnn.engine.stats import compare, format_comparison

__all__ = [
    "COST_COLUMNS",
    "Compared",
    "assemble",
    "comparison_lines",
    "comparison_section",
    "comparisons",
    "learning_curves",
    "scaled_comparison",
    "markdown_document",
    "markdown_table",
    "optional_figure",
    "row_cells",
    "run_records",
    "runs_section",
]

#: the last columns of a row of a table: what its runs cost (:func:`row_cells`)
COST_COLUMNS = ("params", "epochs", "min/run", "wall")


def assemble(
    out: str | Path,
    budget: str,
    settings: Any,
    *,
    datasets: Iterable[str],
    summarize: Callable[[str, dict[int, dict[str, Any]]], dict[str, Any]],
    order: Callable[[str], Any],
    markdown: Callable[[dict[str, Any]], str],
    figures: Callable[[Path, str, Rows], dict[str, str]] | None = None,
    totals: Callable[[dict[str, Rows]], dict[str, Any]] | None = None,
    figures_for: str = "found",
    log: logging.Logger | None = None,
    reference: str | None = None,
    compared: Compared | None = None,
    scale: float = 1.0,
    digits: int | dict[str, int] = 3,
    curves: Curves | None = None,
) -> dict[str, Any]:
    """Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``.

    Args:
        out: the results folder.
        budget, settings: the budget's name and its settings (a dataclass, or ``None``).
        datasets: the order of the datasets in the table (others found are left out of it).
        summarize: ``(row, {seed: metrics})`` -> the row's entry of the table.
        order: sort key of the rows.
        markdown: the summary -> ``results.md``.
        figures: ``(out, dataset, rows)`` -> ``{kind: file name}`` of the figures drawn for a
            found dataset; ``None``: no figures.
        totals: ``found`` -> more keys of the summary, after ``results``.
        figures_for: ``"found"``: figures of every dataset found, in folder order; ``"table"``:
            of the table's datasets, in its order (E1's ``figures`` keys keep that order).
        log: the experiment's logger.
        reference, compared: with both, ``summary["comparisons"][dataset]`` holds
            :func:`comparisons` of every row against ``reference`` on ``compared``.
        scale, digits: how the runs section shows the ``compared`` quantities.
        curves: the validation curves whose final slope each run's record gives
            (:mod:`~attentionrnn.engine.convergence`).

    ``summary["runs"][dataset]`` lists every run of the table with its provenance
    (:func:`run_records`); ``results.md`` ends with them (:func:`runs_section`).
    """
    out = Path(out)
    found = finished_runs(out)
    summary: dict[str, Any] = {
        "budget": budget,
        "budget_settings": dataclasses.asdict(settings) if settings else None,
        "results": {
            d: {r: summarize(r, found[d][r]) for r in sorted(found[d], key=order)}
            for d in [d for d in datasets if d in found]
        },
    }
    if reference is not None and compared:
        summary["comparisons"] = {
            d: comparisons(rows, reference, compared) for d, rows in summary["results"].items()
        }
    summary["runs"] = {
        d: run_records(found[d], summarize, order, compared or {}, curves)
        for d in summary["results"]
    }
    if totals is not None:
        summary.update(totals(found))
    drawn: dict[str, dict[str, str]] = {}
    if figures is not None:
        for d in found if figures_for == "found" else summary["results"]:
            names = figures(out, d, found[d])
            if names:
                drawn[d] = names
    summary["figures"] = drawn
    atomic_write_json(summary, out / "results.json")
    text = markdown(summary).rstrip("\n")
    for d, records in summary["runs"].items():
        text += "\n\n" + "\n".join(runs_section(d, records, compared or {}, scale, digits, curves))
    (out / "results.md").write_text(text + "\n")
    (log or logging.getLogger("attentionrnn.engine")).info(
        "wrote %s and %s", out / "results.md", out / "results.json"
    )
    return summary


def recorded_budget(out: str | Path) -> str | None:
    """The budget name ``OUT/results.json`` records (the one its table was last built with), or
    ``None`` where there is no readable file or it records settings made in Python."""
    try:
        budget = json.loads((Path(out) / "results.json").read_text()).get("budget")
    except (OSError, ValueError, AttributeError):
        return None
    return budget if isinstance(budget, str) and budget != "custom" else None


def markdown_head(summary: dict[str, Any], title: str) -> list[str]:
    """The first lines of a results table: ``# TITLE — budget `NAME```, a blank line, the
    budget's description, a blank line."""
    settings = summary.get("budget_settings") or {}
    return [
        f"# {title} — budget `{summary['budget']}`",
        "",
        f"{settings.get('description', '')}.",
        "",
    ]


def markdown_document(
    summary: dict[str, Any],
    title: str,
    caption: str,
    section: Callable[[dict[str, Any], str, dict[str, Any]], list[str]],
) -> str:
    """A results table as Markdown: :func:`markdown_head`, the ``caption`` and a blank line, then
    the lines of ``section(summary, dataset, rows)`` of each dataset in the summary."""
    lines = [*markdown_head(summary, title), caption, ""]
    for d, rows in summary["results"].items():
        lines += section(summary, d, rows)
    return "\n".join(lines)


def row_cells(row: dict[str, Any], cells: Sequence[str]) -> list[str]:
    """The cells of a summarised row: its label and seeds, ``cells``, then what its runs cost
    (:data:`COST_COLUMNS`: parameters, epochs, training minutes per run, wall hours)."""
    return [
        row["label"], ",".join(map(str, row["seeds"])), *cells, f"{row['parameters']:,}",
        ",".join(map(str, row["epochs"])), format_stats(row["training_time_h"], 1, 60),
        f"{row['wall_time_h']:.2f} h",
    ]  # fmt: skip


def markdown_figures(
    summary: dict[str, Any], dataset: str, kinds: Iterable[str] = ("curves", "masks")
) -> list[str]:
    """The image links of ``dataset``'s figures of ``kinds`` that were drawn, each followed by a
    blank line."""
    figs = summary.get("figures", {}).get(dataset, {})
    return [line for k in kinds if k in figs for line in (f"![{dataset} {k}]({figs[k]})", "")]


def learning_curves(
    rows: Rows, label: Callable[[str], str], order: Callable[[str], Any]
) -> dict[str, list[list[dict[str, Any]]]]:
    """``{row label: [history of each seed]}``, the rows in table order, for a curve figure."""
    return {
        label(r): [rows[r][s]["history"] for s in sorted(rows[r])] for r in sorted(rows, key=order)
    }


def optional_figure(
    draw: Callable[[], Path | None], what: str, dataset: str, log: logging.Logger
) -> Path | None:
    """``draw()``, or ``None`` with a warning where the data or weights it needs are not here."""
    try:
        return draw()
    except UserError as exc:
        log.warning("no %s for %s: %s", what, dataset, exc)
        return None


def _values(row: dict[str, Any], path: tuple[str, ...]) -> list[float]:
    return (stat_at(row, path) or {}).get("values", [])


def comparisons(
    rows: dict[str, dict[str, Any]], reference: str, compared: Compared
) -> dict[str, dict[str, Any]]:
    """``{row: {quantity: compare(row, reference)}}`` (Welch's test of the seeds' values,
    :func:`~attentionrnn.engine.stats.compare`) for every row but the reference (empty without
    a reference row)."""
    if reference not in rows:
        return {}
    ref = rows[reference]
    return {
        row: {q: compare(_values(r, path), _values(ref, path)) for q, (_, path) in compared.items()}
        for row, r in rows.items()
        if row != reference
    }


def comparison_lines(
    rows: dict[str, dict[str, Any]],
    tests: dict[str, dict[str, Any]],
    *,
    reference: str,
    compared: Compared,
    intro: str,
    label: Callable[[dict[str, Any]], str] = lambda r: r["label"],
    interval: str = "test_accuracy",
    scale: float = 1.0,
    digits: int | dict[str, int] = 3,
) -> list[str]:
    """The table of :func:`comparisons`: a blank line, ``intro``, a blank line, then a row per
    method — its label, seeds, the 95 % interval of its ``interval`` quantity, and per compared
    quantity the difference of the means and Welch's p (``ref`` on the reference's row). Values
    and differences are shown times ``scale`` with ``digits`` decimals (or ``{quantity:
    decimals}``; the interval with the first quantity's). None without tests."""
    if not tests:
        return []
    labels = [name for name, _ in compared.values()]
    places = decimals(compared, digits)
    first = places[next(iter(compared))]
    lines = [
        "", intro, "",
        *markdown_table(["method", "seeds", f"{interval_label(interval)} 95 % CI", *labels], []),
    ]  # fmt: skip

    def cells(r: dict[str, Any], tested: list[str]) -> str:
        ci = (r.get(interval) or {}).get("ci95")
        text = f"[{ci[0] * scale:.{first}f}, {ci[1] * scale:.{first}f}]" if ci else "–"
        return table_line([label(r), ",".join(map(str, r["seeds"])), text, *tested])

    if reference in rows:
        lines.append(cells(rows[reference], ["ref"] * len(labels)))
    for row, r in rows.items():
        if row in tests:
            tested = [format_comparison(scaled_comparison(tests[row][q], scale), places[q])
                      for q in compared]  # fmt: skip
            lines.append(cells(r, tested))
    return lines


def comparison_section(
    summary: dict[str, Any],
    dataset: str,
    rows: dict[str, dict[str, Any]],
    *,
    reference: str,
    compared: Compared,
    short: str,
    units: str,
    interval: str = "test_accuracy",
    scale: float = 1.0,
    digits: int | dict[str, int] = 3,
) -> list[str]:
    """The lines under a dataset's table that test its rows against ``reference``: the
    explanation (the reference's label and ``short`` name, the differences' ``units``), the
    table of :func:`comparison_lines` of ``summary["comparisons"][dataset]``, a blank line; none
    while no quantity has a test (fewer than two seeds on a side)."""
    tests = summary.get("comparisons", {}).get(dataset, {})
    if reference not in rows or not any(
        c["p"] is not None for t in tests.values() for c in t.values()
    ):
        return []
    intro = (
        f"Against {rows[reference]['label']}: difference of the means (row − {short}, {units}), "
        "Welch's t-test p; **bold**: called (p < 0.05); n/a: a side with fewer than two seeds, "
        f"or neither with a spread. 95 % interval of the row's {interval.replace('_', ' ')}."
    )
    lines = comparison_lines(rows, tests, reference=reference, compared=compared, intro=intro,
                             interval=interval, scale=scale, digits=digits)  # fmt: skip
    return [*lines[1:], ""]


def interval_label(quantity: str) -> str:
    """``test_accuracy`` -> ``test acc`` (the interval column's head)."""
    return quantity.replace("_accuracy", " acc").replace("_", " ")


def scaled_comparison(c: dict[str, Any], scale: float) -> dict[str, Any]:
    """A :func:`~attentionrnn.engine.stats.compare` result with its difference times ``scale``
    (for a table in other units, e.g. percent)."""
    d = c.get("difference")
    return {**c, "difference": None if d is None else d * scale}

