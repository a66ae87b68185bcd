"""The reproduce loop and the ``train | reproduce | table`` commands, once for every experiment.

:func:`reproduce` turns a budget's request (datasets × methods × seeds) into run configs under
``OUT/runs/DATASET/ROW/seedS``, skips the finished ones, and either plans them (``--dry-run``) or
trains them and assembles the table. :func:`add_commands` builds an experiment's sub-commands
from its :class:`~attentionrnn.engine.experiment.Experiment`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from attentionrnn.engine.commands import (
    HelpFormatter,
    add_reproduce_parser,
    add_run_options,
    add_table_parser,
    print_reproduced,
    seed_type,
    table,
)
from attentionrnn.engine.config import add_config_arguments, config_from_args
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.experiment import Experiment
from attentionrnn.engine.runs import (
    finished,
    named_budget,
    parallelism,
    plan_runs,
    row_seeds,
    train_runs,
)

__all__ = ["add_commands", "reproduce"]


def reproduce(
    experiment: Experiment,
    out: str | Path,
    budget: Any = None,
    datasets: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    precision: str = "auto",
    jobs: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    channels_last: bool = True,
    figure: bool = True,
    dry_run: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train the runs of the request that are missing, then assemble the table from every
    finished run (``dry_run``: train nothing, prepare no data, return the plan of
    :func:`~attentionrnn.engine.runs.plan_runs`).

    Args:
        experiment: what to run.
        out: the results folder.
        budget: a budget name, or settings of the experiment's budget class.
        datasets, methods: which runs to add (default: the experiment's defaults).
        seeds: training seeds of every row (default: the budget's, ``spread_seeds`` for the
            experiment's spread rows).
        precision, jobs, threads, progress, figure: how to run (``progress`` only with one job).
        channels_last: the conv layers in channels_last memory order (the default); ``False``
            runs them contiguous, which some CPUs run faster in fp32 (it changes the numbers in
            the last bits, so every run of a table should use one setting).
        options: the experiment's data options (its ``reproduce_flags``).
    """
    e = experiment
    name, b = named_budget(
        e.default_budget if budget is None else budget, e.budgets, e.budget_class
    )
    if datasets is None:
        datasets = tuple(e.default_datasets(b) if e.default_datasets else e.datasets[:1])
    if methods is None:
        methods = tuple(e.default_methods(b) if e.default_methods else e.table_rows)
    for given, valid, what in ((methods, e.methods, "method"), (datasets, e.datasets, "dataset")):
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise UserError(f"unknown {what}(s) {unknown}; valid: {', '.join(valid)}")
    if e.check is not None:
        e.check(name, b, datasets)
    out = Path(out)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    jobs, threads = parallelism(jobs, threads)
    options = {**options, "precision": precision, "threads": threads, "out": out,
               "progress": progress and jobs == 1, "channels_last": channels_last}  # fmt: skip

    configs: list[Any] = []
    every: list[Any] = []  # the whole request, finished runs included (the dry run's total)
    for dataset in datasets:
        base = e.base_config(b, dataset, options)
        todo = []
        for method in methods:
            if e.skip is not None and e.skip(method, dataset):
                continue
            row = e.row_folder(method, options) if e.row_folder else method
            for seed in row_seeds(method, seeds, b, e.spread):
                run = out / "runs" / dataset / row / f"seed{seed}"
                config = dataclasses.replace(base, seed=seed, out=str(run),
                                             **{e.row_field: method})  # fmt: skip
                every.append(config)
                if not finished(run, config):
                    todo.append(config)
        if todo and not dry_run and e.prepare is not None:
            todo = e.prepare(dataset, todo, jobs, options)
        configs += todo
    if dry_run:
        return plan_runs(configs, jobs, cost=e.run_cost, every=every)
    train_runs(configs, e.train, jobs, cost=e.run_cost)
    return e.assemble(out, name, b, figure=figure)


# ------------------------------------------------------------------------------------------
# the command line


def _tty() -> bool:
    return sys.stderr.isatty()


def add_commands(subparsers: argparse._SubParsersAction, experiment: Experiment) -> None:
    """Add ``attentionrnn NAME`` with ``train``, ``reproduce``, ``table`` and the experiment's
    own commands."""
    e = experiment
    parser = subparsers.add_parser(e.name, help=e.help, description=e.description)
    sub = parser.add_subparsers(dest=f"{e.name}_command", metavar="COMMAND", required=True)
    if e.commands is not None:
        importlib.import_module(e.commands).register(sub)

    t = sub.add_parser("train", help=e.train_help, description=e.train_description,
                       formatter_class=HelpFormatter)  # fmt: skip
    add_config_arguments(t, e.config, {"out": {"required": True}})
    t.set_defaults(func=lambda args: _train(e, args))

    r = add_reproduce_parser(sub, e.budgets, e.default_budget, e.out_for("BUDGET"), row=e.row_key,
                             figure=e.figure)  # fmt: skip
    r.add_argument("--datasets", nargs="+", choices=e.datasets, help=e.datasets_help or
                   f"datasets to add runs of (default: {e.datasets[0]})")  # fmt: skip
    r.add_argument("--methods", nargs="+", choices=e.methods, dest="methods",
                   help=e.methods_help or "rows to add (default: all)")  # fmt: skip
    if e.row_field != "attention":  # the older name of the flag (E4's --masks)
        r.add_argument(f"--{e.row_field}s", nargs="+", choices=e.methods, dest="methods",
                       help=argparse.SUPPRESS)  # fmt: skip
    r.add_argument("--seeds", nargs="+", type=seed_type, help=e.seeds_help)
    add_config_arguments(r, e.config, names=e.config_flags)
    for flag, kwargs in e.reproduce_flags:
        r.add_argument(flag, **kwargs)
    add_run_options(r, figures=e.table_figures)
    r.set_defaults(func=lambda args: _reproduce(e, args))

    add_table_parser(sub, lambda args: _table(e, args), figures=e.table_figures)


def _train(e: Experiment, args: argparse.Namespace) -> int:
    config = config_from_args(e.config, args)
    config.progress = config.progress and _tty()
    metrics = e.train(config)
    print(json.dumps({k: metrics.get(k) for k in e.train_keys}, indent=2))
    return 0


def _reproduce(e: Experiment, args: argparse.Namespace) -> int:
    options = {dest: getattr(args, dest) for dest in e.flag_dests()}
    summary = reproduce(
        e, args.out or e.out_for(args.budget), budget=args.budget,
        datasets=tuple(args.datasets) if args.datasets else None,
        methods=tuple(args.methods) if args.methods else None,
        seeds=tuple(args.seeds) if args.seeds else None, precision=args.precision,
        jobs=args.jobs, threads=args.threads, progress=not args.no_progress and _tty(),
        channels_last=not args.no_channels_last, figure=not getattr(args, "no_figures", False),
        dry_run=args.dry_run, **options,
    )  # fmt: skip
    return print_reproduced(summary, e.markdown)


def _table(e: Experiment, args: argparse.Namespace) -> int:
    prefix = f"{e.name}-" if e.table_prefix is None else e.table_prefix
    return table(args, e.assemble, e.markdown, prefix, config=e.config)
