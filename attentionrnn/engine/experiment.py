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

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attentionrnn.engine.commands import doc_texts

__all__ = ["Budget", "Experiment", "Row", "config_budget", "experiments", "register_experiment"]

#: the options of ``reproduce`` that every run config takes (:meth:`Experiment.budget_config`)
RUN_OPTIONS = ("precision", "threads", "progress", "channels_last")

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
    #: the seeds of the rows whose spread the comparison needs (:attr:`Row.spread`)
    spread_seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Row:
    """What an experiment declares of one row of its table (an attention method): its table
    ``label``, the relative ``cost`` of one of its runs (parallel runs start with the most
    expensive; dry runs scale timed rows by it) and whether the comparison needs its seed
    ``spread`` (then it trains with the budget's :attr:`Budget.spread_seeds`)."""

    label: str
    cost: float = 1.0
    spread: bool = False


def config_budget(config: type, *names: str, **defaults: Any) -> type:
    """A :class:`Budget` class for an experiment's budget to subclass, whose fields are the run
    config's fields ``names``, with the config's types and defaults, and whose ``epochs`` default
    to the config's (``defaults`` gives others, and may give Budget's own fields other defaults):
    what a budget sets is declared once, in the config, a budget states only where it differs,
    and :meth:`Experiment.budget_config` copies it into the runs' configs."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    own = {f.name: f for f in dataclasses.fields(Budget)}
    unknown = sorted(set(names) - set(fields)) + sorted(set(defaults) - set(names) - set(own))
    if unknown:
        raise TypeError(f"{config.__name__} has no field(s) {unknown}")
    if "epochs" in fields:
        defaults.setdefault("epochs", fields["epochs"].default)
    spec = [(n, fields[n].type, field(default=defaults.pop(n, fields[n].default))) for n in names]
    spec += [(n, own[n].type, field(default=v)) for n, v in defaults.items()]
    return dataclasses.make_dataclass(f"{config.__name__}Budget", spec, bases=(Budget,),
                                      frozen=True, kw_only=True)  # fmt: skip


@dataclass
class Experiment:
    """One experiment's declaration.

    Attributes:
        name: the CLI name (``e2``) and the prefix of its results folders (``results/e2-cpu``).
        help, description: the CLI's one-line help and the ``attentionrnn NAME --help`` text.
        config: the run config class (a :class:`~attentionrnn.engine.config.RunConfig`): the
            ``train`` flags are its fields.
        train: ``train(config) -> metrics`` (a module-level function: parallel jobs import it);
            its docstring gives the ``train`` command its help and description
            (:func:`~attentionrnn.engine.commands.doc_texts`).
        budgets, default_budget, budget_class: the named budgets of ``reproduce`` (default: the
            first budget, and its class).
        datasets: the valid ``--datasets`` (default: the choices of the config's ``dataset``).
        methods: the rows (attention method names) a ``reproduce`` may train, in table order
            (default: the choices of the config's :attr:`row_field`).
        base_config: ``(budget, dataset, options) -> config`` without row, seed and out;
            ``options`` holds ``precision``, ``threads``, ``progress``, ``out`` (the results
            folder) and the values of :attr:`config_flags` and :attr:`reproduce_flags` (default:
            :meth:`budget_config`).
        markdown: ``summary -> str``: the table printed (default, where ``table_section`` is
            declared: :meth:`markdown_document`).
        table_title, table_caption, table_section: the parts of :meth:`markdown_document`: the
            title, the text above the tables, ``(summary, dataset, rows) -> lines`` of a dataset.
        summarize, figures, totals, figures_for, table_order, log: what
            :meth:`assemble_table` passes to :func:`~attentionrnn.engine.results.assemble`
            (``table_order`` default: :meth:`order`; ``summarize`` default, where ``columns``
            is declared: :meth:`summarize_row`; ``figures`` default, where ``curve_figure`` is
            declared: :meth:`dataset_figures`; ``log`` default: ``attentionrnn.NAME.reproduce``).
        columns: ``[metrics of each seed] -> {key: statistics}``: a row's own entries of the
            table (:meth:`summarize_row`).
        reference, compared: the row every other is tested against (Welch, the one rule of
            :mod:`~attentionrnn.engine.stats`) and the quantities tested, ``{name: (label, path
            of keys in a summarised row)}``: ``results.json``'s ``comparisons``, shown under a
            dataset's table by :func:`~attentionrnn.engine.results.comparison_section`.
        scale, digits: how the table shows the compared quantities (times ``scale``, with
            ``digits`` decimals or ``{quantity: decimals}``); the runs section of ``results.md``
            (:func:`~attentionrnn.engine.results.runs_section`) shows each run's values so.
        curves: the validation curves whose final slope says whether a run's curves were flat
            (``{name: (label, path of keys in a history entry)}``,
            :mod:`~attentionrnn.engine.convergence`): listed per run in ``results.md``.
        curve_figure, run_figure, figure_title, dataset_title: the figures of
            :meth:`dataset_figures`: ``curve_figure(curves, path, title)`` draws the learning
            curves, ``run_figure(runs, path, title)`` the :attr:`figure` of ``{row label: run
            folder}`` (titled ``DATASET: FIGURE_TITLE``); ``dataset_title(dataset)`` names a
            dataset in titles.
        assemble: ``(out, budget_name, settings, figure=...) -> summary``: writes the table
            (default: :meth:`assemble_table`).
        rows: ``{method: Row}``, the table's rows: label, relative run cost, spread seeds or
            not (a method without one, e.g. a general method registered later, is labelled by
            its name, costs 1 and is trained only where ``--methods`` names it).
        row_field: the config field the row's method goes to (``attention``, ``mask``).
        default_datasets, default_methods: ``budget -> names`` where ``--datasets`` /
            ``--methods`` are not given (default: the first dataset, the :attr:`table_rows`).
        row_folder: ``(method, options) -> folder name`` of a row (default: the method).
        skip: ``(method, dataset) -> True`` for pairs that cannot run (no boxes for an oracle).
        check: ``(budget_name, budget, datasets) -> None``: raise ``UserError`` for a request
            that cannot run.
        prepare: ``(dataset, configs, jobs, options) -> configs``: fill the data cache once
            before parallel jobs read it; may set fields (E1 sets the data file); called only
            for datasets with runs to train.
        config_flags: the config fields that ``reproduce`` takes as flags too, as ``train``
            does (the data options; their names are the keys in ``options``).
        reproduce_flags: ``(flag, add_argument keywords)`` of the data flags of ``reproduce``
            (their ``dest`` goes into ``options``).
        train_keys: the metrics ``train`` prints.
        methods_help, datasets_help, seeds_help: CLI texts.
        train_help, train_description: ``train``'s texts where they are not its function's
            docstring's (default: :func:`~attentionrnn.engine.commands.doc_texts` of
            :attr:`train`).
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
    rows: dict[str, Row]
    markdown: Callable[[dict[str, Any]], str] | None = None
    table_title: str = ""
    table_caption: str = ""
    table_section: Callable[[dict[str, Any], str, dict[str, Any]], list[str]] | None = None
    datasets: Sequence[str] = ()
    methods: Sequence[str] = ()
    default_budget: str | None = None
    budget_class: type | None = None
    base_config: Callable[[Any, str, dict[str, Any]], Any] | None = None
    summarize: Callable[[str, dict[int, dict[str, Any]]], dict[str, Any]] | None = None
    columns: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    reference: str | None = None
    compared: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    scale: float = 1.0
    digits: int | dict[str, int] = 3
    curves: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    curve_figure: Callable[[dict[str, Any], Path, str], Path] | None = None
    run_figure: Callable[[dict[str, Path], Path, str], Path | None] | None = None
    figure_title: str = "attention"
    dataset_title: Callable[[str], str] = str
    figures: Callable[..., dict[str, str]] | None = None
    totals: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    figures_for: str = "found"
    table_order: Callable[[str], Any] | None = None
    log: logging.Logger | None = None
    assemble: Callable[..., dict[str, Any]] | None = None
    row_field: str = "attention"
    default_datasets: Callable[[Any], Sequence[str]] | None = None
    default_methods: Callable[[Any], Sequence[str]] | None = None
    row_folder: Callable[[str, dict[str, Any]], str] | None = None
    skip: Callable[[str, str], bool] | None = None
    check: Callable[[str, Any, Sequence[str]], None] | None = None
    prepare: Callable[[str, list[Any], int, dict[str, Any]], list[Any]] | None = None
    config_flags: Sequence[str] = ()
    reproduce_flags: Sequence[tuple[str, dict[str, Any]]] = ()
    train_keys: Sequence[str] = ()
    train_help: str | None = None
    train_description: str | None = None
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
        choices = {f.name: f.metadata.get("choices", ()) for f in dataclasses.fields(self.config)}
        self.datasets = tuple(self.datasets or choices["dataset"])
        self.methods = tuple(self.methods or choices[self.row_field])
        if self.default_budget is None:
            self.default_budget = next(iter(self.budgets))
        if self.budget_class is None:
            self.budget_class = type(self.budgets[self.default_budget])
        if self.base_config is None:
            self.base_config = self.budget_config
        if self.summarize is None and self.columns is not None:
            self.summarize = self.summarize_row
        if self.figures is None and self.curve_figure is not None:
            self.figures = self.dataset_figures
        if self.markdown is None and self.table_section is not None:
            self.markdown = self.markdown_document
        if self.log is None:
            self.log = logging.getLogger(f"attentionrnn.{self.name}.reproduce")
        if self.assemble is None:
            self.assemble = self.assemble_table
        summary, details = doc_texts(self.train)
        if self.train_help is None:
            self.train_help = summary or "train one run"
        if self.train_description is None:
            self.train_description = details

    def flag_dests(self) -> list[str]:
        """The ``options`` keys of :attr:`config_flags` and :attr:`reproduce_flags`."""
        return [*self.config_flags, *(kw.get("dest", flag.lstrip("-").replace("-", "_"))
                                      for flag, kw in self.reproduce_flags)]  # fmt: skip

    def budget_config(
        self, budget: Any, dataset: str, options: dict[str, Any], **values: Any
    ) -> Any:
        """A run config of ``dataset`` without row, seed and out: the fields of ``budget`` that
        the config has, the run options (``precision``, ``threads``, ``progress``) and the
        :attr:`config_flags` and :attr:`reproduce_flags` given in ``options``, then
        ``values``."""
        names = {f.name for f in dataclasses.fields(self.config)}
        settings = {f.name: getattr(budget, f.name) for f in dataclasses.fields(budget)
                    if f.name in names}  # fmt: skip
        settings.update((k, options[k]) for k in (*RUN_OPTIONS, *self.flag_dests())
                        if k in options and k in names)  # fmt: skip
        return self.config(dataset=dataset, **{**settings, **values})

    @property
    def row_key(self) -> str:
        """What a row is called: ``method``, or the :attr:`row_field` where it is not
        ``attention`` (E4's ``mask``)."""
        return "method" if self.row_field == "attention" else self.row_field

    def summarize_row(self, method: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """A row of the table from ``{seed: metrics}``: the method, its label, seeds, precision
        and parameters, its :attr:`columns`, then its epochs and hours (mean ± std over the
        seeds; the wall time summed)."""
        from attentionrnn.engine.runs import seed_stats

        ms = [runs[s] for s in sorted(runs)]
        first = ms[0]
        return {
            self.row_key: method,
            "label": self.label(method),
            "seeds": sorted(runs),
            "precision": first.get("precision"),
            "parameters": first.get("parameters"),
            **self.columns(ms),  # type: ignore[misc]
            "epochs": [m["epochs"] for m in ms],
            "training_time_h": seed_stats([m["training_time_s"] / 3600 for m in ms]),
            "wall_time_h": sum(m.get("wall_time_s", m["training_time_s"]) for m in ms) / 3600,
        }

    def markdown_document(self, summary: dict[str, Any]) -> str:
        """The table as Markdown (:func:`~attentionrnn.engine.results.markdown_document` of
        :attr:`table_title`, :attr:`table_caption` and :attr:`table_section`)."""
        from attentionrnn.engine import results

        return results.markdown_document(
            summary,
            self.table_title,
            self.table_caption,
            self.table_section,  # type: ignore[arg-type]
        )

    def dataset_figures(
        self, out: Path, dataset: str, rows: dict[str, dict[int, dict[str, Any]]]
    ) -> dict[str, str]:
        """The learning curves ``OUT/curves_DATASET.png`` and, where the weights and data are
        here, the :attr:`figure` of the lowest seed of each row ``OUT/FIGURE_DATASET.png``
        (:attr:`curve_figure`; :attr:`run_figure`, given the runs by their rows' labels);
        returns ``{kind: file name}``."""
        from attentionrnn.engine import results

        title = self.dataset_title(dataset)
        curves = results.learning_curves(rows, self.label, self.order)
        path = self.curve_figure(curves, out / f"curves_{dataset}.png",  # type: ignore[misc]
                                 f"{title}: learning curves")  # fmt: skip
        drawn = {"curves": path.name}
        if self.run_figure is None:
            return drawn
        runs = {self.label(m): out / "runs" / dataset / m / f"seed{min(rows[m])}"
                for m in sorted(rows, key=self.order)}  # fmt: skip
        extra = results.optional_figure(
            lambda: self.run_figure(runs, out / f"{self.figure}_{dataset}.png",  # type: ignore[misc]
                                    f"{title}: {self.figure_title}"),
            f"{self.figure} figure", dataset, self.log,  # type: ignore[arg-type]
        )  # fmt: skip
        if extra:
            drawn[self.figure] = extra.name
        return drawn

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
            reference=self.reference, compared=self.compared, scale=self.scale,
            digits=self.digits, curves=self.curves,
        )  # fmt: skip

    def out_for(self, budget: str) -> str:
        """The default results folder of ``budget``."""
        return self.default_out.format(name=self.name, budget=budget)

    @property
    def table_rows(self) -> tuple[str, ...]:
        """The rows of the table: the methods declared in :attr:`rows`, in :attr:`methods`
        order (every method where none is); a general method registered later is not declared
        here, so a ``reproduce`` trains it only where ``--methods`` names it."""
        return tuple(m for m in self.methods if m in self.rows) or tuple(self.methods)

    @property
    def spread(self) -> tuple[str, ...]:
        """The rows trained with the budget's ``spread_seeds``."""
        return tuple(m for m, row in self.rows.items() if row.spread)

    def label(self, method: str) -> str:
        """The table label of a row (its name where it is not declared)."""
        return self.rows.get(method, Row(method)).label

    def order(self, method: str) -> tuple[int, str]:
        """Sort key of a row: the declared order, unknown rows last."""
        methods = list(self.methods)
        return (methods.index(method) if method in methods else 99, method)

    def run_cost(self, config: Any) -> float:
        """The relative cost of the run of ``config``."""
        method = getattr(config, self.row_field)
        return self.rows.get(method, Row(method)).cost


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
