"""Why the masks are what they are: every finished run of a results folder measured again on the
validation split, layer by layer (``attentionrnn e1 masks OUT``).

For each run with its best weights: where each layer's mask puts its mass (the queried digit, the
other digits, the background, against a uniform mask's area shares), how concentrated and
consistent it is (:mod:`~attentionrnn.experiments.e1.mask_stats`), its box share, and from the
run's learning curve the epoch from which a layer's validation box share stays below the uniform
level. Writes ``OUT/mask_diagnosis.{json,md}`` and ``OUT/diagnosis_masks_DATASET.png`` (every
layer of each row's lowest seed on the same validation images). The data is regenerated from each
run's recipe when the recorded file is not here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentionrnn.data.attribute import E1Data
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast
from attentionrnn.engine.results import learning_curves
from attentionrnn.engine.runs import finished_runs, format_stats, seed_stats
from attentionrnn.engine.state import atomic_write_json
from attentionrnn.engine.stats import compare, format_comparison
from attentionrnn.engine.trainer import BEST
from attentionrnn.experiments.e1.config import E1Config
from attentionrnn.experiments.e1.evaluate import evaluate
from attentionrnn.experiments.e1.figures import curve_figure, load_run, mask_figure, pick_samples
from attentionrnn.experiments.e1.mask_stats import REGIONS
from attentionrnn.experiments.e1.table import row_label, row_order, summarize
from attentionrnn.experiments.e1.train import recorded_data_file, resolve_data

__all__ = ["below_uniform_from", "diagnose", "diagnosis_markdown"]

logger = logging.getLogger("attentionrnn.e1.diagnose")
LAYERS = (1, 2, 3, 4)


def _data_for(metrics: dict[str, Any], out: Path, data_dir: str | None, mnist: str | None) -> Path:
    """The run's data file: the recorded one (or its name in ``OUT/data/``) where it exists, else
    regenerated from the recipe."""
    recorded = recorded_data_file(metrics["data"]["path"], out)
    if recorded is not None:
        return recorded
    fields = {f.name for f in dataclasses.fields(E1Config)}
    config = E1Config(**{k: v for k, v in metrics["config"].items() if k in fields})
    config = dataclasses.replace(
        config, data=None, data_dir=data_dir or config.data_dir, mnist=mnist or config.mnist,
        progress=False,
    )  # fmt: skip
    return resolve_data(config)[0]


def below_uniform_from(curve: list[float], uniform: float, margin: float = 1e-4) -> int | None:
    """The first 1-based epoch from which every value of ``curve`` is below ``uniform`` (by more
    than ``margin``: a mask of ones scores the uniform share up to rounding)."""
    epoch = None
    for e, value in enumerate(curve, start=1):
        if value < uniform - margin:
            epoch = epoch or e
        else:
            epoch = None
    return epoch


@torch.no_grad()
def query_dependence(
    model: torch.nn.Module, data: E1Data, idx: np.ndarray, precision: str, seed: int = 0
) -> dict[str, float]:
    """Per layer, the mean correlation (over samples) between the mask for the sample's query and
    the mask for another query value on the same image: 1 for a mask that ignores the query."""
    rng = np.random.default_rng(seed)
    sums: dict[str, list[float]] = {}
    for start in range(0, len(idx), 500):
        batch = idx[start : start + 500]
        img, query, _ = data.batch(batch)
        other = (query + torch.from_numpy(rng.integers(1, data.num_queries, len(batch)))) % (
            data.num_queries
        )
        with autocast(precision):
            _, masks = model(img, query, return_masks=True)
            _, others = model(img, other, return_masks=True)
        for k, (a, b) in enumerate(zip(masks, others, strict=True)):
            a = a.float().flatten(1) - a.float().flatten(1).mean(1, keepdim=True)
            b = b.float().flatten(1) - b.float().flatten(1).mean(1, keepdim=True)
            denom = a.norm(dim=1) * b.norm(dim=1)
            corr = (a * b).sum(1) / denom
            sums.setdefault(f"layer{k + 1}", []).extend(corr[denom > 0].tolist())
    return {k: float(np.mean(v)) if v else float("nan") for k, v in sums.items()}


def _uniform_box(data: E1Data, idx: np.ndarray) -> float:
    """A uniform mask's box share: the mean box area over the image area."""
    x0, y0, x1, y1 = data.box[idx].T
    return float(np.mean((x1 - x0) * (y1 - y0)) / (data.images.shape[1] * data.images.shape[2]))


def diagnose(
    out: str | Path,
    split: str = "val",
    limit: int | None = None,
    datasets: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    data_dir: str | None = None,
    mnist: str | None = None,
    figure: bool = True,
    reference: str | None = None,
) -> dict[str, Any]:
    """Measure every finished run under ``OUT/runs`` on ``split`` (its first ``limit`` samples);
    test every row against the ``reference`` row (default: CTX where present) on the validation
    split."""
    out = Path(out)
    found = finished_runs(out)
    if not found:
        raise UserError(f"{out}: no finished runs under runs/")
    summary: dict[str, Any] = {"split": split, "limit": limit, "datasets": {}}
    for dataset, rows in found.items():
        if datasets and dataset not in datasets:
            continue
        loaded: dict[Path, E1Data] = {}
        entry: dict[str, Any] = {"rows": {}}
        picked: dict[str, Path] = {}
        for row in sorted(rows, key=row_order):
            if methods and row.split("-l4")[0] not in methods:
                continue
            runs = {}
            for seed, metrics in sorted(rows[row].items()):
                run = out / "runs" / dataset / row / f"seed{seed}"
                if not (run / BEST).is_file():
                    continue
                path = _data_for(metrics, out, data_dir, mnist)
                data = loaded.get(path) or loaded.setdefault(path, E1Data(path, metrics["task"]))
                idx = data.indices(split)[:limit]
                entry["uniform_box"] = _uniform_box(data, idx)
                # the learning curves were measured on the whole validation split
                curve_uniform = _uniform_box(data, data.indices("val"))
                logger.info("%s %s seed %d: %d %s samples", dataset, row, seed, len(idx), split)
                model = load_run(run)
                result = evaluate(model, data, idx, 500, full=True, precision=metrics["precision"])

                curves = {
                    f"layer{k}": [h["val_attention_correctness"][f"layer{k}"]["box"]
                                  for h in metrics["history"]]
                    for k in LAYERS
                }  # fmt: skip
                query = query_dependence(model, data, idx, metrics["precision"])
                runs[seed] = {
                    "accuracy": result["accuracy"],
                    "query_dependence": query,
                    "box": {k: v["box"] for k, v in result["attention_correctness"].items()},
                    "masks": result["masks"],
                    "below_uniform_from": {
                        k: below_uniform_from(c, curve_uniform) for k, c in curves.items()
                    },
                    "box_curve": curves,
                }
            if runs:
                entry["rows"][row] = _row(row, rows[row], runs)
                picked[entry["rows"][row]["label"]] = (
                    out / "runs" / dataset / row / (f"seed{min(runs)}")
                )
        if figure and picked:
            data = next(iter(loaded.values()))
            samples = pick_samples(data, count=3, seed=0, split=split)
            name = f"diagnosis_masks_{dataset}.png"
            title = f"{dataset.upper()}: every layer's mask ({split} images)"
            mask_figure(picked, data, out / name, samples=samples, layers=LAYERS, title=title)
            entry["figure"] = name
            # the validation learning curves of the rows measured (what the training recorded)
            labels = {r: v["label"] for r, v in entry["rows"].items()}
            curves = learning_curves({r: rows[r] for r in labels}, labels.__getitem__, row_order)
            path = out / f"diagnosis_curves_{dataset}.png"
            title = f"{dataset.upper()}: validation curves"
            entry["curves"] = curve_figure(curves, path, title).name
        ref = reference or ("ctx" if "ctx" in entry["rows"] else None)
        if ref in entry["rows"]:
            entry["reference"] = ref
            entry["against"] = _against(entry["rows"], ref)
        summary["datasets"][dataset] = entry
    atomic_write_json(summary, out / "mask_diagnosis.json")
    (out / "mask_diagnosis.md").write_text(diagnosis_markdown(summary))
    logger.info("wrote %s and %s", out / "mask_diagnosis.md", out / "mask_diagnosis.json")
    return summary


def _row(row: str, metrics: dict[int, dict[str, Any]], runs: dict[int, dict]) -> dict[str, Any]:
    """A row's measurements: mean ± std over its seeds, and each seed's."""
    first = next(iter(runs.values()))
    stats = {
        g: {s: seed_stats([r["masks"][g][s] for r in runs.values()]) for s in first["masks"][g]}
        for g in first["masks"]
    }
    return {
        "label": row_label(summarize(row, {s: metrics[s] for s in runs})),
        "seeds": sorted(runs),
        "accuracy": seed_stats([r["accuracy"] for r in runs.values()]),
        # what the training recorded on the whole validation split, at the best epoch
        "val_accuracy": seed_stats([metrics[s]["val_accuracy"] for s in runs]),
        "val_layer4_box": seed_stats([_best_epoch_box(metrics[s]) for s in runs]),
        "box": {k: seed_stats([r["box"][k] for r in runs.values()]) for k in first["box"]},
        "query_dependence": {
            k: seed_stats([r["query_dependence"][k] for r in runs.values()])
            for k in first["query_dependence"]
        },
        "masks": stats,
        "per_seed": runs,
    }


def _best_epoch_box(metrics: dict[str, Any]) -> float | None:
    """The validation layer-4 box share at the run's best epoch."""
    history = metrics.get("history") or []
    best = metrics.get("best_epoch")
    if not best or best > len(history):
        return None
    return history[best - 1]["val_attention_correctness"]["layer4"]["box"]


def _against(rows: dict[str, dict[str, Any]], reference: str) -> dict[str, dict[str, Any]]:
    """Every row against ``reference`` on the validation split, by the one rule (Welch)."""
    ref = rows[reference]
    values = {
        "val_accuracy": lambda r: r["val_accuracy"]["values"],
        "val_layer4_box": lambda r: r["val_layer4_box"]["values"],
        **{f"layer{k}_box": (lambda r, k=k: r["box"][f"layer{k}"]["values"]) for k in LAYERS},
    }
    return {
        row: {q: compare(get(r), get(ref)) for q, get in values.items()}
        for row, r in rows.items()
        if row != reference
    }


def _m(stats: dict[str, Any] | None) -> str:
    return format_stats(stats)


def diagnosis_markdown(summary: dict[str, Any]) -> str:
    """The diagnosis as Markdown: per dataset, per layer and row."""
    limit = f" (first {summary['limit']} samples)" if summary.get("limit") else ""
    lines = [
        f"# E1 masks, layer by layer — {summary['split']} split{limit}",
        "",
        "Each finished run's best weights measured again. Mass on the queried digit's strokes / "
        "the other digits' strokes / the background, with a uniform mask's share (the area) "
        "beside; box: share on the queried digit's box; entropy relative to uniform (1 = "
        "uniform); TV: total variation per unit mass (0 = flat); peak: share of the mass in "
        "the peak's connected above-mean region; border: share on the grid's outer ring of cells; "
        "next: correlation with the next layer's mask; other query: correlation between the "
        "masks of the same image for its query and for another query value (1: the mask ignores "
        "the query). "
        "Mean ± std over the seeds. Below uniform from: per seed, the epoch from which the "
        "layer's validation box share stayed below a uniform mask's to the end of training.",
    ]
    for dataset, entry in summary["datasets"].items():
        lines += ["", f"## {dataset.upper()} (uniform box share {entry['uniform_box']:.3f})", ""]
        if entry.get("against"):
            ref = entry["rows"][entry["reference"]]
            lines += [
                f"Against {ref['label']} on the validation split: best validation accuracy and "
                "layer-4 box share at the best epoch (whole split, as trained), box share per "
                "layer (the samples measured here); difference of the means, Welch's p, "
                "**bold** where called (p < 0.05).",
                "",
                "| method | seeds | val acc | val L4 box | "
                + " | ".join(f"L{k} box" for k in LAYERS)
                + " |",
                "|---|---|---|---|" + "---|" * len(LAYERS),
                f"| {ref['label']} | {','.join(map(str, ref['seeds']))} | "
                f"{_m(ref['val_accuracy'])} | {_m(ref['val_layer4_box'])} | "
                + " | ".join(_m(ref["box"][f"layer{k}"]) for k in LAYERS)
                + " |",
            ]
            for row, tests in entry["against"].items():
                r = entry["rows"][row]
                cells = [
                    format_comparison(tests[q])
                    for q in ("val_accuracy", "val_layer4_box", *(f"layer{k}_box" for k in LAYERS))
                ]
                lines.append(
                    f"| {r['label']} | {','.join(map(str, r['seeds']))} | "
                    + " | ".join(cells)
                    + " |"
                )
            lines.append("")
        for k in LAYERS:
            g = f"layer{k}"
            lines += [
                f"### Layer {k}",
                "",
                "| method | seeds | box | queried | others | background | border | entropy | TV "
                "| peak | next | same mask, other query | below uniform from |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            area = None
            for r in entry["rows"].values():
                m = r["masks"][g]
                nxt = r["masks"].get(f"layer{k}-{k + 1}", {}).get("agreement")
                below = ", ".join(
                    f"s{s}: {v['below_uniform_from'][g] or '–'}" for s, v in r["per_seed"].items()
                )
                cells = [
                    _m(r["box"][g]),
                    *(_m(m[x]) for x in (*REGIONS, "border", "entropy", "tv", "peak_region")),
                    _m(nxt) if nxt else "–",
                    _m(r["query_dependence"][g]),
                    below,
                ]
                seeds = ",".join(map(str, r["seeds"]))
                lines.append(f"| {r['label']} | {seeds} | " + " | ".join(cells) + " |")
                area = area or [f"{m[f'area_{x}']['mean']:.3f}" for x in (*REGIONS, "border")]
            if area:
                box = f"{entry['uniform_box']:.3f}"
                lines.append(f"| uniform mask | – | {box} | " + " | ".join(area) + " | 1 | 0 | "
                             "1 | – | 1 | – |")  # fmt: skip
            lines.append("")
        if entry.get("curves"):
            lines += [f"![{dataset} validation curves]({entry['curves']})", ""]
        if entry.get("figure"):
            lines += [f"![{dataset} masks at every layer]({entry['figure']})", ""]
    return "\n".join(lines)


def load_diagnosis(out: str | Path) -> dict[str, Any]:
    """The ``mask_diagnosis.json`` of a results folder."""
    return json.loads(Path(out, "mask_diagnosis.json").read_text())
