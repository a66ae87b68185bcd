"""E1's results table: one row per (dataset, method) summed over seeds, the statistics against
CTX, and what the masks cover at every layer.

:func:`summarize` turns a row's ``{seed: metrics}`` into its entry of ``results.json``; the
engine tests every row against :data:`REFERENCE` on :data:`COMPARED` with the project's one rule
(:mod:`attentionrnn.engine.stats`: Welch's t-test, a difference called only at p < 0.05);
:func:`results_markdown` writes ``results.md``.
"""

from __future__ import annotations

import inspect
from typing import Any

from attentionrnn.engine import results
from attentionrnn.engine.convergence import (
    FLAT_SLOPE,
    SLOPE_EPOCHS,
    Curves,
    final_slope,
    slope_text,
)
from attentionrnn.engine.results import markdown_figures, markdown_head
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.experiments.e1.mask_stats import REGIONS
from attentionrnn.experiments.e1.model import DEFAULT_ATTENTION_LAYERS
from attentionrnn.experiments.e1.rows import ROWS, label
from attentionrnn.layers.factory import ATTENTION_METHODS

__all__ = ["COMPARED", "CURVES", "REFERENCE", "results_markdown", "row_label", "summarize"]

#: The row every other row is tested against: PAN's own attention.
REFERENCE = "ctx"
#: The quantities tested against :data:`REFERENCE`: name -> (label, path in a row's summary).
COMPARED: results.Compared = {
    "test_accuracy": ("test acc", ("test_accuracy",)),
    **{f"layer{k}_box": (f"L{k} box", ("box_by_layer", f"layer{k}")) for k in (1, 2, 3, 4)},
}
#: The mask statistics of the coverage table (:mod:`~attentionrnn.experiments.e1.mask_stats`).
MASK_COLUMNS = (*REGIONS, "entropy", "tv", "peak_region")


def _attention_layers(metrics: dict[str, Any]) -> list[int]:
    """The layers that attend in a run (recorded since SAN attends at layer 4 only)."""
    recorded = metrics.get("attention_layers")
    return recorded or list(DEFAULT_ATTENTION_LAYERS.get(metrics["attention"], (1, 2, 3, 4)))


def _mean_layers(metrics: dict[str, Any], kind: str) -> float | None:
    """Correctness averaged over the layers that attend (a layer that passes its features on has
    a mask of ones, which would only add the uniform share)."""
    correctness = metrics["attention_correctness"]
    layers = [f"layer{k}" for k in _attention_layers(metrics)]
    values = [correctness[k][kind] for k in layers if correctness[k][kind] is not None]
    return sum(values) / len(values) if values else None


def row_order(row: str) -> tuple[int, str]:
    method = row.split("-l4")[0]
    return (ROWS.index(method) if method in ROWS else 99, row)


def _options(metrics: dict[str, Any]) -> str:
    """The run's attention options that differ from their defaults, for its label (an option
    that the method's module does not take is left out)."""
    config = metrics.get("config", {})
    takes = inspect.signature(ATTENTION_METHODS[metrics["attention"]].module).parameters
    parts = []
    if config.get("attention_hidden"):
        parts.append(f"hidden {config['attention_hidden']}")
    if config.get("query_fusion", "add") != "add" and "query_fusion" in takes:
        parts.append(f"{config['query_fusion']} fusion")
    if not config.get("feedback", True) and "feedback" in takes:
        parts.append("no feedback")
    return f", {', '.join(parts)}" if parts else ""


def summarize(row: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over the seeds of one row."""
    ms = [runs[s] for s in sorted(runs)]
    first = ms[0]
    layers = list(first["attention_correctness"])
    bins = list(first["accuracy_by_scale"])
    return {
        "row": row,
        "method": first["attention"],
        "label": label(first["attention"]) + _options(first),
        "layer4_gate": first.get("layer4_gate"),
        "precision": first.get("precision", "fp32"),
        # per seed: a row may hold runs of machines with and without native bf16
        "precisions": [m.get("precision", "fp32") for m in ms],
        "seeds": sorted(runs),
        "test_accuracy": seed_stats([m["test_accuracy"] for m in ms]),
        "attention_layers": _attention_layers(first),
        "box": seed_stats([_mean_layers(m, "box") for m in ms]),
        "stroke": seed_stats([_mean_layers(m, "stroke") for m in ms]),
        "box_by_layer": {
            k: seed_stats([m["attention_correctness"][k]["box"] for m in ms]) for k in layers
        },
        "stroke_by_layer": {
            k: seed_stats([m["attention_correctness"][k]["stroke"] for m in ms]) for k in layers
        },
        "accuracy_by_scale": {
            b: seed_stats([m["accuracy_by_scale"][b]["accuracy"] for m in ms]) for b in bins
        },
        "masks": _mask_stats(ms),
        "final_slope": {
            q: seed_stats([final_slope(m.get("history", []), path) for m in ms])
            for q, (_, path) in CURVES.items()
        },
        "steps": first.get("steps"),
        "epochs": [m["epochs"] for m in ms],
        "training_time_min": seed_stats([m["training_time_s"] / 60 for m in ms]),
    }


#: The learning curves whose final slope says whether a run has converged (the engine's rule,
#: :mod:`~attentionrnn.engine.convergence`).
CURVES: Curves = {
    "val_accuracy": ("val acc", ("val_accuracy",)),
    "val_layer4_box": ("val L4 box", ("val_attention_correctness", "layer4", "box")),
}


def _mask_stats(ms: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """``{group: {statistic: seed_stats}}`` of the runs' test-split mask statistics (runs that
    predate them have none: ``None`` unless every seed has them)."""
    if not all(m.get("masks") for m in ms):
        return None
    groups = ms[0]["masks"]
    return {
        g: {s: seed_stats([m["masks"][g].get(s) for m in ms]) for s in groups[g]} for g in groups
    }


def row_label(r: dict[str, Any]) -> str:
    """The method's label, plus the last layer's gate where the row overrides it."""
    return r["label"] + (f", L4 {r['layer4_gate']}" if "-l4" in r["row"] else "")


def _precisions(r: dict[str, Any]) -> str:
    """The row's training precision, or each seed's where they differ."""
    precisions = r.get("precisions") or [r["precision"]]
    if len(set(precisions)) == 1:
        return precisions[0]
    seeds: dict[str, list[str]] = {}
    for seed, precision in zip(r["seeds"], precisions, strict=True):
        seeds.setdefault(precision, []).append(str(seed))
    return ", ".join(f"{p} ({', '.join(s)})" for p, s in seeds.items())


def _mean(stats: dict[str, Any]) -> str:
    """The mean alone (the per-layer and per-scale tables leave the spread to results.json)."""
    return format_stats({"mean": stats["mean"]})


def _overview(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Every row on every dataset in one table: test accuracy and the last layer's box share, the
    comparison the paper makes, with each row's seeds."""
    if not results:
        return []
    datasets = list(results)
    rows = sorted({row for d in datasets for row in results[d]}, key=row_order)
    lines = [
        "## All datasets",
        "",
        "Test accuracy / layer-4 box correctness (mean ± std over the seeds in brackets; "
        "– where the row has no finished run on that dataset).",
        "",
        "| method | L4 | " + " | ".join(d.upper() for d in datasets) + " |",
        "|---" * (2 + len(datasets)) + "|",
    ]
    for row in rows:
        first = next(results[d][row] for d in datasets if row in results[d])
        cells = []
        for d in datasets:
            r = results[d].get(row)
            if r is None:
                cells.append("–")
                continue
            seeds = ",".join(map(str, r["seeds"]))
            box = format_stats(r["box_by_layer"].get("layer4"))
            cells.append(f"{format_stats(r['test_accuracy'])} / {box} [{seeds}]")
        gate = first["layer4_gate"] or "–"
        lines.append(f"| {row_label(first)} | {gate} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _slopes(r: dict[str, Any]) -> str:
    """The steepest final slope over the seeds of each curve, marked where not flat."""
    cells = []
    for q in CURVES:
        values = (r.get("final_slope") or {}).get(q, {}).get("values") or []
        cells.append(slope_text(max(values, key=abs) if values else None))
    return " / ".join(cells)


def _comparison_lines(
    dataset: str, rows: dict[str, dict[str, Any]], tests: dict[str, dict[str, Any]]
) -> list[str]:
    """Each row against CTX: the difference of the means and Welch's p, per quantity."""
    intro = (f"Against CTX on {dataset.upper()}: difference of the means (row − CTX), Welch's "
             "t-test p; **bold**: called (p < 0.05); n/a: a side with fewer than two seeds. "
             "95 % interval of the row's test accuracy.")  # fmt: skip
    return results.comparison_lines(rows, tests, reference=REFERENCE, compared=COMPARED,
                                    intro=intro, label=row_label)  # fmt: skip


def _mask_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Per layer: where the mask's mass goes and how consistent it is (runs that record it)."""
    have = {row: r for row, r in rows.items() if r.get("masks")}
    if not have:
        return []
    lines = [
        "",
        "What the masks cover and how consistent they are (test split, mean over seeds; "
        "docs/e1.md defines each): mass on the queried digit / other digits / background "
        "(a uniform mask: the area shares in the last line), entropy relative to uniform, total "
        "variation per unit mass, share in the peak's connected region, and the correlation "
        "with the next layer's mask.",
        "",
        "| method | layer | queried | others | background | entropy | TV | peak region "
        "| agreement with next |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    area = None
    for r in have.values():
        masks = r["masks"]
        for k in (1, 2, 3, 4):
            g = masks.get(f"layer{k}")
            if g is None:
                continue
            nxt = masks.get(f"layer{k}-{k + 1}", {}).get("agreement")
            cells = [_mean(g[c]) for c in MASK_COLUMNS] + [_mean(nxt) if nxt else "–"]
            lines.append(f"| {row_label(r)} | {k} | " + " | ".join(cells) + " |")
            area = area or [_mean(g[f"area_{c}"]) for c in REGIONS]
    if area:
        lines.append("| uniform mask | – | " + " | ".join(area) + " | 1 | 0 | 1 | – |")
    return lines


def results_markdown(summary: dict[str, Any]) -> str:
    """The results of :func:`assemble` as Markdown."""
    lines = [
        *markdown_head(summary, "E1 attribute prediction"),
        "Test accuracy at the best validation epoch; box / stroke: attention correctness (share "
        "of the mask's mass on the queried digit's box / stroke pixels), mean of the attention "
        "layers that attend (all 4, SAN only layer 4); best layer: the highest per-layer box "
        "correctness. Mean ± sample standard deviation over the seeds listed; one seed has no ±. "
        "L4: the last layer's gate. Precision: bf16 autocast where the machine computes bf16 "
        "natively, else fp32 (per seed where a row mixes them). Time: training time per run. "
        "Final slope: the steepest over the seeds of the least-squares slope per epoch of the "
        f"validation accuracy and layer-4 box share over the last {SLOPE_EPOCHS} epochs; ↗ / ↘ "
        f"where its size is {FLAT_SLOPE} or more (the curve is not flat).",
        "",
        *_overview(summary["results"]),
    ]
    for d, rows in summary["results"].items():
        lines += [
            f"## {d.upper()} (training time of all runs: {summary['wall_time_min'][d] / 60:.1f} h)",
            "",
            "| method | L4 | seeds | precision | test acc | box | stroke | best layer (box) "
            "| time | final slope (val acc / L4 box) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows.values():
            best = max(r["box_by_layer"].items(), key=lambda kv: kv[1]["mean"] or 0)
            lines.append(
                f"| {row_label(r)} | {r['layer4_gate'] or '–'} | "
                f"{','.join(map(str, r['seeds']))} | {_precisions(r)} | "
                f"{format_stats(r['test_accuracy'])} | "
                f"{format_stats(r['box'])} | {format_stats(r['stroke'])} | "
                f"{best[0][-1]}: {format_stats(best[1])} | "
                f"{format_stats(r['training_time_min'], 1)} min | {_slopes(r)} |"
            )
        lines += _comparison_lines(d, rows, summary.get("comparisons", {}).get(d, {}))
        lines += _mask_lines(rows)
        lines += ["", "Attention correctness per layer, box / stroke (mean over seeds):", ""]
        lines += ["| method | layer 1 | layer 2 | layer 3 | layer 4 |", "|---|---|---|---|---|"]
        for r in rows.values():
            cells = [
                f"{_mean(r['box_by_layer'][k])} / {_mean(r['stroke_by_layer'][k])}"
                for k in r["box_by_layer"]
            ]
            lines.append(f"| {row_label(r)} | " + " | ".join(cells) + " |")
        bins = list(next(iter(rows.values()))["accuracy_by_scale"])
        lines += ["", "Accuracy by digit scale (mean over seeds):", ""]
        lines += ["| method | " + " | ".join(bins) + " |", "|---" * (1 + len(bins)) + "|"]
        for r in rows.values():
            cells = [_mean(r["accuracy_by_scale"][b]) for b in bins]
            lines.append(f"| {row_label(r)} | " + " | ".join(cells) + " |")
        lines += ["", *markdown_figures(summary, d)]
    return "\n".join(lines)
