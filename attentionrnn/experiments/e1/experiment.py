"""Run the attention methods on MREF, MDIST and MBG and assemble the paper-style results table.

``reproduce(out, budget, ...)`` trains each (dataset, method, seed) run that is not finished yet
into ``OUT/runs/DATASET/ROW/seedS`` (``ROW`` is the method, plus ``-l4sigmoid``
when the last layer's gate is overridden), so a reproduction can be run in pieces and resumed.
:func:`assemble` then builds the table from **every** finished ``metrics.json`` under
``OUT/runs`` — mean ± standard deviation over seeds — and writes ``OUT/results.md``,
``OUT/results.json``, the learning curves ``OUT/curves_DATASET.png`` and, where the runs' weights
and data are present, the masks ``OUT/masks_DATASET.png``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attentionrnn.data.generate import DATASETS
from attentionrnn.engine import results
from attentionrnn.engine.experiment import Experiment, config_budget, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.trainer import BEST
from attentionrnn.experiments.e1.config import E1Config
from attentionrnn.experiments.e1.model import own_layer4_gate
from attentionrnn.experiments.e1.rows import ROW_TABLE, ROWS
from attentionrnn.experiments.e1.table import (
    COMPARED,
    CURVES,
    REFERENCE,
    results_markdown,
    row_label,
    row_order,
    summarize,
)
from attentionrnn.experiments.e1.train import recorded_data_file, resolve_data, train

logger = logging.getLogger("attentionrnn.e1")

#: What a budget sets besides its epochs: the data (a smaller canvas costs less per step),
#: batch, patience and RMSprop's schedule (the rate ÷1.5 from epoch ``lr_decay_start`` every
#: ``lr_decay_every``, after a linear warm-up of ``lr_warmup_epochs``).
BUDGET_FIELDS = ("samples", "batch_size", "patience", "patience_from", "canvas", "lr",
                 "lr_warmup_epochs", "lr_decay_start", "lr_decay_every")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Budget(config_budget(E1Config, *BUDGET_FIELDS)):
    """How much data and training one budget spends per run: its epochs and
    :data:`BUDGET_FIELDS` (defaults: E1Config's, PAN's protocol), and the rows and datasets of a
    ``reproduce``."""

    #: the rows and datasets a ``reproduce`` without ``--methods`` / ``--datasets`` trains
    #: (``None``: all)
    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None


BUDGETS: dict[str, Budget] = {
    # A check that every method trains end to end and the table is written; nothing learns to
    # attend at this size (docs/results/quick).
    "quick": Budget(
        samples=5600, epochs=4, batch_size=50, patience=50,
        description="pipeline check (not a result): ~5,600 samples per dataset, 4 epochs, batch 50",
    ),
    # PAN's data and batch, trained for as many steps as the measured curves need to pass
    # their knee on this CPU (docs/experiments.md); CTX and ARNN with 3 seeds.
    "cpu": Budget(
        epochs=10, patience=10, spread_seeds=(0, 1, 2),
        description="PAN's data (30k/10k/10k samples) and batch 200, 10 epochs (1,500 steps), "
        "bf16 where native",
    ),
    # Sized to the README's 10-minute demo on two cores. At PAN's 100x100 the masks localise only
    # after ~100k training samples (the `cpu` curves), ~15 min of one core per method, so the
    # demo draws its MREF on an 80x80 canvas (every length scaled, docs/data.md), where a sample
    # costs ~0.6x as much, at batch 50. Its layer-4 map is 3x3 (from 78 px up); at 64 px it is
    # 2x2, and ARNN's layer-4 box share stalled at 1.6x a uniform mask's (docs/experiments.md).
    # At PAN's lr 0.003 from the first step CTX sat near the no-attention level for most of the
    # 12 epochs in some seeds; lower rates (0.001, 0.002) fixed CTX but left ARNN short of 2x
    # uniform in some seeds; 0.003 after a 2-epoch linear warm-up let both pass in every seed
    # probed (docs/experiments.md).
    "demo": Budget(
        samples=16000, epochs=12, batch_size=50, patience=12, canvas=80, lr_warmup_epochs=2,
        description="~16,000 MREF samples on an 80x80 canvas, 12 epochs of batch 50 "
        "(~2,300 steps), RMSprop lr 0.003 after a 2-epoch warm-up; minutes, not the paper's "
        "setting",
    ),
    # Every method trained until its curves are flat (docs/e1.md, "The plateau budget"): PAN's
    # data, batch and RMSprop at 0.003, its ÷1.5 decay compressed to every 3 epochs from epoch 10,
    # 24 epochs (or 8 without a better validation accuracy). Sized from a pilot of CTX and ARNN
    # on MDIST (docs/results/plateau/pilot): both validation curves flat over the last five
    # epochs. On the 80x80 canvas: PAN's 100 px costs ~2.7x per epoch, which puts the rows over
    # the 15 h this budget may take on a 2-core machine.
    "plateau": Budget(
        epochs=24, patience=8, canvas=80, lr_decay_start=10, lr_decay_every=3, seeds=(0, 1),
        spread_seeds=(0, 1, 2, 3, 4), datasets=("mdist", "mbg"),
        methods=("local", "ctx", "arnn_ind", "arnn", "arnn_quad", "brnn"),
        description="PAN's data (30k/10k/10k samples) on an 80x80 canvas, batch 200, lr 0.003 "
        "÷1.5 every 3 epochs from epoch 10, 24 epochs (early stop after 8), CTX and ARNN 5 seeds, "
        "the others 2",
    ),
    # The inverse task (--task digit) at the plateau. Its pilot (CTX seed 0 with the plateau
    # budget, docs/results/plateau/digit-pilot) learned nothing until epoch 11 and was still rising
    # at epoch 24 (val .477 .490 .487 .500 .505, slope +0.007 an epoch) after five lr decays, so
    # the digit task keeps PAN's own decay start (epoch 30) and gets up to 60 epochs, stopped
    # after 8 without a better validation accuracy. Its first run of CTX seed 1 sat at chance
    # (val .106 at epoch 2) and was stopped at epoch 10, before learning could start, so the 8
    # epochs count from epoch 30 (patience_from). An epoch of this task is ~1/3 of the colour
    # task's (10.5k training samples): ~21 s for CTX on one thread.
    "plateau-digit": Budget(
        epochs=60, patience=8, patience_from=30, canvas=80, lr_decay_start=30, lr_decay_every=3,
        seeds=(0, 1, 2), spread_seeds=(0, 1, 2), datasets=("mdist",), methods=("ctx", "arnn"),
        description="for --task digit: the plateau budget's data and batch, lr 0.003 ÷1.5 every "
        "3 epochs from epoch 30, up to 60 epochs (early stop after 8, counted from epoch 30), CTX "
        "and ARNN 3 seeds, MDIST",
    ),
    # The PAN protocol: E1Config's defaults.
    "full": Budget(
        spread_seeds=(0, 1, 2),
        description="PAN protocol: 50,000 samples (30k/10k/10k), up to 300 epochs, batch 200, "
        "early stop after 50 epochs without validation improvement",
    ),
}  # fmt: skip


def row_name(method: str, layer4_gate: str | None) -> str:
    """Folder / table key of a method with an optional last-layer gate override (none when the
    override is the method's own gate, e.g. softmax for CTX)."""
    if layer4_gate is None or layer4_gate == own_layer4_gate(method):
        return method
    return f"{method}-l4{layer4_gate}"


def reproduce(
    out: str | Path,
    budget: str | Budget = "quick",
    data: dict[str, str | Path] | None = None,
    layer4_gate: str | None = None,
    mnist: str | None = None,
    task: str = "color",
    **kwargs: Any,
) -> dict[str, Any]:
    """Train the runs that are missing, then :func:`assemble` the table from all finished runs
    (:func:`attentionrnn.engine.reproduce.reproduce` of :data:`EXPERIMENT`).

    Args:
        out: output folder (runs, data cache, table, figures).
        budget: a name in :data:`BUDGETS` or a :class:`Budget`.
        data: ``{dataset: file.npz}`` to use instead of generating (or reusing) the data.
        layer4_gate: override the last attention layer's gate of these runs.
        mnist: MNIST folder for the generator (default: its own resolution order).
        task: ``"color"`` or the inverse ``"digit"``.
        kwargs: ``datasets``, ``methods`` (default: the budget's, else all), ``seeds`` (default:
            the budget's, with ``spread_seeds`` for CTX and ARNN; the data seed is always 0),
            ``precision``, ``jobs``, ``threads``, ``progress``, ``figure``, ``dry_run``.
    """
    return engine_reproduce(EXPERIMENT, out, budget, data=data, layer4_gate=layer4_gate,
                            mnist=mnist, task=task, **kwargs)  # fmt: skip


def _base_config(b: Budget, dataset: str, o: dict[str, Any]) -> E1Config:
    """The budget's config, with the data cached in the results folder."""
    return EXPERIMENT.budget_config(b, dataset, o, data_dir=str(Path(o["out"]) / "data"))


def _prepare(dataset: str, configs: list[E1Config], jobs: int, o: dict[str, Any]) -> list:
    """Generate (or find) the data of ``dataset`` once; every run reads that file."""
    data = o.get("data")
    path = Path(data[dataset]) if data and dataset in data else resolve_data(configs[0])[0]
    return [dataclasses.replace(c, data=str(path)) for c in configs]


# ------------------------------------------------------------------------------------------
# the table, from finished runs


def _totals(found: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """Training minutes of all runs of each dataset (the table's headings; every row's
    statistics against CTX are the engine's ``comparisons``, from ``reference`` / ``compared``)."""
    return {
        "wall_time_min": {
            d: sum(m["training_time_s"] for rs in found[d].values() for m in rs.values()) / 60
            for d in found
        },
    }


def _figures(out: Path, d: str, rows: dict[str, dict[int, dict[str, Any]]]) -> dict[str, str]:
    """The learning curves and, where the weights and data are here, the masks."""
    from attentionrnn.experiments.e1.figures import curve_figure

    curves = results.learning_curves(rows, lambda r: row_label(summarize(r, rows[r])), row_order)
    name = curve_figure(curves, out / f"curves_{d}.png", f"{d.upper()}: learning curves")
    drawn = {"curves": name.name}
    masks = _mask_figure(out, d, rows)
    if masks:
        drawn["masks"] = masks
    return drawn


def _mask_figure(out: Path, dataset: str, rows: dict[str, dict[int, dict]]) -> str | None:
    """The masks of the lowest seed of each row, where its weights and the data
    (:func:`recorded_data_file`) exist."""
    from attentionrnn.data.attribute import E1Data
    from attentionrnn.experiments.e1.figures import mask_figure

    runs: dict[str, Path] = {}
    data_path = None
    for row, seeds in rows.items():
        seed = min(seeds)
        run = out / "runs" / dataset / row / f"seed{seed}"
        if (run / BEST).is_file():
            runs[row_label(summarize(row, {seed: seeds[seed]}))] = run
            data_path = data_path or seeds[seed]["data"]["path"]
    if not runs or not data_path:
        return None
    found = recorded_data_file(data_path, out)
    if found is None:
        logger.warning(
            "masks_%s.png not drawn: the runs' data file %s is neither there nor in %s",
            dataset,
            data_path,
            out / "data",
        )
        return None
    any_run = next(iter(next(iter(rows.values())).values()))
    data = E1Data(found, any_run["task"])
    path = mask_figure(runs, data, out / f"masks_{dataset}.png", title=f"{dataset.upper()}: masks")
    return path.name


EXPERIMENT = register_experiment(Experiment(
    name="e1",
    help="experiment E1: attribute prediction on MREF / MDIST / MBG",
    description="Experiment E1: predict the colour of a queried MNIST digit (PAN network).",
    config=E1Config,
    train=train,
    budgets=BUDGETS,
    base_config=_base_config,
    default_datasets=lambda b: b.datasets or DATASETS,
    default_methods=lambda b: b.methods or ROWS,
    row_folder=lambda method, o: row_name(method, o.get("layer4_gate")),
    prepare=_prepare,
    summarize=summarize, figures=_figures, totals=_totals, figures_for="table",
    table_order=row_order,
    markdown=results_markdown,
    rows=ROW_TABLE, reference=REFERENCE, compared=COMPARED, curves=CURVES,
    train_keys=("test_accuracy", "val_accuracy", "epochs", "best_epoch", "attention_correctness"),
    datasets_help="default: the budget's, or all",
    methods_help="default: the budget's, or all",
    seeds_help="training seeds of every row (default: the budget's; 3 for CTX and ARNN in cpu "
    "and full)",
    config_flags=("layer4_gate", "task", "mnist"),
    table_figures=False,
    default_out="results/{budget}",
    table_prefix="",
    commands="attentionrnn.experiments.e1.commands",
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
