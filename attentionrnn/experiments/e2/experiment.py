"""Run the E2 attention estimators on CIFAR and assemble the results table (top-1 error).

``reproduce(out, budget, ...)`` trains each (dataset, method, seed) run that is not finished yet
into ``OUT/runs/DATASET/METHOD/seedS``, so a reproduction can be run in pieces and resumed.
:func:`assemble` builds the table from **every** finished ``metrics.json`` under ``OUT/runs`` —
mean ± standard deviation over seeds of the test top-1 error — and writes ``OUT/results.md``,
``OUT/results.json``, the learning curves ``OUT/curves_DATASET.png`` and, where the runs' weights
and the data are present, the attention maps ``OUT/masks_DATASET.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attentionrnn.engine import results
from attentionrnn.engine.experiment import Experiment, Row, config_budget, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.experiments.e2.figures import curve_figure, mask_figure
from attentionrnn.experiments.e2.train import E2Config, read_images, train

__all__ = ["BUDGETS", "EXPERIMENT", "Budget", "assemble", "reproduce", "results_markdown"]


#: What a budget sets besides its epochs: network size, data size and training length.
BUDGET_FIELDS = ("width", "lr_step", "depth", "batch_size", "patience", "val_samples",
                 "train_samples", "test_samples")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Budget(config_budget(E2Config, *BUDGET_FIELDS, patience=1000, spread_seeds=(0, 1, 2))):
    """One budget: its epochs and :data:`BUDGET_FIELDS` (defaults: E2Config's, but a patience of
    1000 epochs); 3 seeds for the rows whose spread the comparison needs (LTPA and LTPA + ARNN)."""


#: The rows of the table: label, relative training cost (measured: bf16, width 0.25, batch 128;
#: parallel runs start with the most expensive so that they finish together) and spread seeds.
ROW_TABLE = {
    "none": Row("VGG (no attention)", cost=0.75),
    "ltpa": Row("LTPA (concat-pc)", cost=0.93, spread=True),
    "arnn": Row("LTPA + ARNN", cost=1.0, spread=True),
    "brnn": Row("LTPA + BRNN", cost=0.92),
}

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
        width=0.25, epochs=16, lr_step=4,
        description="VGG-att3 at width 0.25 (16 ... 128 channels), 45k/5k/10k images, batch 128, "
        "SGD 0.1 momentum 0.9 wd 5e-4 halved every 4 epochs, 16 epochs, bf16 where native",
    ),
    # LTPA's protocol: E2Config's defaults.
    "full": Budget(
        description="LTPA protocol: VGG-att3 (VGG-16 widths), 45k/5k/10k images, batch 128, "
        "SGD 0.1 momentum 0.9 wd 5e-4 halved every 25 epochs, 300 epochs",
    ),
}  # fmt: skip


def reproduce(out: str | Path, budget: str | Budget = "cpu", **kwargs: Any) -> dict[str, Any]:
    """Train the runs that are missing, then :func:`assemble` the table from all finished runs
    (:func:`attentionrnn.engine.reproduce.reproduce` of :data:`EXPERIMENT`; the data options
    ``cifar10_tar``, ``cifar10_md5``, ``cifar_dir``, ``data_dir`` are ``e2 train``'s)."""
    return engine_reproduce(EXPERIMENT, out, budget, **kwargs)


def _prepare(dataset: str, configs: list[E2Config], jobs: int, o: dict[str, Any]) -> list:
    """Decode the tar into the cache once, before parallel runs read it."""
    read_images(configs[0], progress=o["progress"])
    return configs


# ------------------------------------------------------------------------------------------
# the table, from finished runs


def _columns(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's entries of the table: its width and mean ± std over its seeds."""
    classes = list(ms[0]["per_class_accuracy"])
    return {
        "width": ms[0].get("width"),
        "test_error": seed_stats([m["test_error"] for m in ms]),
        "val_error": seed_stats([m["val_error"] for m in ms]),
        "per_class_accuracy": {
            c: seed_stats([m["per_class_accuracy"][c] for m in ms]) for c in classes
        },
        "best_epoch": [m["best_epoch"] for m in ms],
    }


def _fmt(stats: dict[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    return format_stats(stats, digits, scale)


def _section(summary: dict[str, Any], d: str, rows: dict[str, Any]) -> list[str]:
    """A dataset's table of errors, the per-class accuracy (CIFAR-10) and its figures."""
    header = ["method", "seeds", "test error %", "val error %", "params", "epochs", "time/run",
              "wall"]  # fmt: skip
    table = [
        [r["label"], ",".join(map(str, r["seeds"])), _fmt(r["test_error"]), _fmt(r["val_error"]),
         f"{r['parameters']:,}", ",".join(map(str, r["epochs"])),
         f"{_fmt(r['training_time_h'], 1, 2)} h", f"{r['wall_time_h']:.2f} h"]
        for r in rows.values()
    ]  # fmt: skip
    lines = [f"## {d.upper()}", "", *results.markdown_table(header, table)]
    classes = list(next(iter(rows.values()))["per_class_accuracy"])
    if len(classes) <= 20:  # CIFAR-100's per-class accuracy is in results.json only
        per_class = [
            [r["label"], *(_fmt({"mean": r["per_class_accuracy"][c]["mean"]}, digits=1)
                           for c in classes)]
            for r in rows.values()
        ]  # fmt: skip
        lines += ["", "Per-class test accuracy % (mean over seeds):", ""]
        lines += results.markdown_table(["method", *classes], per_class)
    against = results.comparison_section(
        summary, d, rows, reference=REFERENCE, compared=COMPARED, short="LTPA",
        units="percentage points", interval="test_error", scale=SCALE, digits=DIGITS,
    )  # fmt: skip
    return [*lines, "", *against, *results.markdown_figures(summary, d)]


#: The row every other is tested against (LTPA's own estimator) and the quantity tested.
REFERENCE = "ltpa"
COMPARED: results.Compared = {"test_error": ("test error", ("test_error",))}
#: how the comparisons and the runs section show it: in percent, two decimals
SCALE, DIGITS = 100.0, 2
#: the validation curve whose final slope says whether a run has settled
CURVES = {"val_error": ("val error", ("val_error",))}


#: The title of :func:`results_markdown` and the text above its tables.
TITLE = "E2 image classification (LTPA VGG-att3)"
CAPTION = (
    "Top-1 error (%) on the test set at the best validation epoch; mean ± sample standard "
    "deviation over the seeds listed (one seed has no ±). Time: training hours per run; "
    "wall: all runs of the row."
)


EXPERIMENT = register_experiment(Experiment(
    name="e2",
    help="experiment E2: CIFAR-10 / CIFAR-100 classification (LTPA VGG-att3)",
    description="Experiment E2: image classification with Learn to Pay Attention's VGG-att3 "
    "and AttentionRNN as its attention estimator.",
    config=E2Config,
    train=train,
    budgets=BUDGETS,
    prepare=_prepare,
    columns=_columns, curve_figure=curve_figure, run_figure=mask_figure, dataset_title=str.upper,
    table_title=TITLE, table_caption=CAPTION, table_section=_section,
    rows=ROW_TABLE, reference=REFERENCE, compared=COMPARED, scale=SCALE, digits=DIGITS,
    curves=CURVES,
    train_keys=("test_error", "val_error", "epochs", "best_epoch", "precision",
                "training_time_s"),
    seeds_help="training seeds of every row (default: the budget's; 3 for LTPA and LTPA + ARNN)",
    config_flags=("cifar10_tar", "cifar10_md5", "cifar_dir", "data_dir"),
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
#: The results of :func:`assemble` as Markdown
#: (:meth:`~attentionrnn.engine.experiment.Experiment.markdown_document`).
results_markdown = EXPERIMENT.markdown
