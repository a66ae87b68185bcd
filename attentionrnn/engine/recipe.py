"""What every experiment's recipe does around :func:`~attentionrnn.engine.trainer.fit`: start the
run (its folder, the seeds), fit it or find it finished, and finish it (write ``metrics.json``
and say so).

An experiment's recipe reads::

    @recipe
    def train(config, ctx, out, started):  # called as train(config)
        ...  # data, model, optimiser, one_epoch, validate
        state, done = fit_run(model, optimizer, one_epoch, validate, config=config, ...)
        if done is not None:
            return done
        test = evaluate(model, data, "test", ...)  # an Evaluation of the experiment's rows
        metrics = {..., **run_metrics(started, data.indices, model, attention=...)}
        return finish_run(out, metrics, state, config=config, ..., name=name, summary=...)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.provenance import git_commit
from attentionrnn.engine.state import seed_everything
from attentionrnn.engine.trainer import (
    BEST,
    METRICS,
    FitState,
    finished_metrics,
    fit,
    launch,
    write_metrics,
)

__all__ = [
    "Evaluation",
    "batch_chunks",
    "finish_run",
    "fit_run",
    "load_finished",
    "recipe",
    "run_metrics",
    "start_run",
]


def start_run(config: Any, ctx: DistContext) -> tuple[Path, float]:
    """The run folder of ``config`` (made by the main rank) and the start time, with every
    random stream seeded by ``config.seed``."""
    out = Path(config.out)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    # the commit is read now (and cached), so that the run records the code it starts with, not
    # the checkout's state when it ends
    git_commit()
    seed_everything(config.seed)
    return out, time.perf_counter()


def recipe(body: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Make an experiment's training recipe ``body(config, ctx, out, started, ...)`` its
    ``train(config, ...)``: :func:`~attentionrnn.engine.trainer.launch` checks the config,
    joins the process group and holds the run folder, :func:`start_run` seeds every random
    stream and notes the start time, then ``body`` trains and returns the metrics.

    ``train`` keeps ``body``'s name, module and docstring, so that spawned jobs import it by name
    (use it as a decorator of the module-level ``train``).
    """

    @functools.wraps(body)
    def train(config: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return launch(config, lambda c, ctx: body(c, ctx, *start_run(c, ctx), *args, **kwargs))

    return train


def run_metrics(
    started: float | None,
    samples: Mapping[str, Sized] | Callable[[str], Sized],
    model: nn.Module,
    **parts: nn.Module,
) -> dict[str, Any]:
    """The sizes every run records: the number of parameters of ``model`` (``parameters``) and
    of each of its ``parts`` (``attention=model.estimators``: ``attention_parameters``), the
    seconds since ``started`` (``wall_time_s``; not recorded where ``started`` is ``None``) and
    the number of samples of each split (``samples``: ``{split: indices}``, or
    ``indices(split)`` of ``train``, ``val`` and ``test``)."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    metrics: dict[str, Any] = {"parameters": count(model)}
    metrics.update((f"{name}_parameters", count(part)) for name, part in parts.items())
    if started is not None:
        metrics["wall_time_s"] = time.perf_counter() - started
    if callable(samples):
        samples = {split: samples(split) for split in ("train", "val", "test")}
    metrics["samples"] = {split: len(idx) for split, idx in samples.items()}
    return metrics


@dataclass(frozen=True)
class Evaluation:
    """An experiment's measurement of one split, sharded over the ranks: calling it as
    ``evaluate(model, data, split, batch_size, ctx=None, precision="fp32")`` puts ``model`` in
    eval mode and, without gradients, has every rank compute ``rows(model, data, split, idx,
    precision)`` for each batch of ``batch_size`` of its shard of ``data.indices(split)``; the rows
    of every rank are gathered in sample order
    (:meth:`~attentionrnn.engine.distributed.DistContext.gather_batches`) and
    ``summary(table, model, data, split)`` turns them into the split's metrics.

    Attributes:
        rows: one row per sample of a batch, the sample index in the first column (the forward
            pass under :func:`~attentionrnn.engine.precision.autocast` of ``precision``).
        summary: the metrics of the gathered ``table``.
        width: the rows' number of columns (a rank without samples gathers an empty table of
            that width), or ``width(model)``.
    """

    rows: Callable[[nn.Module, Any, str, np.ndarray, str], np.ndarray]
    summary: Callable[[np.ndarray, nn.Module, Any, str], dict[str, Any]]
    width: int | Callable[[nn.Module], int]

    @torch.no_grad()
    def __call__(
        self,
        model: nn.Module,
        data: Any,
        split: str,
        batch_size: int,
        ctx: DistContext | None = None,
        precision: str = "fp32",
    ) -> dict[str, Any]:
        ctx = ctx or DistContext()
        model.eval()
        width = self.width(model) if callable(self.width) else self.width
        table = ctx.gather_batches(
            data.indices(split), batch_size,
            lambda idx: self.rows(model, data, split, idx, precision), width,
        )  # fmt: skip
        return self.summary(table, model, data, split)


def batch_chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` in training batches of ``batch_size``, without a last batch of one sample
    (batch norm needs at least two)."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    return chunks


def fit_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_one_epoch: Callable[[int], dict[str, Any]],
    evaluate: Callable[[], dict[str, Any]],
    *,
    config: Any,
    out: Path,
    fingerprint: dict[str, Any],
    ctx: DistContext,
    lr_at: Callable[[Any, int], float],
    log: logging.Logger,
    **kwargs: Any,
) -> tuple[FitState, dict[str, Any] | None]:
    """:func:`~attentionrnn.engine.trainer.fit` of ``train_one_epoch`` and ``evaluate`` for
    ``config.epochs`` epochs with ``config.patience`` and the schedule ``lr_at(config, epoch)``
    (``kwargs``: fit's others); returns the state and, when the run had already finished, its
    metrics."""
    state = fit(
        model, optimizer, out=out, fingerprint=fingerprint, ctx=ctx, epochs=config.epochs,
        patience=config.patience, lr_at=lambda e: lr_at(config, e),
        train_one_epoch=train_one_epoch, evaluate=evaluate,
        extendable=getattr(config, "EXTENDABLE", False), **kwargs,
    )  # fmt: skip
    done = finished_metrics(out, state)
    if done is not None:
        log.info("run already finished; metrics in %s", out / METRICS)
    return state, done


def finish_run(
    out: Path,
    metrics: dict[str, Any],
    state: FitState,
    *,
    config: Any,
    precision: str,
    fingerprint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    log: logging.Logger,
    name: str,
    summary: tuple[str, ...],
    data_file: str | os.PathLike | None = None,
    recorded: dict[str, Any] | None = None,
    data_sha256: str | None = None,
) -> dict[str, Any]:
    """:func:`~attentionrnn.engine.trainer.write_metrics` (with ``recorded``: what the caller
    adds to the provenance, e.g. which scan products ran; ``data_file`` or ``data_sha256``: the
    data's hash), then log
    ``NAME: SUMMARY -> RUN_DIR/metrics.json`` on the main rank: ``summary`` is a ``%``-format
    and the metrics that fill it, e.g. ``("test accuracy %.4f", "test_accuracy")``.
    """
    metrics = write_metrics(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx, data_file=data_file, recorded=recorded,
        data_sha256=data_sha256,
    )  # fmt: skip
    if ctx.main:
        fmt, *keys = summary
        log.info(f"%s: {fmt} -> %s", name, *(metrics[k] for k in keys), out / METRICS)
    return metrics


def load_finished(
    run_dir: str | os.PathLike, build: Callable[[dict[str, Any]], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of the finished run in ``run_dir``: ``build(metrics)`` makes it from the run's
    ``metrics.json`` (its ``config`` and what the run recorded), then the best-validation
    weights are loaded; returns it in eval mode with the metrics.

    Raises:
        UserError: no finished run there (``metrics.json`` and ``best.pt``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file() or not (run_dir / BEST).is_file():
        raise UserError(f"{run_dir}: no finished run ({METRICS} and {BEST})")
    metrics = json.loads((run_dir / METRICS).read_text())
    model = build(metrics)
    model.load_state_dict(
        torch.load(run_dir / BEST, map_location="cpu", weights_only=False)["model"]
    )
    return model.eval(), metrics
