"""The training loop every experiment shares, readable top to bottom.

An experiment builds its data, model and optimiser, then calls :func:`fit` with two callables of
its own: ``train_one_epoch(epoch)`` (usually :func:`train_one_epoch` below with the experiment's
loss) and ``evaluate()`` (validation metrics with a ``"accuracy"`` entry, or whatever ``monitor``
names). :func:`fit` owns the rest:

1. resume from ``OUT/checkpoint.pt`` when an earlier run with the same configuration stopped;
2. per epoch: set the learning rate, train, evaluate on the validation set, append the epoch to
   the learning curve (``history``), keep the best weights, and checkpoint (write, then rename,
   so ``kill -9`` at any moment leaves a usable file);
3. stop after ``epochs`` or ``patience`` epochs without improvement, load the best weights back.

The experiment then measures its test set and calls :func:`write_metrics`. Only rank 0 writes,
and it holds the run folder's lock (:func:`~attentionrnn.engine.lock.run_folder`) for the whole
run. A training or validation loss, the validation score or a test loss that turns NaN or
infinite stops the run with a :class:`~attentionrnn.engine.errors.DivergedError`; such a run is
never recorded as finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from attentionrnn.engine.distributed import DistContext, init_distributed
from attentionrnn.engine.errors import DivergedError, UserError
from attentionrnn.engine.lock import run_folder
from attentionrnn.engine.memory import retain_freed_memory
from attentionrnn.engine.precision import autocast, cpu_name
from attentionrnn.engine.provenance import provenance
from attentionrnn.engine.state import (
    atomic_save,
    atomic_write_json,
    checkpoint_of,
    json_safe,
    read_json,
    save_checkpoint,
    set_rng_state,
)

logger = logging.getLogger("attentionrnn.engine")

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.json"

__all__ = [
    "BEST",
    "CHECKPOINT",
    "METRICS",
    "FitState",
    "Sized",
    "check_finite",
    "finished_metrics",
    "fit",
    "launch",
    "process_settings",
    "resumable_checkpoint",
    "train_one_epoch",
    "write_metrics",
]


@dataclass
class FitState:
    """What :func:`fit` carries across epochs and checkpoints."""

    epoch: int = 0  # epochs done
    steps: int = 0  # optimiser steps done
    best_epoch: int = -1  # 0-based epoch of the best validation score
    best_score: float = -1.0
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # seconds spent in epochs (training + validation)
    done: bool = False
    resumed_at: float = 0.0  # ``elapsed`` when this process resumed the run (0: started it)


@contextlib.contextmanager
def process_settings(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and the thread count for a run, restored afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(previous)


def launch(config: Any, body: Callable[[Any, DistContext], Any]) -> Any:
    """Check ``config``, join the process group (under torchrun), apply the run's process settings
    and call ``body(config, ctx)``; restore the settings and leave the group afterwards.

    Rank 0 creates ``config.out`` and holds its lock for the whole run (a second process on the
    same folder is refused), after removing what a killed writer left there.

    The process also starts keeping freed memory for reuse (:func:`retain_freed_memory`; not
    undone): a third of a training step here went to page faults without it.
    """
    config.check()
    retain_freed_memory()
    ctx = init_distributed()
    try:
        owned = run_folder(config.out) if ctx.main else contextlib.nullcontext()
        with owned, process_settings(config.threads):
            return body(config, ctx)
    finally:
        ctx.close()


def check_finite(values: dict[str, Any], what: str, keys: tuple[str, ...] = ("loss",)) -> None:
    """Raise :class:`DivergedError` naming the first top-level float of ``values`` whose name
    contains one of ``keys`` (the losses, by default) that is NaN or infinite. Other entries may
    be NaN where a metric cannot be measured (E4's KID below two samples), and nested ones (per
    class tables) are left alone."""
    for key, value in values.items():
        if not any(k in key for k in keys):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise DivergedError(
                f"{what}: {key} is {value}: the run diverged (lower --lr, or the loss weights); "
                "it is not recorded as finished"
            )


def train_one_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    precision: str,
    clip_norm: float | None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``batches``: forward under ``precision``, backward, clip, step.

    ``loss_fn(net, batch)`` returns ``(loss, predictions, targets)``; the running loss and
    accuracy are shown on the progress bar and returned with the number of steps.
    """
    net.train()
    loss_sum = correct = seen = 0.0
    steps = 0
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)
    for batch in bar:
        with autocast(precision):
            loss, predictions, targets = loss_fn(net, batch)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(
                f"{desc}: the training loss is {value} at step {steps + 1}: the run diverged "
                "(lower --lr); it is not recorded as finished"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        steps += 1
        n = len(targets)
        loss_sum += value * n
        correct += float((predictions == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "steps": steps,
    }


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    out: Path,
    fingerprint: dict[str, Any],
    ctx: DistContext,
    epochs: int,
    patience: int,
    lr_at: Callable[[int], float],
    train_one_epoch: Callable[[int], dict[str, float]],
    evaluate: Callable[[], dict[str, Any]],
    monitor: str = "accuracy",
    name: str = "run",
    patience_from: int = 0,
    extendable: bool = False,
) -> FitState:
    """Train until ``epochs`` or early stop; return the state with the best weights loaded.

    Args:
        model: the module whose ``state_dict`` is checkpointed (not the DDP wrapper).
        optimizer: its optimiser (checkpointed too).
        out: run folder (``checkpoint.pt`` lives there).
        fingerprint: the configuration that determines the result; a checkpoint of another
            configuration in ``out`` is refused instead of silently mixed in.
        ctx: the process's distributed context.
        epochs, patience: at most ``epochs``; stop after ``patience`` epochs without a better
            validation ``monitor`` value.
        lr_at: learning rate of a 0-based epoch.
        train_one_epoch: trains epoch ``e`` (0-based); returns ``train_loss``,
            ``train_accuracy`` and ``steps``.
        evaluate: validation metrics of the current weights; ``monitor`` is the score, the rest
            goes into the learning curve.
        name: shown in the log.
        patience_from: epochs before this one (0-based) do not count towards ``patience`` (a
            warm-up or curriculum whose validation score is not yet comparable).
        extendable: the checkpoint of the same run with fewer epochs, finished or not, resumes
            (:attr:`~attentionrnn.engine.config.RunConfig.EXTENDABLE`); a finished one only
            where the weights it tested were its last epoch's.
    """
    state = FitState()
    ckpt = resumable_checkpoint(out, fingerprint, extendable=extendable)
    if ckpt is not None:
        state = FitState(**ckpt["state"])
        if state.done and ckpt["config"].get("epochs", epochs) < epochs:
            if state.best_epoch + 1 != state.epoch:
                raise UserError(
                    f"{out}: cannot extend this finished run to {epochs} epochs: the weights it "
                    f"kept are epoch {state.best_epoch + 1}'s, not its last ({state.epoch}); "
                    "use a new --out"
                )
            state.done = False
            logger.info("extending %s from %d to %d epochs", out, state.epoch, epochs)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        state.resumed_at = state.elapsed
        logger.info("resuming %s from epoch %d", out, state.epoch)

    def patient() -> bool:
        return state.epoch - max(state.best_epoch, patience_from - 1) <= patience

    while not state.done and state.epoch < epochs and patient():
        started = time.perf_counter()
        lr = lr_at(state.epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_stats = train_one_epoch(state.epoch)
        state.steps += int(train_stats.pop("steps", 0))
        ctx.sync_buffers(model)
        val = evaluate()
        score = float(val[monitor])
        check_finite(  # the losses and the score that selects the weights
            {**train_stats, **{f"val_{k}": v for k, v in val.items()}, f"val_{monitor}": score},
            f"{name} epoch {state.epoch + 1}", keys=("loss", f"val_{monitor}"),
        )  # fmt: skip
        seconds = time.perf_counter() - started
        state.elapsed += seconds
        state.history.append(
            {
                "epoch": state.epoch + 1,
                "step": state.steps,
                "lr": lr,
                **train_stats,
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": seconds,
                "elapsed": state.elapsed,
            }
        )
        if score > state.best_score:
            state.best_score = score
            state.best_epoch = state.epoch
            state.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.epoch += 1
        if ctx.main:
            logger.info(
                "%s epoch %d: loss %.4f train acc %.4f val %s %.4f (best %.4f @ %d) %.1fs",
                name,
                state.epoch,
                train_stats.get("train_loss", float("nan")),
                train_stats.get("train_accuracy", float("nan")),
                monitor,
                score,
                state.best_score,
                state.best_epoch + 1,
                seconds,
            )
            save_checkpoint(out / CHECKPOINT, fingerprint, model, optimizer, state.__dict__)
        ctx.barrier()
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return state


def write_metrics(
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
    data_file: str | os.PathLike | None = None,
    recorded: dict[str, Any] | None = None,
    data_sha256: str | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json`` — the experiment's ``metrics`` followed by how the run went
    (epochs, steps, time — ``wall_time_s``, where given, plus the epochs of the processes that
    ran before a resume —, precision, what the caller ``recorded`` of its layers (e.g. which
    scan products ran), processes, the provenance — git commit, CPU features, the SHA-256 of
    ``data_file``, or the given ``data_sha256`` of data without a file —, the config and the
    learning curve) — and the best weights, and mark the run finished (rank 0). A NaN or
    infinite loss among the metrics raises :class:`DivergedError` instead: the run is not
    recorded as finished."""
    check_finite(metrics, f"{out}: test")
    if "wall_time_s" in metrics:  # this process's; the epochs of the earlier ones count too
        metrics = {**metrics, "wall_time_s": metrics["wall_time_s"] + state.resumed_at}
    metrics = json_safe(
        {
            **metrics,
            "training_time_s": state.elapsed,
            "seconds_per_epoch": state.elapsed / max(state.epoch, 1),
            "epochs": state.epoch,
            "steps": state.steps,
            "best_epoch": state.best_epoch + 1,
            "stopped_early": state.epoch < config.epochs,
            "precision": precision,
            "channels_last": config.channels_last,
            **(recorded or {}),
            "world_size": ctx.world,
            "threads": torch.get_num_threads(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "provenance": provenance(data_file, data_sha256),
            "config": dataclasses.asdict(config),
            "history": state.history,
        }
    )
    if ctx.main:
        atomic_save({"model": state.best_model, "epoch": state.best_epoch + 1}, out / BEST)
        atomic_write_json(metrics, out / METRICS)
        state.done = True
        save_checkpoint(out / CHECKPOINT, fingerprint, model, optimizer, state.__dict__)
    ctx.barrier()
    return metrics


def finished_metrics(out: Path, state: FitState) -> dict[str, Any] | None:
    """The metrics of a run that already finished, or ``None``."""
    if state.done and (out / METRICS).is_file():
        return read_json(out / METRICS, "metrics.json")
    return None


def resumable_checkpoint(
    out: Path, fingerprint: dict[str, Any], *, extendable: bool = False
) -> dict[str, Any] | None:
    """``OUT/checkpoint.pt`` where there is one, else ``None``; a :class:`UserError` where it
    belongs to a run with another configuration (:func:`~.state.checkpoint_of`; ``extendable``:
    fewer epochs are the same run). A recipe that does work of its own before :func:`fit` (E4's
    judge and locate stage) asks first."""
    return checkpoint_of(Path(out) / CHECKPOINT, fingerprint, extendable=extendable)


class Sized:
    """An iterable with a length (so the progress bar knows the number of batches)."""

    def __init__(self, items, length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return self.length
