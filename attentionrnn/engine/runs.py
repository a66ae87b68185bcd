"""Many runs of one experiment: train the missing ones, find the finished ones, sum them up.

An experiment's ``reproduce`` lays its runs out as ``OUT/runs/DATASET/ROW/seedS/metrics.json``;
:func:`train_runs` trains a list of run configs (one at a time, or in parallel processes, the
most expensive first so parallel jobs finish together), :func:`finished_runs` reads back every
finished run, and :func:`seed_stats` / :func:`format_stats` give the mean ± sample standard
deviation over seeds that the results tables show. :func:`plan_runs` is ``reproduce
--dry-run``: the runs still to train, each with the time its row's finished runs took.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import cpu_name, resolve_precision
from attentionrnn.engine.state import load_checkpoint, read_json
from attentionrnn.engine.stats import describe
from attentionrnn.engine.trainer import CHECKPOINT, METRICS

logger = logging.getLogger("attentionrnn.engine")

__all__ = [
    "finished",
    "finished_runs",
    "format_stats",
    "named_budget",
    "parallelism",
    "plan_markdown",
    "plan_runs",
    "row_seeds",
    "seed_stats",
    "train_runs",
]


def named_budget(budget: Any, budgets: dict[str, Any], cls: type) -> tuple[str, Any]:
    """``(name, settings)`` of a budget given by name, or ``("custom", budget)`` for settings of
    the experiment's budget class ``cls`` made in Python."""
    if isinstance(budget, cls):
        return "custom", budget
    if budget not in budgets:
        raise UserError(f"budget must be one of {', '.join(budgets)}; got {budget!r}")
    return budget, budgets[budget]


def row_seeds(
    method: str, seeds: Sequence[int] | None, budget: Any, spread: Sequence[str]
) -> tuple[int, ...]:
    """The seeds of one row: ``seeds`` where given, else the budget's ``spread_seeds`` for the
    rows whose seed spread the comparison needs (``spread``) and its ``seeds`` for the others."""
    if seeds is not None:
        return tuple(seeds)
    return tuple(budget.spread_seeds if method in spread else budget.seeds)


def parallelism(jobs: int | None, threads: int | None) -> tuple[int, int]:
    """``(jobs, threads per job)``: by default one job per core (at most 2), cores // jobs."""
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and not 1 <= value <= 1024:
            raise UserError(f"--{name} must be between 1 and 1024, got {value}")
    cores = os.cpu_count() or 1
    jobs = jobs or max(1, min(2, cores))
    return jobs, threads or max(1, cores // jobs)


def _exit_with_parent(parent: int, interval: float = 2.0) -> None:
    """Pool initializer: end this job when the process that started it is gone.

    ``kill PID`` (or a crash) of ``reproduce`` would otherwise leave its spawned jobs training on
    for hours, unseen, on the cores the next command needs.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_logged(train: Callable[[Any], Any], config: Any) -> Any:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return train(config)


def train_runs(
    configs: Sequence[Any],
    train: Callable[[Any], Any],
    jobs: int,
    cost: Callable[[Any], float] = lambda c: 1.0,
) -> None:
    """Train every config with ``train`` (a module-level function, so spawned jobs can import
    it): in this process when ``jobs == 1``, else in ``jobs`` spawned processes."""
    ordered = sorted(configs, key=lambda c: -cost(c))
    logger.info("%d run(s) to train, %d job(s)", len(ordered), jobs)
    if jobs == 1:
        for config in ordered:
            train(config)
        return
    if not ordered:
        return
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:  # fmt: skip
        futures = {pool.submit(_train_logged, train, c): c for c in ordered}
        for future in as_completed(futures):
            future.result()
            logger.info("finished %s", futures[future].out)


def _hours(metrics: dict[str, Any]) -> float | None:
    seconds = metrics.get("wall_time_s", metrics.get("training_time_s"))
    return None if seconds is None else seconds / 3600


def _row_estimate(
    row: Path, precision: str | None = None, cpu: str | None = None
) -> tuple[float | None, str, bool, bool]:
    """Median hours of the finished runs of one row (``OUT/runs/DATASET/ROW``), else of the same
    row on the other datasets (a budget gives every dataset the same number of samples and image
    size, so a run costs about the same on each), with where the figure came from, whether it was
    timed in another precision than ``precision`` (the one the run would train in here: a bf16
    run on a machine with AMX takes less than half the time of the same run in fp32 elsewhere)
    and whether it was timed on this CPU (``cpu``, as :func:`cpu_name` records it in
    ``metrics.json``; older runs did not record one).

    Runs on this CPU in ``precision`` come first, then runs in ``precision`` anywhere, then any;
    at each level this row's runs before the other datasets'. ``None`` takes every run alike."""
    places = []
    for base, pattern, source in (
        (row.parent, row.name, "this row"),
        (row.parent.parent, f"*/{row.name}", "this row, other datasets"),
    ):
        timed = []
        for path in base.glob(f"{pattern}/seed*/{METRICS}"):
            metrics = read_json(path, "metrics.json")
            if (hours := _hours(metrics)) is not None:
                timed.append((hours, metrics.get("precision", "fp32"), metrics.get("cpu")))
        places.append((timed, source))
    same_precision = lambda p: precision is None or p == precision  # noqa: E731
    levels = (
        lambda p, c: same_precision(p) and cpu is not None and c == cpu,
        lambda p, c: same_precision(p),
        lambda p, c: True,
    )
    for level, keep in enumerate(levels):
        for timed, source in places:
            hours = [h for h, p, c in timed if keep(p, c)]
            if not hours:
                continue
            note = f"median of {len(hours)} finished run(s) of {source}"
            if level == 0:
                note += ", timed on this CPU"
            other = level == 2 and precision is not None
            if other:
                others = "/".join(sorted({p for _, p, _ in timed}))
                note += f", timed in {others}: this machine trains in {precision}"
            return float(np.median(hours)), note, other, level == 0
    return None, "no finished run of this row to time", False, False


def finished(run: Path, config: Any) -> bool:
    """Whether the run of ``config`` in folder ``run`` has finished: its ``metrics.json`` is
    there and, where the config is :attr:`~attentionrnn.engine.config.RunConfig.EXTENDABLE`, it
    trained as many epochs as ``config`` asks (a longer budget extends it)."""
    path = Path(run) / METRICS
    if not path.is_file():
        return False
    if not getattr(config, "EXTENDABLE", False):
        return True
    recorded = read_json(path, "metrics.json").get("config", {}).get("epochs")
    return not isinstance(recorded, int) or recorded >= config.epochs


def _progress(config: Any) -> tuple[int, int] | None:
    """``(epochs done, epochs)`` of a run that an interrupted process left a checkpoint of, from
    ``OUT/checkpoint.pt``; ``None`` where there is none, it is unreadable (the run itself will
    say so) or the config has no ``epochs``."""
    path, epochs = Path(config.out) / CHECKPOINT, getattr(config, "epochs", None)
    if not epochs or not path.is_file():
        return None
    try:
        done = int(load_checkpoint(path)["state"].get("epoch", 0))
    except (UserError, AttributeError, TypeError, ValueError):
        return None
    return (min(done, epochs), epochs) if done > 0 else None


def _estimate(
    configs: Sequence[Any], cost: Callable[[Any], float], resume: bool = False
) -> list[dict[str, Any]]:
    """Each config's run with its estimated hours (:func:`_row_estimate`; a row with no finished
    run at all: the median hours per unit of ``cost`` of the timed runs times its own cost),
    most expensive first. ``resume``: a run with a checkpoint counts only the share of its
    epochs still to train (an early stop may end it sooner still)."""
    cpu = cpu_name()
    runs = []
    for c in sorted(configs, key=lambda c: -cost(c)):
        precision = resolve_precision(c.precision) if hasattr(c, "precision") else None
        hours, source, other, here = _row_estimate(Path(c.out).parent, precision, cpu)
        runs.append(
            {"out": str(c.out), "hours": hours, "source": source, "cost": cost(c),
             "other": other, "this_cpu": here, "progress": _progress(c) if resume else None}
        )  # fmt: skip
    # a row never run yet: the timed runs' hours per unit of cost, times its own cost
    timed = [r for r in runs if r["hours"] is not None]
    per_cost = [r["hours"] / r["cost"] for r in timed]
    scale = float(np.median(per_cost)) if per_cost else None
    for r in runs:
        if r["hours"] is None and scale is not None:
            r["hours"] = scale * r["cost"]
            r["source"] = f"never run: relative cost {r['cost']:g} x the timed rows' hours/cost"
            r["scaled"] = True
            r["other"] = any(t["other"] for t in timed)
    for r in runs:
        progress = r.pop("progress")
        if r["hours"] is not None and progress is not None:
            done, epochs = progress
            r["hours"] *= (epochs - done) / epochs
            r["source"] += f"; resumes after epoch {done} of {epochs}"
    return runs


def _wall_hours(hours: Sequence[float], jobs: int) -> float:
    """Wall hours of runs taking ``hours`` (most expensive first), each started on the job that
    frees up first, as :func:`train_runs` schedules them."""
    free = [0.0] * max(1, jobs)
    for h in hours:
        free[free.index(min(free))] += h
    return max(free)


def plan_runs(
    configs: Sequence[Any],
    jobs: int,
    cost: Callable[[Any], float] = lambda c: 1.0,
    every: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """What :func:`train_runs` would do with ``configs``, without training: every run still to
    train (its ``out``) with an estimate of its hours, the median wall time (``wall_time_s``, else
    ``training_time_s``) of the finished runs of the same row, on the same dataset where there
    are some, else on the others (runs timed on this CPU in the precision the config would train
    in first, then runs in that precision on any CPU; runs in another precision only where there
    are none, and then counted in ``other_precision``); for a row with no finished
    run at all, the median hours per unit of ``cost`` of the timed runs in the plan times its own
    ``cost`` (``None`` where no run of the plan can be timed); and the total.

    A run that an interrupted process left a checkpoint of counts only the share of its epochs
    still to train. ``wall_hours`` schedules the estimated runs the way :func:`train_runs` does
    (most expensive first, each on the job that frees up first); runs of unknown length are left
    out of both sums and counted in ``unknown``.

    ``every``: the configs of the whole request, finished runs included. Then ``whole`` gives
    what all of it costs on this machine, every run estimated as above (a finished run by its
    row's runs, not by its own recorded time), so that a budget's size on one machine can be
    told from runs spread over several.
    """
    runs = _estimate(configs, cost, resume=True)
    known = [r["hours"] for r in runs if r["hours"] is not None]
    plan = {
        "dry_run": True,
        "jobs": jobs,
        "runs": runs,
        "job_hours": float(sum(known)),
        "wall_hours": _wall_hours(known, jobs),
        "unknown": len(runs) - len(known),
        "scaled": sum(1 for r in runs if r.get("scaled")),
        "other_precision": sum(1 for r in runs if r["other"]),
        "other_cpu": sum(1 for r in runs if r["hours"] is not None and not r["this_cpu"]),
        "cpu": cpu_name(),
    }
    if every is not None:
        whole = _estimate(every, cost)
        hours = [r["hours"] for r in whole if r["hours"] is not None]
        plan["whole"] = {
            "runs": len(whole),
            "job_hours": float(sum(hours)),
            "wall_hours": _wall_hours(hours, jobs),
            "unknown": len(whole) - len(hours),
            "this_cpu": sum(1 for r in whole if r["this_cpu"]),
        }
    return plan


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan of :func:`plan_runs` as a markdown list with its total (and, where the plan has
    one, what the whole request costs on this machine)."""
    text = _todo_markdown(plan)
    whole = plan.get("whole")
    if whole is None:
        return text
    if whole["unknown"] == whole["runs"]:
        return text + "\n\nThe whole request: no estimate, none of its rows has a finished run yet."
    line = (
        f"The whole request on this machine ({plan['cpu']}): {whole['runs']} runs, finished ones "
        f"included, ~{whole['job_hours']:.1f} job-hours, ~{whole['wall_hours']:.1f} h wall with "
        f"{plan['jobs']} job(s); {whole['this_cpu']} of the {whole['runs']} estimates come from "
        "runs timed on this CPU"
    )
    if whole["unknown"]:
        line += f", and {whole['unknown']} run(s) have no finished run of their row to time"
    return f"{text}\n\n{line}."


def _todo_markdown(plan: dict[str, Any]) -> str:
    if not plan["runs"]:
        return "Nothing to train: every requested run has finished."
    lines = [f"{len(plan['runs'])} run(s) to train with {plan['jobs']} job(s):", ""]
    for run in plan["runs"]:
        hours = "unknown" if run["hours"] is None else f"~{run['hours']:.2f} h"
        lines.append(f"- {run['out']}: {hours} ({run['source']})")
    if plan["unknown"] == len(plan["runs"]):
        return "\n".join([*lines, "", "No estimate: none of these rows has a finished run yet."])
    total = (
        f"Estimated: {plan['job_hours']:.1f} job-hours, ~{plan['wall_hours']:.1f} h wall "
        f"with {plan['jobs']} job(s)"
    )
    if plan.get("scaled"):
        total += f" ({plan['scaled']} of the runs from relative costs alone)"
    if plan["unknown"]:
        total += f", plus {plan['unknown']} run(s) whose row has no finished run to time"
    if plan.get("other_precision"):
        total += (
            f"; {plan['other_precision']} of the estimates come from runs timed in another "
            "precision than this machine's, so they are off by the speed of that precision here"
        )
    if plan.get("other_cpu"):
        total += (
            f"; {plan['other_cpu']} come from runs timed on other CPUs (or before runs recorded "
            "their CPU)"
        )
    return "\n".join([*lines, "", total + "."])


def finished_runs(out: Path) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """``{dataset: {row: {seed: metrics}}}`` of every finished run under ``OUT/runs``."""
    found: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for path in sorted(Path(out, "runs").glob(f"*/*/seed*/{METRICS}")):
        dataset, row, folder = path.parts[-4], path.parts[-3], path.parts[-2]
        if not folder[4:].isdigit():
            raise UserError(
                f"{path.parent}: a run folder must be named seedN (N the seed); rename or move it"
            )
        found.setdefault(dataset, {}).setdefault(row, {})[int(folder[4:])] = read_json(
            path, "metrics.json"
        )
    return found


def seed_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (``None`` for one value), the 95 % interval of the mean
    and the values themselves (:func:`attentionrnn.engine.stats.describe`)."""
    return describe(values)


def format_stats(stats: dict[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``"mean ± std"`` (``"mean"`` for one seed, ``"–"`` for none), values times ``scale``."""
    if not stats or stats.get("mean") is None:
        return "–"
    text = f"{stats['mean'] * scale:.{digits}f}"
    if stats.get("std") is None:
        return text
    return f"{text} ± {stats['std'] * scale:.{digits}f}"
