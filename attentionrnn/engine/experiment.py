"""An experiment, declared: what the engine needs to build its commands and run its reproduction.

An experiment package makes one :class:`Experiment` and passes it to
:func:`register_experiment`; the CLI (``attentionrnn EXPERIMENT train|reproduce|table``), the
reproduce loop (:func:`attentionrnn.engine.reproduce.reproduce`: datasets × methods × seeds ->
configs -> skip the finished -> dry-run or train -> assemble) and ``table`` are built from it
(:mod:`attentionrnn.engine.reproduce`). The package keeps only what is its own: data, model,
training recipe, metrics, the table's contents and figures. ``docs/adding-an-experiment.md``
describes the contract with the smallest complete example.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Budget", "Experiment", "experiments", "register_experiment"]

#: The modules whose import registers the paper's experiments, in CLI order.
EXPERIMENT_MODULES = (
    "attentionrnn.experiments.e1.experiment",
    "attentionrnn.experiments.e2.experiment",
    "attentionrnn.experiments.e3.experiment",
    "attentionrnn.experiments.e4.experiment",
)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What one named budget spends per run; an experiment subclasses it with its own fields
    (network and data sizes), which its :attr:`Experiment.base_config` copies into the config."""

    description: str = ""
    epochs: int = 1
    #: the seeds of every row
    seeds: tuple[int, ...] = (0,)
    #: the seeds of the rows whose spread the comparison needs (:attr:`Experiment.spread`)
    spread_seeds: tuple[int, ...] = (0,)


@dataclass
class Experiment:
    """One experiment's declaration.

    Attributes:
        name: the CLI name (``e2``) and the prefix of its results folders (``results/e2-cpu``).
        help, description: the CLI's one-line help and the ``attentionrnn NAME --help`` text.
        config: the run config class (a :class:`~attentionrnn.engine.config.RunConfig`): the
            ``train`` flags are its fields.
        train: ``train(config) -> metrics`` (a module-level function: parallel jobs import it).
        budgets, default_budget, budget_class: the named budgets of ``reproduce``.
        datasets: the valid ``--datasets``.
        methods: the rows (attention method names) a ``reproduce`` may train, in table order.
        base_config: ``(budget, dataset, options) -> config`` without row, seed and out;
            ``options`` holds ``precision``, ``threads``, ``progress``, ``out`` (the results
            folder) and the values of :attr:`reproduce_flags`.
        markdown: ``summary -> str``: the table printed.
        summarize, figures, totals, figures_for, table_order, log: what
            :meth:`assemble_table` passes to :func:`~attentionrnn.engine.results.assemble`
            (``table_order`` default: :meth:`order`).
        assemble: ``(out, budget_name, settings, figure=...) -> summary``: writes the table
            (default: :meth:`assemble_table`).
        cost: ``{method: relative cost of a run}`` (parallel runs start with the most
            expensive; dry runs scale timed rows by it).
        labels: ``{method: table label}``.
        row_field: the config field the row's method goes to (``attention``, ``mask``).
        spread: the rows trained with the budget's ``spread_seeds``.
        default_datasets, default_methods: ``budget -> names`` where ``--datasets`` /
            ``--methods`` are not given (default: the first dataset, every method).
        row_folder: ``(method, options) -> folder name`` of a row (default: the method).
        skip: ``(method, dataset) -> True`` for pairs that cannot run (no boxes for an oracle).
        check: ``(budget_name, budget, datasets) -> None``: raise ``UserError`` for a request
            that cannot run.
        prepare: ``(dataset, configs, jobs, options) -> configs``: fill the data cache once
            before parallel jobs read it; may set fields (E1 sets the data file); called only
            for datasets with runs to train.
        reproduce_flags: ``(flag, add_argument keywords)`` of the data flags of ``reproduce``
            (their ``dest`` goes into ``options``).
        train_keys: the metrics ``train`` prints.
        train_help, train_description, methods_help, datasets_help, seeds_help: CLI texts.
        table_figures: whether ``table`` and ``reproduce`` have ``--no-figures``.
        commands: the module whose ``register(subparsers)`` adds the experiment's own
            sub-commands (imported when the CLI is built, so that they may run the experiment).
    """

    name: str
    help: str
    description: str
    config: type
    train: Callable[[Any], Any]
    budgets: dict[str, Any]
    default_budget: str
    budget_class: type
    datasets: Sequence[str]
    methods: Sequence[str]
    base_config: Callable[[Any, str, dict[str, Any]], Any]
    markdown: Callable[[dict[str, Any]], str]
    cost: dict[str, float]
    summarize: Callable[[str, dict[int, dict[str, Any]]], dict[str, Any]] | None = None
    figures: Callable[..., dict[str, str]] | None = None
    totals: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    figures_for: str = "found"
    table_order: Callable[[str], Any] | None = None
    log: logging.Logger | None = None
    assemble: Callable[..., dict[str, Any]] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    row_field: str = "attention"
    spread: Sequence[str] = ()
    default_datasets: Callable[[Any], Sequence[str]] | None = None
    default_methods: Callable[[Any], Sequence[str]] | None = None
    row_folder: Callable[[str, dict[str, Any]], str] | None = None
    skip: Callable[[str, str], bool] | None = None
    check: Callable[[str, Any, Sequence[str]], None] | None = None
    prepare: Callable[[str, list[Any], int, dict[str, Any]], list[Any]] | None = None
    reproduce_flags: Sequence[tuple[str, dict[str, Any]]] = ()
    train_keys: Sequence[str] = ()
    train_help: str = "train one run"
    train_description: str = ""
    methods_help: str | None = None
    datasets_help: str | None = None
    seeds_help: str = "training seeds of every row (default: the budget's)"
    table_figures: bool = True
    #: the per-dataset figure beside the curves (``reproduce --help``)
    figure: str = "masks"
    commands: str | None = None
    #: ``reproduce``'s folder without ``--out`` (``{budget}`` is the budget's name) and what
    #: ``table`` strips from a folder's name to find its budget
    default_out: str = "results/{name}-{budget}"
    table_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.assemble is None:
            self.assemble = self.assemble_table

    def assemble_table(
        self, out: str | Path, budget: str, settings: Any = None, figure: bool = True
    ) -> dict[str, Any]:
        """Write ``results.{json,md}`` and the figures from every finished run under
        ``OUT/runs`` (:func:`~attentionrnn.engine.results.assemble` with the declared parts;
        ``settings`` default: the budget ``budget``'s)."""
        from attentionrnn.engine import results

        if self.summarize is None:
            raise TypeError(f"experiment {self.name} declares neither assemble nor summarize")
        return results.assemble(
            out, budget, settings or self.budgets.get(budget), datasets=self.datasets,
            summarize=self.summarize, order=self.table_order or self.order,
            markdown=self.markdown, figures=self.figures if figure else None,
            totals=self.totals, figures_for=self.figures_for, log=self.log,
        )  # fmt: skip

    def out_for(self, budget: str) -> str:
        """The default results folder of ``budget``."""
        return self.default_out.format(name=self.name, budget=budget)

    def label(self, method: str) -> str:
        """The table label of a row."""
        return self.labels.get(method, method)

    def order(self, method: str) -> tuple[int, str]:
        """Sort key of a row: the declared order, unknown rows last."""
        methods = list(self.methods)
        return (methods.index(method) if method in methods else 99, method)

    def run_cost(self, config: Any) -> float:
        """The relative cost of the run of ``config``."""
        return self.cost.get(getattr(config, self.row_field), 1.0)


_REGISTRY: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the CLI (a second registration of a name replaces the first)."""
    _REGISTRY[experiment.name] = experiment
    return experiment


def experiments() -> dict[str, Experiment]:
    """``{name: Experiment}`` of every registered experiment, the paper's imported first."""
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
