"""Markdown of a results folder: tables, and the list of every run of a table with its
provenance (``results.md``'s last section; :func:`~attentionrnn.engine.results.assemble`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attentionrnn.engine.convergence import (
    FLAT_SLOPE,
    SLOPE_EPOCHS,
    Curves,
    final_slopes,
    slope_text,
    value_at,
)
from attentionrnn.engine.provenance import cpu_label

__all__ = [
    "Compared", "Rows", "decimals", "markdown_table", "run_records", "runs_section", "stat_at",
    "table_line",
]  # fmt: skip

#: the quantities a table tests against its reference row: name -> (column label, path of keys
#: to the quantity's seed statistics in a summarised row, e.g. ``("box_by_layer", "layer4")``)
Compared = dict[str, tuple[str, tuple[str, ...]]]
#: ``{row: {seed: metrics}}`` of one dataset
Rows = dict[str, dict[int, dict[str, Any]]]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table of ``header`` and ``rows`` (their cells)."""
    return [table_line(header), "|---" * len(header) + "|", *map(table_line, rows)]


def table_line(cells: Sequence[str]) -> str:
    """One line of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def run_records(
    rows: Rows,
    summarize: Callable[[str, dict[int, dict[str, Any]]], dict[str, Any]],
    order: Callable[[str], Any],
    compared: Compared,
    curves: Curves | None = None,
) -> list[dict[str, Any]]:
    """One record per run of ``rows`` (table order, then seed): its row, label and seed, its
    value of each ``compared`` quantity (the row's summary of that run alone), how long it
    trained, the final slope of each of ``curves`` (whether its validation curves were flat,
    :mod:`~attentionrnn.engine.convergence`), and its provenance as ``metrics.json`` records it
    (``None`` where a run predates a field)."""
    records = []
    for row in sorted(rows, key=order):
        for seed in sorted(rows[row]):
            m = rows[row][seed]
            alone = summarize(row, {seed: m})
            prov = m.get("provenance") or {}
            values = {q: (stat_at(alone, path) or {}).get("mean")
                      for q, (_, path) in compared.items()}  # fmt: skip
            records.append({
                "row": row, "label": alone.get("label", row), "seed": seed, **values,
                "epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"),
                "final_slope": final_slopes(m.get("history") or [], curves or {}),
                "training_time_s": m.get("training_time_s"), "precision": m.get("precision"),
                "cpu": m.get("cpu"), "cpu_flags": prov.get("cpu_flags"),
                "git_commit": prov.get("git_commit"), "data_sha256": prov.get("data_sha256"),
                "scan_products": m.get("scan_products"),
            })  # fmt: skip
    return records


def runs_section(
    dataset: str,
    records: list[dict[str, Any]],
    compared: Compared,
    scale: float = 1.0,
    digits: int | dict[str, int] = 3,
    curves: Curves | None = None,
) -> list[str]:
    """The lines of ``results.md``'s list of ``dataset``'s runs (:func:`run_records`): each
    run's compared quantities (times ``scale``), epochs, the final slopes of its validation
    ``curves``, training time and provenance."""
    places = decimals(compared, digits)
    curves = curves or {}
    slopes = " / ".join(label for label, _ in curves.values())
    about_slopes = (
        f"the final slope of the validation curves ({slopes}: least squares per epoch over the "
        f"last {SLOPE_EPOCHS} epochs, ↗ / ↘ where its size is {FLAT_SLOPE} or more, i.e. the "
        "curve is not flat); " if curves else ""
    )
    lines = [
        f"### Every run ({dataset})", "",
        "Per run: the tested quantities as in the table; epochs trained (the best, whose "
        f"weights were tested); {about_slopes}training minutes; the precision; the CPU and its "
        "widest vector unit; the code's git commit, the data file's sha256 and the scan's pair "
        "products as the run recorded them (–: the run predates the field).", "",
    ]  # fmt: skip
    header = ["run", "seed", *(label for label, _ in compared.values()), "epochs (best)",
              *([f"final slope ({slopes})"] if curves else []), "training min", "precision",
              "CPU", "commit", "data sha256", "scan products"]  # fmt: skip
    cells = []
    for r in records:
        values = [_scaled(r.get(q), scale, places[q]) for q in compared]
        run_slopes = r.get("final_slope") or {}
        cells.append([
            r["label"], str(r["seed"]), *values,
            _epochs(r.get("epochs"), r.get("best_epoch")),
            *([" / ".join(slope_text(run_slopes.get(c)) for c in curves)] if curves else []),
            f"{r['training_time_s'] / 60:.0f}" if r.get("training_time_s") is not None else "–",
            r.get("precision") or "–", cpu_label(r.get("cpu"), r.get("cpu_flags")) or "–",
            _commit(r.get("git_commit")), (r.get("data_sha256") or "–")[:12],
            r.get("scan_products") or "–",
        ])  # fmt: skip
    return [*lines, *markdown_table(header, cells)]


def decimals(compared: Compared, digits: int | dict[str, int]) -> dict[str, int]:
    """The decimals each ``compared`` quantity is shown with: ``digits`` for all, or per
    quantity (``{quantity: decimals}``)."""
    return digits if isinstance(digits, dict) else dict.fromkeys(compared, digits)


def stat_at(row: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The statistics at ``path`` (keys) in a summarised row, or ``None``."""
    value = value_at(row, path)
    return value if isinstance(value, dict) else None


def _epochs(epochs: int | None, best: int | None) -> str:
    if epochs is None:
        return "–"
    return str(epochs) if best is None else f"{epochs} ({best})"


def _scaled(value: float | None, scale: float, places: int) -> str:
    return "–" if value is None else f"{value * scale:.{places}f}"


def _commit(commit: str | None) -> str:
    """A recorded git commit, short (``+dirty`` kept: the run's code differed from it)."""
    if not commit:
        return "–"
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
