"""Run the E2 attention estimators on CIFAR and assemble the results table (top-1 error).

``reproduce(out, budget, ...)`` trains each (dataset, method, seed) run that is not finished yet
into ``OUT/runs/DATASET/METHOD/seedS``, so a reproduction can be run in pieces and resumed.
:func:`assemble` builds the table from **every** finished ``metrics.json`` under ``OUT/runs`` —
mean ± standard deviation over seeds of the test top-1 error — and writes ``OUT/results.md``,
``OUT/results.json``, the learning curves ``OUT/curves_DATASET.png`` and, where the runs' weights
and the data are present, the attention maps ``OUT/masks_DATASET.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attentionrnn.engine import experiment as engine_experiment
from attentionrnn.engine import results
from attentionrnn.engine.experiment import Experiment, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.experiments.e2.data import CIFAR10_TAR_MD5, DATASETS, load_dataset
from attentionrnn.experiments.e2.model import E2_ATTENTIONS, E2_ROWS, LABELS
from attentionrnn.experiments.e2.train import E2Config, train

logger = logging.getLogger("attentionrnn.e2.reproduce")

__all__ = ["BUDGETS", "EXPERIMENT", "Budget", "assemble", "reproduce", "results_markdown"]


@dataclass(frozen=True, kw_only=True)
class Budget(engine_experiment.Budget):
    """Network size and training length of one budget."""

    width: float
    lr_step: int
    depth: int | None = None
    batch_size: int = 128
    patience: int = 1000
    val_samples: int = 5000
    train_samples: int | None = None
    test_samples: int | None = None
    #: more seeds for the rows whose spread the comparison needs (LTPA and LTPA + ARNN)
    spread_seeds: tuple[int, ...] = (0, 1, 2)


#: Relative training cost per method (measured: bf16, width 0.25, batch 128); parallel runs start
#: with the most expensive so that they finish together.
COST = {"none": 0.75, "ltpa": 0.93, "arnn": 1.0, "brnn": 0.92}
SPREAD = ("ltpa", "arnn")

BUDGETS: dict[str, Budget] = {
    # Sized on this 2-core CPU (reproduce runs 2 jobs x 1 thread): a training step of the
    # slowest row (ARNN; batch 128, width 0.25, bf16) took 2.3 s on one thread while two other
    # jobs kept both cores busy (LTPA 2.1 s, BRNN 2.1 s, VGG 1.7 s; fp32 2.5-2.8 s), and the
    # 5,000-image validation ~40 s. Measured since: one ARNN epoch (352 steps and the
    # validation) took 5.6 min on one thread beside one other one-thread job, so 16 epochs are
    # ≈ 1.5 h per run of the slowest row and the 8 runs ≈ 6 h wall with 2 jobs. Measured on
    # full runs (2 jobs, part of the time beside a third): LTPA 1.50 h, ARNN 1.83 h; both
    # validation curves flat over epochs 13-16 (docs/results/e2-cpu).
    "cpu": Budget(
        width=0.25,
        epochs=16,
        lr_step=4,
        description="VGG-att3 at width 0.25 (16 ... 128 channels), 45k/5k/10k images, batch 128, "
        "SGD 0.1 momentum 0.9 wd 5e-4 halved every 4 epochs, 16 epochs, bf16 where native",
    ),
    # LTPA's protocol.
    "full": Budget(
        width=1.0,
        epochs=300,
        lr_step=25,
        description="LTPA protocol: VGG-att3 (VGG-16 widths), 45k/5k/10k images, batch 128, "
        "SGD 0.1 momentum 0.9 wd 5e-4 halved every 25 epochs, 300 epochs",
    ),
}


def reproduce(out: str | Path, budget: str | Budget = "cpu", **kwargs: Any) -> dict[str, Any]:
    """Train the runs that are missing, then :func:`assemble` the table from all finished runs
    (:func:`attentionrnn.engine.reproduce.reproduce` of :data:`EXPERIMENT`; the data options
    ``cifar10_tar``, ``cifar10_md5``, ``cifar_dir``, ``data_dir`` are ``e2 train``'s)."""
    return engine_reproduce(EXPERIMENT, out, budget, **kwargs)


def _base_config(b: Budget, dataset: str, o: dict[str, Any]) -> E2Config:
    return E2Config(
        dataset=dataset, epochs=b.epochs, width=b.width, depth=b.depth, batch_size=b.batch_size,
        lr_step=b.lr_step, patience=b.patience, val_samples=b.val_samples,
        train_samples=b.train_samples, test_samples=b.test_samples,
        cifar10_tar=o.get("cifar10_tar"), cifar10_md5=o.get("cifar10_md5", CIFAR10_TAR_MD5),
        cifar_dir=o.get("cifar_dir"), data_dir=o.get("data_dir"), precision=o["precision"],
        threads=o["threads"], progress=o["progress"],
    )  # fmt: skip


def _prepare(dataset: str, configs: list[E2Config], jobs: int, o: dict[str, Any]) -> list:
    """Decode the tar into the cache once, before parallel runs read it."""
    c = configs[0]
    load_dataset(dataset, cifar10_tar=c.cifar10_tar, cifar_dir=c.cifar_dir, md5=c.cifar10_md5,
                 cache_dir=c.data_dir, progress=o["progress"])  # fmt: skip
    return configs


# ------------------------------------------------------------------------------------------
# the table, from finished runs


def summarize(method: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over the seeds of one method."""
    ms = [runs[s] for s in sorted(runs)]
    first = ms[0]
    classes = list(first["per_class_accuracy"])
    return {
        "method": method,
        "label": LABELS.get(method, method),
        "seeds": sorted(runs),
        "width": first.get("width"),
        "precision": first.get("precision"),
        "parameters": first.get("parameters"),
        "test_error": seed_stats([m["test_error"] for m in ms]),
        "val_error": seed_stats([m["val_error"] for m in ms]),
        "per_class_accuracy": {
            c: seed_stats([m["per_class_accuracy"][c] for m in ms]) for c in classes
        },
        "epochs": [m["epochs"] for m in ms],
        "best_epoch": [m["best_epoch"] for m in ms],
        "training_time_h": seed_stats([m["training_time_s"] / 3600 for m in ms]),
        "wall_time_h": sum(m.get("wall_time_s", m["training_time_s"]) for m in ms) / 3600,
    }


def _figures(out: Path, d: str, rows: dict[str, dict[int, dict[str, Any]]]) -> dict[str, str]:
    """The learning curves and, where the data and weights are here, the attention maps."""
    from attentionrnn.experiments.e2.figures import curve_figure, mask_figure

    curves = results.learning_curves(rows, lambda m: LABELS.get(m, m), EXPERIMENT.order)
    path = curve_figure(curves, out / f"curves_{d}.png", f"{d.upper()}: learning curves")
    drawn = {"curves": path.name}
    runs = {m: out / "runs" / d / m / f"seed{min(rows[m])}" for m in rows if m != "none"}
    masks = results.optional_figure(
        lambda: mask_figure(runs, out / f"masks_{d}.png", title=f"{d.upper()}: attention"),
        "attention figure", d, logger,
    )  # fmt: skip
    if masks:
        drawn["masks"] = masks.name
    return drawn


def _fmt(stats: dict[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    return format_stats(stats, digits, scale)


def results_markdown(summary: dict[str, Any]) -> str:
    """The results of :func:`assemble` as Markdown."""
    lines = [
        *results.markdown_head(summary, "E2 image classification (LTPA VGG-att3)"),
        "Top-1 error (%) on the test set at the best validation epoch; mean ± sample standard "
        "deviation over the seeds listed (one seed has no ±). Time: training hours per run; "
        "wall: all runs of the row.",
        "",
    ]
    for d, rows in summary["results"].items():
        lines += [
            f"## {d.upper()}",
            "",
            "| method | seeds | test error % | val error % | params | epochs | time/run | wall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows.values():
            lines.append(
                f"| {r['label']} | {','.join(map(str, r['seeds']))} | {_fmt(r['test_error'])} | "
                f"{_fmt(r['val_error'])} | {r['parameters']:,} | "
                f"{','.join(map(str, r['epochs']))} | {_fmt(r['training_time_h'], 1, 2)} h | "
                f"{r['wall_time_h']:.2f} h |"
            )
        classes = list(next(iter(rows.values()))["per_class_accuracy"])
        if len(classes) <= 20:  # CIFAR-100's per-class accuracy is in results.json only
            lines += ["", "Per-class test accuracy % (mean over seeds):", ""]
            lines += ["| method | " + " | ".join(classes) + " |", "|---" * (1 + len(classes)) + "|"]
            for r in rows.values():
                pc = r["per_class_accuracy"]
                cells = [_fmt({"mean": pc[c]["mean"]}, digits=1) for c in classes]
                lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines += ["", *results.markdown_figures(summary, d)]
    return "\n".join(lines)


EXPERIMENT = register_experiment(Experiment(
    name="e2",
    help="experiment E2: CIFAR-10 / CIFAR-100 classification (LTPA VGG-att3)",
    description="Experiment E2: image classification with Learn to Pay Attention's VGG-att3 "
    "and AttentionRNN as its attention estimator.",
    config=E2Config,
    train=train,
    budgets=BUDGETS,
    default_budget="cpu",
    budget_class=Budget,
    datasets=DATASETS,
    methods=E2_ROWS,
    default_methods=lambda b: E2_ATTENTIONS,
    base_config=_base_config,
    prepare=_prepare,
    summarize=summarize, figures=_figures, log=logger,
    markdown=results_markdown,
    cost=COST,
    labels=LABELS,
    spread=SPREAD,
    train_help="train one attention estimator on CIFAR",
    train_description="Train VGG-att3 with one attention estimator, keep the best-validation "
    "checkpoint, test it and write RUN_DIR/metrics.json (top-1 error, per-class accuracy, "
    "learning curve). Rerunning the same command resumes an interrupted run. Works under "
    "torchrun (gloo).",
    train_keys=("test_error", "val_error", "epochs", "best_epoch", "precision",
                "training_time_s"),
    seeds_help="training seeds of every row (default: the budget's; 3 for LTPA and LTPA + ARNN)",
    reproduce_flags=(
        ("--cifar10-tar", {"metavar": "PATH",
                           "help": "CIFAR-10 JPEG tar (default $ATTENTIONRNN_CIFAR10_TAR)"}),
        ("--cifar10-md5", {"default": CIFAR10_TAR_MD5, "help": "expected md5 of the tar"}),
        ("--cifar-dir", {"metavar": "DIR", "help": "folder of the CIFAR python pickles"}),
        ("--data-dir", {"metavar": "DIR", "help": "cache of decoded images"}),
    ),
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
