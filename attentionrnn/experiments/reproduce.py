"""Run every attention method on MREF, MDIST and MBG and write the paper-style results table.

``reproduce(out, budget)`` trains each (dataset, method) pair with :func:`train` into
``OUT/runs/DATASET/METHOD`` (so an interrupted reproduction resumes, and finished runs are
reused), then writes ``OUT/results.json``, ``OUT/results.md`` and one mask figure per dataset
(``OUT/masks_DATASET.png``). All methods of a dataset share one generated dataset and one seed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from attentionrnn.experiments.train import (
    DATASETS,
    E1Data,
    TrainConfig,
    _Dist,
    atomic_write_json,
    resolve_data,
    train,
)

logger = logging.getLogger("attentionrnn.reproduce")

#: The rows of the table, in the paper's order (baselines first).
METHODS = ("none", "san", "local", "ctx", "arnn_ind", "arnn", "arnn_quad", "brnn")
METHOD_LABELS = {
    "none": "no attention",
    "san": "SAN (global softmax)",
    "local": "¬CTX (1×1 local)",
    "ctx": "CTX (PAN)",
    "arnn_ind": "ARNN_ind (no recurrence)",
    "arnn": "ARNN (bi)",
    "arnn_quad": "ARNN (quad)",
    "brnn": "BRNN",
}
# Slowest first, so parallel jobs finish together.
_COST_ORDER = ("arnn_quad", "arnn", "brnn", "san", "arnn_ind", "ctx", "local", "none")


@dataclass(frozen=True)
class Budget:
    """How much data and training one budget spends per (dataset, method) run."""

    samples: int
    epochs: int
    batch_size: int
    patience: int
    description: str


BUDGETS: dict[str, Budget] = {
    # 24 runs on 2 cores (2 jobs of 1 thread): 2,800 samples x 4 epochs measured 23 min here,
    # so this (twice the data) is about 45 min; see docs/experiments.md.
    "quick": Budget(
        samples=5600,
        epochs=4,
        batch_size=50,
        patience=50,
        description="~5,600 samples per dataset, 4 epochs, batch 50: a smoke-scale comparison",
    ),
    # The PAN protocol.
    "full": Budget(
        samples=50000,
        epochs=300,
        batch_size=200,
        patience=50,
        description="PAN protocol: 50,000 samples (30k/10k/10k), up to 300 epochs, batch 200, "
        "early stop after 50 epochs without validation improvement",
    ),
}


def _run_one(config: TrainConfig) -> dict[str, Any]:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return train(config)


def reproduce(
    out: str | Path,
    budget: str | Budget = "quick",
    datasets: tuple[str, ...] = DATASETS,
    methods: tuple[str, ...] = METHODS,
    mnist: str | None = None,
    seed: int = 0,
    task: str = "color",
    jobs: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    figure: bool = True,
    data: dict[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Train every method on every dataset and write ``results.{json,md}`` and mask figures.

    Args:
        out: output folder.
        budget: ``"quick"``, ``"full"`` (see :data:`BUDGETS`) or a :class:`Budget`.
        datasets, methods: subsets of the table to run.
        mnist: MNIST folder for the generator (default: its own resolution order).
        seed: training seed of every run (the data seed is 0).
        task: ``"color"`` or the inverse ``"digit"``.
        jobs: runs trained in parallel (default: one per CPU core, at most 2).
        threads: torch threads per run (default: cores // jobs).
        progress: tqdm bars (only with ``jobs=1``).
        figure: write the mask figures.
        data: ``{dataset: file.npz}`` to use instead of generating (or reusing) the data.
    """
    if isinstance(budget, Budget):
        b, budget = budget, "custom"
    elif budget in BUDGETS:
        b = BUDGETS[budget]
    else:
        raise ValueError(f"budget must be one of {tuple(BUDGETS)}, got {budget!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = jobs or max(1, min(2, cores))
    threads = threads or max(1, cores // jobs)
    started = time.perf_counter()

    configs: list[TrainConfig] = []
    data_files: dict[str, Path] = {}
    for dataset in datasets:
        base = TrainConfig(
            dataset=dataset,
            samples=b.samples,
            epochs=b.epochs,
            batch_size=b.batch_size,
            patience=b.patience,
            seed=seed,
            task=task,
            mnist=mnist,
            data_dir=str(out / "data"),
            threads=threads,
            progress=progress and jobs == 1,
        )
        if data and dataset in data:
            data_files[dataset] = Path(data[dataset])
        else:
            data_files[dataset], _ = resolve_data(base, _Dist())
        for method in methods:
            configs.append(
                dataclasses.replace(
                    base,
                    attention=method,
                    data=str(data_files[dataset]),
                    out=str(out / "runs" / dataset / method),
                )
            )
    configs.sort(key=lambda c: _COST_ORDER.index(c.attention))

    results: dict[str, dict[str, Any]] = {d: {} for d in datasets}
    if jobs == 1:
        for config in configs:
            results[config.dataset][config.attention] = train(config)
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_one, c): c for c in configs}
            for future in as_completed(futures):
                config = futures[future]
                results[config.dataset][config.attention] = future.result()
                logger.info("finished %s on %s", config.attention, config.dataset)

    summary = {
        "budget": budget,
        "budget_settings": dataclasses.asdict(b),
        "task": task,
        "seed": seed,
        "wall_time_s": time.perf_counter() - started,
        "jobs": jobs,
        "threads_per_job": threads,
        "data": {d: str(p) for d, p in data_files.items()},
        "results": {
            d: {m: {k: v for k, v in r.items() if k != "history"} for m, r in rs.items()}
            for d, rs in results.items()
        },
    }
    figures = {}
    if figure:
        from attentionrnn.experiments.figures import mask_figure

        for dataset in datasets:
            data = E1Data(data_files[dataset], task)
            runs = {m: out / "runs" / dataset / m for m in methods}
            figures[dataset] = mask_figure(
                runs, data, out / f"masks_{dataset}.png", title=f"{dataset.upper()}: masks"
            ).name
    summary["figures"] = figures
    atomic_write_json(summary, out / "results.json")
    (out / "results.md").write_text(results_markdown(summary))
    logger.info("wrote %s and %s", out / "results.md", out / "results.json")
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mean_correctness(metrics: dict[str, Any], kind: str) -> float | None:
    values = [v[kind] for v in metrics["attention_correctness"].values() if v[kind] is not None]
    return sum(values) / len(values) if values else None


def results_markdown(summary: dict[str, Any]) -> str:
    """The results table(s) of :func:`reproduce` as Markdown."""
    results = summary["results"]
    datasets = list(results)
    methods = [m for m in METHODS if any(m in results[d] for d in datasets)]
    lines = [
        f"# E1 attribute prediction — budget `{summary['budget']}`",
        "",
        f"{summary['budget_settings']['description']}. Task: `{summary['task']}`, seed "
        f"{summary['seed']}, {summary['jobs']} parallel job(s) × {summary['threads_per_job']} "
        f"thread(s), wall time {summary['wall_time_s'] / 60:.1f} min.",
        "",
        "Accuracy: test accuracy at the best validation epoch. Box / stroke: attention "
        "correctness (share of the mask's mass on the queried digit's box / stroke pixels), "
        "mean over the 4 attention layers. Time: training time of the run.",
        "",
    ]
    header = "| method | " + " | ".join(f"{d.upper()} acc | box | stroke | time" for d in datasets)
    lines += [header + " |", "|---" * (1 + 4 * len(datasets)) + "|"]
    for m in methods:
        cells = [METHOD_LABELS.get(m, m)]
        for d in datasets:
            r = results[d].get(m)
            if r is None:
                cells += ["–"] * 4
                continue
            cells += [
                _fmt(r["test_accuracy"]),
                _fmt(_mean_correctness(r, "box")),
                _fmt(_mean_correctness(r, "stroke")),
                f"{r['training_time_s'] / 60:.1f} min",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Attention correctness per layer (box / stroke)", ""]
    for d in datasets:
        lines += [f"### {d.upper()}", "", "| method | layer 1 | layer 2 | layer 3 | layer 4 |"]
        lines.append("|---|---|---|---|---|")
        for m in methods:
            r = results[d].get(m)
            if r is None:
                continue
            cells = [
                f"{_fmt(v['box'])} / {_fmt(v['stroke'])}"
                for v in r["attention_correctness"].values()
            ]
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Accuracy by digit scale", ""]
    for d in datasets:
        any_run = next(iter(results[d].values()), None)
        if any_run is None:
            continue
        bins = list(any_run["accuracy_by_scale"])
        lines += [f"### {d.upper()}", "", "| method | " + " | ".join(bins) + " |"]
        lines.append("|---" * (1 + len(bins)) + "|")
        for m in methods:
            r = results[d].get(m)
            if r is None:
                continue
            cells = [_fmt(r["accuracy_by_scale"][b]["accuracy"]) for b in bins]
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        lines.append("")
    if summary.get("figures"):
        lines += ["## Masks", ""]
        for d, name in summary["figures"].items():
            lines += [f"![{d} masks]({name})", ""]
    return "\n".join(lines)
