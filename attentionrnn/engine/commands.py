"""The ``reproduce`` and ``table`` sub-commands every experiment has, so their flags agree.

An experiment's ``reproduce`` parser is :func:`add_reproduce_parser` (``--budget``, ``--out``),
then its own data flags, then :func:`add_run_options` (``--precision``, ``--jobs``,
``--threads``, ``--no-progress``, ``--no-channels-last``); its ``table`` is
:func:`add_table_parser` running :func:`table`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attentionrnn.engine.config import SEED_LIMITS, checked_type
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import PRECISIONS
from attentionrnn.engine.results import recorded_budget

__all__ = [
    "HelpFormatter",
    "add_reproduce_parser",
    "add_run_options",
    "add_table_parser",
    "check_runs",
    "doc_texts",
    "print_reproduced",
    "seed_type",
    "table",
]

#: ``type`` of the flags that take seeds (``reproduce --seeds``, ``e1 generate --seed``): the
#: limits of every config's seed field.
seed_type = checked_type(int, "seed", SEED_LIMITS)
_COUNT = {"minimum": 1, "maximum": 1024}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's help formatter: an option's default after its help, as argparse's
    :class:`~argparse.ArgumentDefaultsHelpFormatter` writes it, except where the default is
    ``None`` (the help says what happens then) or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


#: a docstring's section heading (``Args:``, ``Returns:``): what follows is for the code's readers
_SECTION = re.compile(r"[A-Z]\w*( \w+)?:")


def doc_texts(function: Callable[..., Any]) -> tuple[str, str]:
    """The one-line help and the description of the command that runs ``function``, from its
    docstring (as click takes a command's texts from its function's): the first paragraph, its
    first letter in lower case (unless it starts an acronym) and its full stop dropped, and the
    paragraphs after it up to the first section (``Args:``, ``Returns:``)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", inspect.getdoc(function) or ""):
        if _SECTION.fullmatch(block.split("\n", 1)[0].strip()):
            break
        paragraphs.append(" ".join(block.split()))
    summary = paragraphs[0].removesuffix(".") if paragraphs else ""
    first = summary.split(maxsplit=1)[0] if summary else ""
    if len(first) == 1 or first[1:].islower():  # "Train", "A", not "E4", "PAN"
        summary = summary[0].lower() + summary[1:]
    return summary, "\n\n".join(paragraphs[1:])


def add_reproduce_parser(
    sub: argparse._SubParsersAction,
    budgets: dict[str, Any],
    default: str,
    out: str,
    row: str = "method",
    figure: str = "masks",
) -> argparse.ArgumentParser:
    """The ``reproduce`` parser with ``--budget`` and ``--out`` (default folder ``out``);
    ``row`` names the runs' row folders, ``figure`` the per-dataset figure next to the curves."""
    r = sub.add_parser(
        "reproduce",
        help="add runs to a budget's results folder and rebuild its table and figures",
        description=f"Train the missing (dataset, {row}, seed) runs of a budget into "
        f"OUT/runs/DATASET/{row.upper()}/seedS, then write OUT/results.md, OUT/results.json, "
        f"OUT/curves_DATASET.png and OUT/{figure}_DATASET.png from every finished run. Budgets: "
        + "; ".join(f"{k}: {v.description}" for k, v in budgets.items()),
        formatter_class=HelpFormatter,
    )
    r.add_argument("--budget", choices=tuple(budgets), default=default)
    r.add_argument("--out", default=None, help=f"output folder (default {out})")
    return r


def add_run_options(parser: argparse.ArgumentParser, figures: bool = True) -> None:
    """How ``reproduce`` runs: precision, parallel jobs, threads, progress bars, ``--dry-run``
    and (where the experiment's ``reproduce`` can skip them) ``--no-figures``."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument(
        "--jobs", type=checked_type(int, "jobs", _COUNT),
        help="runs in parallel (default: min(2, cores))",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=checked_type(int, "threads", _COUNT),
        help="torch threads per run (default: cores // jobs)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-channels-last", action="store_true",
        help="run the conv layers contiguous instead of channels_last (faster in fp32 on some "
        "CPUs; recorded in each run's config, and a run resumes only with its own setting)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs still to train, each with the median time of its row's finished "
        "runs, and the total; prepare no data, train nothing",
    )
    if figures:
        parser.add_argument("--no-figures", action="store_true", help="only the table")


def add_table_parser(
    sub: argparse._SubParsersAction, func: Callable[[argparse.Namespace], int], figures: bool = True
) -> argparse.ArgumentParser:
    """The ``table`` parser: a results folder, ``--budget`` and (``figures``) ``--no-figures``."""
    tb = sub.add_parser(
        "table",
        help="rebuild a results folder's table and figures from its finished runs",
        formatter_class=HelpFormatter,
    )
    tb.add_argument("out", type=Path, help="results folder (holds runs/)")
    tb.add_argument("--budget", default=None, help="budget name (default: the one the folder's "
                    "results.json records, else the folder's name)")  # fmt: skip
    if figures:
        tb.add_argument("--no-figures", action="store_true", help="only the table")
    tb.set_defaults(func=func)
    return tb


def table(
    args: argparse.Namespace,
    assemble: Callable[..., dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    prefix: str = "",
    config: type | None = None,
) -> int:
    """Rebuild ``args.out``'s table (and figures) and print it; the budget defaults to the one
    ``OUT/results.json`` records, else to the folder's name less ``prefix``
    (``results/e2-cpu`` is budget ``cpu``). ``config``: the
    experiment's run config class, which every run's recorded config must fit
    (:func:`check_runs`)."""
    if not (args.out / "runs").is_dir():
        raise UserError(f"{args.out}: no runs/ folder of finished runs")
    if config is not None:
        check_runs(args.out, config)
    budget = args.budget or recorded_budget(args.out) or args.out.name.removeprefix(prefix)
    summary = assemble(args.out, budget, figure=not getattr(args, "no_figures", False))
    print(markdown(summary))
    return 0


def check_runs(out: Path, config: type) -> None:
    """Raise :class:`UserError` naming the first finished run under ``OUT/runs`` that is not a
    run of the experiment whose config class is ``config`` (its recorded config has fields that
    class lacks), or whose ``metrics.json`` is corrupt."""
    from attentionrnn.engine.runs import finished_runs

    fields = {f.name for f in dataclasses.fields(config)}
    experiment = config.__module__.split(".")[-2] if "." in config.__module__ else "this"
    for dataset, rows in finished_runs(out).items():
        for row, seeds in rows.items():
            for seed, metrics in seeds.items():
                recorded = metrics.get("config")
                if not isinstance(recorded, dict) or not set(recorded) <= fields:
                    raise UserError(
                        f"{Path(out, 'runs', dataset, row, f'seed{seed}', 'metrics.json')}: not "
                        f"a run of {experiment} (its config does not fit); move it out of {out}"
                    )


def print_reproduced(summary: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> int:
    """Print what ``reproduce`` returned: its results table, or the plan of a ``--dry-run``."""
    from attentionrnn.engine.runs import plan_markdown

    print(plan_markdown(summary) if summary.get("dry_run") else markdown(summary))
    return 0
