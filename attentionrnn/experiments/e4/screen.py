"""Decide E4's screening (issue 34) on the validation split only: ``attentionrnn e4 screen``.

Each results folder of ``attentionrnn e4 reproduce --budget B`` is one candidate (its name: the
folder's name less ``e4-``, as ``e4 table`` finds a folder's budget). For every candidate and mask
head, :func:`screen` reads the finished runs' ``metrics.json`` **validation history only** — the
``val_*`` entries of each epoch (and of the ``locate`` stage, as epoch 0 of the curves), never a
``test_*`` number — and gives the last epoch's values
(the weights tested are the last epoch's, ``select="last"``) as mean ± std over seeds, the final
slope per epoch of validation edit success and query ratio (least squares over the last
:data:`~attentionrnn.engine.convergence.SLOPE_EPOCHS` epochs; not flat from
:data:`~attentionrnn.engine.convergence.FLAT_SLOPE`: the engine's rule), and each
candidate against the reference candidate with the same head (difference of the means, Welch's p
from :func:`attentionrnn.engine.stats.compare`, called only at p < 0.05). Writes
``screening.{md,json}`` and the validation curves ``screening_curves_DATASET.png``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from attentionrnn.engine.commands import check_runs
from attentionrnn.engine.convergence import FLAT_SLOPE, SLOPE_EPOCHS, final_slope, slope_text
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.results import markdown_table, scaled_comparison
from attentionrnn.engine.runs import finished_runs, format_stats, seed_stats
from attentionrnn.engine.state import atomic_write_json
from attentionrnn.engine.stats import ALPHA, compare, format_comparison
from attentionrnn.experiments.e4.config import TEACHER_SEED, E4Config
from attentionrnn.experiments.e4.metrics import measures
from attentionrnn.experiments.e4.model import E4_MASKS, ROW_TABLE

__all__ = ["QUANTITIES", "candidate_name", "screen", "screening_markdown"]

logger = logging.getLogger("attentionrnn.e4.screen")

#: the validation measures of the last epoch: (key in the history without ``val_``, header,
#: scale, digits)
QUANTITIES = measures("edit_success", "mask_correctness", "mask_others", "mask_background",
                      "mask_query_ratio", "leak_l1", "truth_l1")  # fmt: skip
#: the curves whose final slope says whether a candidate has settled
SLOPED = ("edit_success", "mask_query_ratio")
#: the prefix ``reproduce``'s default folders carry (results/e4-BUDGET)
PREFIX = "e4-"


def candidate_name(folder: str | Path) -> str:
    """A candidate's name: its folder's name less ``e4-`` (``results/e4-screen-mul`` is
    ``screen-mul``)."""
    return Path(folder).resolve().name.removeprefix(PREFIX)


def _design(config: dict[str, Any]) -> str:
    """The screened options of a run's recorded config (runs before them: the defaults)."""
    text = f"{config.get('query_fusion', 'add')} fusion"
    if weight := config.get("w_teacher") or 0.0:
        text += f", teacher ×{weight:g} (seed {config.get('teacher_seed', TEACHER_SEED)})"
    if weight := config.get("w_keep") or 0.0:
        text += f", keep others ×{weight:g}"
    if config.get("edit_query", "both") == "mask":
        text += ", query through the mask only"
    if weight := config.get("w_apart") or 0.0:
        text += f", masks of two queries apart ×{weight:g}"
    if weight := config.get("w_identify") or 0.0:
        text += f", masked features name the digit ×{weight:g}"
    if steps := config.get("locate_steps") or 0:
        text += f", after {steps} steps locating the queried digit"
    return text


def _run_point(metrics: dict[str, Any], where: Path) -> dict[str, Any]:
    """What one run's validation history gives: the last epoch's ``val_*`` values, the query-
    blind ratio, the final slopes. Only ``history`` and ``config`` are read."""
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    if not history:
        raise UserError(f"{where}: no validation history (not a finished E4 run)")
    last = history[-1]
    config = metrics.get("config") or {}
    # --locate-steps: the validation values after the first stage, before the GAN (epoch 0)
    stage = metrics.get("locate")
    staged = [{"epoch": 0, **{f"val_{q}": stage.get(f"val_{q}") for q in SLOPED}}] if stage else []
    return {
        "epoch": last.get("epoch", len(history)),
        "select": config.get("select", "last"),
        "design": _design(config),
        "precision": metrics.get("precision") or config.get("precision") or "?",
        "values": {q: last.get(f"val_{q}") for q, *_ in QUANTITIES},
        "uniform_query_ratio": last.get("val_uniform_query_ratio"),
        "final_slope": {q: final_slope(history, f"val_{q}") for q in SLOPED},
        "curve": staged + [
            {"epoch": h.get("epoch", k + 1), **{f"val_{q}": h.get(f"val_{q}") for q in SLOPED}}
            for k, h in enumerate(history)
        ],  # fmt: skip
        "stage_query_ratio": stage.get("val_mask_query_ratio") if stage else None,
    }


def _row(candidate: str, mask: str, points: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One candidate × mask head: mean ± std over its seeds of every measure."""
    ps = [points[s] for s in sorted(points)]
    return {
        "candidate": candidate,
        "mask": mask,
        "label": ROW_TABLE[mask].label if mask in ROW_TABLE else mask,
        "design": " / ".join(dict.fromkeys(p["design"] for p in ps)),
        "seeds": sorted(points),
        "epochs": [p["epoch"] for p in ps],
        "precision": [p["precision"] for p in ps],
        "select": [p["select"] for p in ps],
        "values": {q: seed_stats([p["values"][q] for p in ps]) for q, *_ in QUANTITIES},
        "uniform_query_ratio": seed_stats([p["uniform_query_ratio"] for p in ps]),
        "final_slope": {q: seed_stats([p["final_slope"][q] for p in ps]) for q in SLOPED},
        "curves": [p["curve"] for p in ps],
        "stage_query_ratio": {s: p["stage_query_ratio"] for s, p in zip(sorted(points), ps,
                                                                         strict=True)
                              if p["stage_query_ratio"] is not None},  # fmt: skip
    }


def _mask_order(mask: str) -> tuple[int, str]:
    return (E4_MASKS.index(mask) if mask in E4_MASKS else len(E4_MASKS), mask)


def _load(folder: Path, masks: tuple[str, ...] | None) -> dict[str, dict[str, dict[int, Any]]]:
    """``{dataset: {mask: {seed: run point}}}`` of a candidate folder's finished runs."""
    if not (folder / "runs").is_dir():
        raise UserError(f"{folder}: no runs/ folder of finished runs (a results folder of "
                        "'attentionrnn e4 reproduce')")  # fmt: skip
    check_runs(folder, E4Config)
    found: dict[str, dict[str, dict[int, Any]]] = {}
    for dataset, rows in finished_runs(folder).items():
        for mask, seeds in rows.items():
            if masks and mask not in masks:
                continue
            for seed, metrics in seeds.items():
                where = folder / "runs" / dataset / mask / f"seed{seed}" / "metrics.json"
                point = _run_point(metrics, where)
                found.setdefault(dataset, {}).setdefault(mask, {})[seed] = point
    if not found:
        which = f" of {', '.join(masks)}" if masks else ""
        raise UserError(f"{folder}: no finished run{which} under runs/ "
                        "(runs/DATASET/MASK/seedN/metrics.json)")  # fmt: skip
    return found


def _against(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """``row`` against the reference candidate's row of the same head (Welch, per measure)."""
    return {q: compare(row["values"][q]["values"], ref["values"][q]["values"])
            for q, *_ in QUANTITIES}  # fmt: skip


def screen(
    folders: list[str | Path],
    reference: str | None = None,
    out: str | Path | None = None,
    masks: tuple[str, ...] | None = None,
    figure: bool = True,
) -> dict[str, Any]:
    """Every candidate folder's finished runs, on the validation split, against ``reference``
    (a candidate's name; default: the first folder's). Writes ``OUT/screening.{md,json}`` and,
    with ``figure``, ``OUT/screening_curves_DATASET.png`` (``out``: default the first folder)."""
    if not folders:
        raise UserError("give at least one results folder (one per candidate)")
    paths = [Path(f) for f in folders]
    names = [candidate_name(p) for p in paths]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"two folders give the same candidate name ({', '.join(twice)}): each "
                        "folder is one candidate, named by its folder less 'e4-'")  # fmt: skip
    reference = reference or names[0]
    if reference not in names:
        raise UserError(f"--reference {reference}: not among the candidates "
                        f"({', '.join(names)}: the folders' names less 'e4-')")  # fmt: skip
    loaded = {name: _load(path, masks) for name, path in zip(names, paths, strict=True)}
    summary: dict[str, Any] = {
        "split": "val",
        "reference": reference,
        "candidates": {n: str(p) for n, p in zip(names, paths, strict=True)},
        "slope_epochs": SLOPE_EPOCHS,
        "flat_slope": FLAT_SLOPE,
        "alpha": ALPHA,
        "datasets": {},
    }
    datasets = sorted({d for runs in loaded.values() for d in runs})
    for dataset in datasets:
        rows = [
            _row(name, mask, points)
            for name in names
            for mask, points in sorted(
                loaded[name].get(dataset, {}).items(), key=lambda item: _mask_order(item[0])
            )  # fmt: skip
        ]
        refs = {r["mask"]: r for r in rows if r["candidate"] == reference}
        for r in rows:
            if r["candidate"] != reference and r["mask"] in refs:
                r["against"] = _against(r, refs[r["mask"]])
        summary["datasets"][dataset] = {"rows": rows}
    out = Path(out) if out is not None else paths[0]
    out.mkdir(parents=True, exist_ok=True)
    if figure:
        for dataset, entry in summary["datasets"].items():
            entry["curves"] = _curves(entry["rows"], out / f"screening_curves_{dataset}.png",
                                      f"{dataset.upper()}: validation curves").name  # fmt: skip
    atomic_write_json(summary, out / "screening.json")
    (out / "screening.md").write_text(screening_markdown(summary) + "\n")
    logger.info("wrote %s and %s", out / "screening.md", out / "screening.json")
    return summary


def _curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Validation query ratio and edit success per epoch, one line per candidate × head (thick:
    the mean over seeds)."""
    from attentionrnn.engine.figures import curve_figure

    def value(key: str):
        return lambda h: math.nan if h.get(key) is None else h[key]

    curves = {f"{r['candidate']}: {r['label']}": r["curves"] for r in rows}
    panels = [("validation query ratio (queried / all digits)", value("val_mask_query_ratio")),
              ("validation edit success", value("val_edit_success"))]  # fmt: skip
    return curve_figure(curves, path, panels, x="epoch", title=title)


def _slopes(r: dict[str, Any]) -> str:
    """The steepest final slope over the seeds of each sloped curve, marked where not flat."""
    cells = []
    for q in SLOPED:
        values = r["final_slope"][q]["values"]
        cells.append(slope_text(max(values, key=abs) if values else None))
    return " / ".join(cells)


def _ratio(r: dict[str, Any]) -> str:
    """The query ratio with its query-blind level (a mask that ignores the query)."""
    text = format_stats(r["values"]["mask_query_ratio"], 1, 100.0)
    blind = r["uniform_query_ratio"]
    level = "not recorded" if blind["mean"] is None else f"{100 * blind['mean']:.1f}"
    return f"{text} (blind {level})"


def _value_cells(r: dict[str, Any]) -> list[str]:
    cells = [format_stats(r["values"][q], digits, scale) for q, _, scale, digits in QUANTITIES]
    cells[4] = _ratio(r)
    return cells


def _section(dataset: str, entry: dict[str, Any], reference: str) -> list[str]:
    rows = entry["rows"]
    header = ["candidate", "design", "mask", "seeds", "epochs", "precision",
              *(q[1] for q in QUANTITIES), "final slope / epoch: edit success / query ratio"]
    table = [
        [r["candidate"], r["design"], r["label"], ",".join(map(str, r["seeds"])),
         ",".join(map(str, r["epochs"])), ",".join(r.get("precision") or []), *_value_cells(r),
         _slopes(r)]
        for r in rows
    ]  # fmt: skip
    lines = [f"## {dataset.upper()}", "", *markdown_table(header, table), ""]
    against = [
        [r["candidate"], r["label"], ",".join(map(str, r["seeds"])),
         *("ref" if r["candidate"] == reference else
           format_comparison(scaled_comparison(r["against"][q], scale), digits)
           if "against" in r else
           "no reference run" for q, _, scale, digits in QUANTITIES)]
        for r in rows
    ]  # fmt: skip
    lines += [
        f"Against `{reference}` with the same mask head: difference of the means (units as "
        f"above), Welch's p, **bold** where called (p < {ALPHA}); n/a with fewer than 2 seeds "
        "on a side.",
        "",
        *markdown_table(["candidate", "mask", "seeds", *(q[1] for q in QUANTITIES)], against),
        "",
    ]
    staged = [f"{r['candidate']} {r['label']} seed {seed}: {100 * ratio:.1f} %"
              for r in rows for seed, ratio in r["stage_query_ratio"].items()]  # fmt: skip
    if staged:
        lines += ["Query ratio after the locate stage, before the GAN's first epoch (epoch 0 of "
                  f"the curves): {'; '.join(staged)}.", ""]  # fmt: skip
    other = [f"{r['candidate']} {r['label']}" for r in rows if set(r["select"]) != {"last"}]
    if other:
        lines += [f"Not `--select last` ({', '.join(other)}): their tested weights are not the "
                  "last epoch's; the table still shows the last epoch.", ""]  # fmt: skip
    if entry.get("curves"):
        lines += [f"![{dataset} validation curves]({entry['curves']})", ""]
    return lines


def screening_markdown(summary: dict[str, Any]) -> str:
    """The screening as Markdown: per dataset, the candidates' table and their comparison."""
    folders = ", ".join(f"`{n}` ({p})" for n, p in summary["candidates"].items())
    lines = [
        f"# E4 screening on the validation split — reference `{summary['reference']}`",
        "",
        f"Candidates: {folders}. From each finished run's validation history only (no test "
        "number is read): the last epoch's values (the weights tested are the last epoch's), "
        "mean ± std over the seeds. Mask shares: of the edit module's mask mass on the queried "
        "digit's strokes, the other digits' strokes and the background; query ratio: queried / "
        "(queried + others), beside it the level of a mask that ignores the query; leak L1: the "
        "colour change on the other digits; L1 to exact: against the exactly rendered edit. "
        f"Final slope: least squares per epoch over the last {summary['slope_epochs']} epochs, "
        f"the steepest seed, ↗ / ↘ where not flat (|slope| ≥ {summary['flat_slope']}).",
        "",
    ]
    for dataset, entry in summary["datasets"].items():
        lines += _section(dataset, entry, summary["reference"])
    return "\n".join(lines).rstrip()
