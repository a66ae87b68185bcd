"""One E4 training run on the shared engine (:mod:`attentionrnn.engine.trainer`).

1. check the config, set the threads, read the task (:func:`~.data.load_task`);
2. train the **judge** — an :class:`~.model.AttributeClassifier` on real images only, with a
   fixed seed of its own, so every row and seed of a dataset is judged by the same network — or
   load it from ``RUN_DIR/judge.pt``; with ``--w-teacher`` also the frozen classifier of the
   generator's extra classification loss, alike with ``--teacher-seed`` (``RUN_DIR/teacher.pt``);
3. build the editor and the discriminator, two Adam optimisers (β₁ = 0.5, as GANs use);
4. :func:`~attentionrnn.engine.trainer.fit`: per step one discriminator and one generator update
   (hinge loss, no gradient penalty: see :mod:`~.model`); validation measures the edits (the
   learning curve); the weights tested are the last epoch's (``select="last"``, the default) or
   those of the highest validation **edit success**;
5. test the best weights: edit success, preservation L1 outside the edited digit, L1 to the
   exact edit, mask correctness (strokes and box), KID against the exact edits, mask mass; write
   ``RUN_DIR/metrics.json`` and ``RUN_DIR/samples.png`` (input, edited, mask).

Batch order and targets of epoch ``e`` are a function of ``(seed, e)``; validation and test
targets are fixed, so every row edits the same (image, digit, colour) triples.

The config lies in :mod:`~.config`, the judge and the measurements in :mod:`~.evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.experiment import Row
from attentionrnn.engine.precision import autocast, resolve_precision
from attentionrnn.engine.recipe import fit_run, load_finished, recipe, run_metrics
from attentionrnn.engine.state import atomic_write_json
from attentionrnn.engine.trainer import CHECKPOINT, resumable_checkpoint, write_metrics
from attentionrnn.experiments.e4.config import E4Config
from attentionrnn.experiments.e4.data import load_task
from attentionrnn.experiments.e4.evaluate import (
    evaluate,
    input_layout,
    train_judge,
    train_teacher,
)
from attentionrnn.experiments.e4.locate import train_locate
from attentionrnn.experiments.e4.losses import discriminator_loss, generator_loss
from attentionrnn.experiments.e4.model import ROW_TABLE, Discriminator, Editor
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e4")

__all__ = [
    "E4Config",
    "E4Net",
    "build_model",
    "evaluate",
    "fixed_targets",
    "load_data",
    "load_editor",
    "split_indices",
    "train",
    "train_judge",
]

#: the batch stream of the locate stage: ``default_rng([seed, LOCATE_STREAM])``, apart from the
#: epochs' ``default_rng([seed, epoch])``
LOCATE_STREAM = 10_000
#: the validation measures recorded after the locate stage (``metrics.json``'s ``locate``)
LOCATE_RECORDED = ("mask_query_ratio", "uniform_query_ratio", "mask_correctness", "mask_others",
                   "mask_background", "edit_success")  # fmt: skip


def lr_at(config: E4Config, epoch: int) -> float:
    return config.lr * config.lr_decay ** (epoch // config.lr_step)


class E4Net(nn.Module):
    """The editor and the discriminator in one module, so that one ``state_dict`` holds both
    (what the engine checkpoints)."""

    def __init__(self, editor: Editor, discriminator: Discriminator) -> None:
        super().__init__()
        self.editor, self.discriminator = editor, discriminator


class _Optimizers:
    """The generator's and the discriminator's Adam, seen by the engine as one optimiser: it
    sets the learning rate of every ``param_group`` and checkpoints the ``state_dict``."""

    def __init__(self, g: torch.optim.Optimizer, d: torch.optim.Optimizer) -> None:
        self.g, self.d = g, d

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.g.param_groups, *self.d.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"g": self.g.state_dict(), "d": self.d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])


def load_data(config: E4Config, digits=None):
    """The task of ``config`` (``digits`` overrides the MNIST pool, for tests)."""
    return load_task(
        config.dataset, images=config.images, seed=config.data_seed, canvas=config.canvas,
        mnist=config.mnist, data_dir=config.data_dir, data=config.data,
        celeba_dir=config.celeba_dir, max_images=config.max_images, digits=digits,
    )  # fmt: skip


def build_model(config: E4Config, task) -> E4Net:
    editor = Editor(task.classes, task.query_channels, config.mask, config.channels,
                    config.mask_hidden, config.block_size, config.query_fusion,
                    config.edit_query, identify=config.w_identify > 0)  # fmt: skip
    net = E4Net(editor, Discriminator(task.classes, task.query_channels, config.d_channels))
    return net.to(memory_format=torch.channels_last) if config.channels_last else net


def split_indices(task, config: E4Config) -> dict[str, np.ndarray]:
    """Training, validation and test edits (fixed subsets, the same for every row)."""
    rng = np.random.default_rng(2024)
    out = {}
    for name, limit in (("train", config.train_samples), ("val", config.val_samples),
                        ("test", config.test_samples or None)):  # fmt: skip
        idx = task.indices(name)
        out[name] = np.sort(rng.permutation(idx)[:limit]) if limit else idx
        if len(out[name]) == 0:
            raise UserError(f"{task.name}: no {name} samples to use")
    return out


def fixed_targets(task, idx: np.ndarray, split: str) -> np.ndarray:
    return task.draw_targets(idx, np.random.default_rng({"val": 11, "test": 12}.get(split, 13)))


# ------------------------------------------------------------------------------------------
# the recipe


@recipe
def train(
    config: E4Config, ctx: DistContext, out: Path, started: float, digits=None
) -> dict[str, Any]:
    """Train one mask head.

    Train the judge (an attribute classifier of real images), then the editor and discriminator
    (hinge loss, no gradient penalty); keep the best-validation weights, test them and write
    RUN_DIR/metrics.json (edit success, preservation L1, mask correctness, KID, learning curve)
    and RUN_DIR/samples.png. Rerunning the same command resumes an interrupted run.

    Args:
        digits: overrides the MNIST pool of the digit tasks (tests use a synthetic one); called
            as ``train(config, digits=None)`` (:func:`~attentionrnn.engine.recipe.recipe`).
    """
    if ctx.world > 1:
        raise UserError("E4 trains in one process (run it without torchrun)")
    precision = resolve_precision(config.precision)

    task = load_data(config, digits)
    idx = split_indices(task, config)
    targets = {s: fixed_targets(task, idx[s], s) for s in ("val", "test")}
    logger.info("%s: train %d / val %d / test %d edits, %s px", task.name, len(idx["train"]),
                len(idx["val"]), len(idx["test"]), task.image_size)  # fmt: skip
    fingerprint = {**config.fingerprint(), "data": task.identity}
    # another run's folder: refused before the stages
    resumable_checkpoint(out, fingerprint, extendable=config.EXTENDABLE)
    judge, judge_stats = train_judge(task, idx, config, out, precision)
    teacher, teacher_stats = (train_teacher(task, idx, config, out, precision)
                              if config.w_teacher > 0 else (None, None))  # fmt: skip

    net = build_model(config, task)
    g, d = net.editor, net.discriminator
    betas = (0.5, 0.999)
    optimizer = _Optimizers(
        torch.optim.Adam(g.parameters(), lr=config.lr, betas=betas),
        torch.optim.Adam(d.parameters(), lr=config.lr, betas=betas),
    )
    weights = config.weights()
    name = f"{config.mask} {task.name}"
    located = locate_stage(g, judge, task, idx, targets["val"], config, out, precision)

    current = {"epoch": 0}

    def one_epoch(epoch: int) -> dict[str, float]:
        current["epoch"] = epoch
        net.train()
        rng = np.random.default_rng([config.seed, epoch])
        order = ctx.shard(rng.permutation(idx["train"]), even=True)
        sums: dict[str, float] = {}
        steps = 0
        for start in range(0, len(order), config.batch_size):
            chunk = np.sort(order[start : start + config.batch_size])
            if len(chunk) < 2:
                continue  # instance norm of a one-sample batch is fine, but keep batches alike
            b = task.batch(chunk, task.draw_targets(chunk, rng))
            x = input_layout(b.x, config.channels_last)
            stats = _step(g, d, optimizer, x, b, weights, precision, teacher)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        return {
            "train_loss": means.pop("g_loss", math.nan),  # the generator's loss
            "train_accuracy": means.pop("d_accuracy", math.nan),  # D's attributes of real images
            **means,
            "steps": steps,
        }

    def validate() -> dict[str, Any]:
        val = evaluate(g, judge, task, idx["val"], targets["val"], config.eval_batch_size,
                       precision)  # fmt: skip
        # the engine keeps the weights of the highest score: the epoch number keeps the last
        last = float(current["epoch"] + 1)
        return {**val, "score": last if config.select == "last" else val["edit_success"]}

    state, done = fit_run(net, optimizer, one_epoch, validate, config=config, out=out,  # type: ignore[arg-type]
                          fingerprint=fingerprint, ctx=ctx, lr_at=lr_at, log=logger,
                          monitor="score", name=name)  # fmt: skip
    if done is not None:
        return done

    test = evaluate(g, judge, task, idx["test"], targets["test"], config.eval_batch_size,
                    precision)  # fmt: skip
    ceiling = (evaluate(g, judge, task, idx["test"], targets["test"], config.eval_batch_size,
                        truth=True) if task.has_truth else None)  # fmt: skip
    masks = nn.ModuleList(t.mask for t in g.transformers)
    metrics: dict[str, Any] = {
        "dataset": task.name,
        "mask": config.mask,
        "seed": config.seed,
        **{f"test_{k}": v for k, v in test.items()},
        "exact_edit": ceiling,
        "judge": judge_stats,
        **({"locate": located} if located is not None else {}),
        **({"teacher": teacher_stats} if teacher_stats is not None else {}),
        "val_edit_success": (
            state.history[state.best_epoch]["val_edit_success"] if state.best_epoch >= 0 else None
        ),  # fmt: skip
        **run_metrics(started, idx, g, mask=masks),
        "data": task.identity,
    }
    metrics = write_metrics(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=net, optimizer=optimizer, ctx=ctx, data_file=task.data_file,
        recorded={"scan_products": scan_products(precision)},  # type: ignore[arg-type]
    )  # fmt: skip
    if config.samples:
        from attentionrnn.experiments.e4.figures import sample_grid

        picks = slice(0, config.samples)
        label = ROW_TABLE.get(config.mask, Row(config.mask)).label
        sample_grid({label: g}, task, idx["test"][picks], targets["test"][picks],
                    out / "samples.png", title=name)  # fmt: skip
    logger.info("%s: test edit success %.4f, preservation L1 %s, mask correctness %s -> %s",
                name, metrics["test_edit_success"], metrics["test_preservation_l1"],
                metrics["test_mask_correctness"], out / "metrics.json")  # fmt: skip
    return metrics


def locate_stage(g: Editor, judge, task, idx, val_targets, config: E4Config, out: Path,
                 precision: str) -> dict[str, Any] | None:  # fmt: skip
    """``--locate-steps``: the curriculum's first stage (:mod:`~.locate`), run once before the
    GAN's first epoch, and its validation shares (``RUN_DIR/locate.json``; a resumed run, whose
    checkpoint holds the weights, reads them back)."""
    if not config.locate_steps:
        return None
    record = out / "locate.json"
    if (out / CHECKPOINT).exists() and record.exists():
        return json.loads(record.read_text())
    start = time.perf_counter()
    loss = train_locate(
        g, task, idx["train"], steps=config.locate_steps, lr=config.locate_lr,
        batch_size=config.batch_size, seed=[config.seed, LOCATE_STREAM], precision=precision,
        layout=lambda x: input_layout(x, config.channels_last),
    )  # fmt: skip
    val = evaluate(g.eval(), judge, task, idx["val"], val_targets, config.eval_batch_size,
                   precision)  # fmt: skip
    g.train()
    stats = {"steps": config.locate_steps, "lr": config.locate_lr, "loss": loss,
             "seconds": time.perf_counter() - start,
             **{f"val_{k}": val[k] for k in LOCATE_RECORDED}}  # fmt: skip
    logger.info("%s %s: locate stage, %d steps, validation query ratio %.3f (blind %.3f)",
                config.mask, task.name, config.locate_steps, val["mask_query_ratio"],
                val["uniform_query_ratio"])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stats, record)
    return stats


def _step(g: Editor, d: Discriminator, optimizer: _Optimizers, x: torch.Tensor, b, weights,
          precision: str, teacher: nn.Module | None = None) -> dict[str, float]:  # fmt: skip
    """One discriminator update, then one generator update (hinge loss, no gradient penalty).
    The edit is made once, with its graph: D learns from it detached, and the generator's loss
    (through the updated D) reuses it — the generator has not changed in between."""
    with autocast(precision):
        edit = g(x, b.targets, b.query)
        d_loss, d_parts = discriminator_loss(d, x, edit[0].detach(), b.labels, b.query, weights)
    optimizer.d.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.d.step()

    with autocast(precision):
        kept = None if b.kept_query is None else (b.kept_query, b.kept_labels, b.kept_valid)
        g_loss, g_parts, _, _ = generator_loss(g, d, x, b.labels, b.targets, b.query, weights,
                                               teacher, kept, edit)  # fmt: skip
    optimizer.g.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer.g.step()
    d.zero_grad(set_to_none=True)  # the generator's backward also reached D: drop it

    stats = {"g_loss": float(g_loss.detach()), "d_loss": float(d_loss.detach())}
    stats.update({k: float(v.detach()) for k, v in {**d_parts, **g_parts}.items()})
    return stats


def load_editor(run_dir: str | Path, task) -> Editor:
    """The editor of a finished run (best-validation weights, eval mode) for ``task``."""
    net = load_finished(run_dir, lambda m: build_model(E4Config(**m["config"]), task))[0]
    return net.editor.eval()
