"""One E3 training run on the shared engine (:mod:`attentionrnn.engine.trainer`).

1. check the config, join the process group under ``torchrun`` (gloo), set the threads;
2. read the dataset (:func:`~attentionrnn.experiments.e3.rundata.read_dataset`), hold out the
   questions of a fixed set of training images for validation, build the question vocabulary and
   the answer classes on the remaining training questions;
3. build :class:`~attentionrnn.experiments.e3.model.VQANet`, Adam, a step schedule;
4. :func:`~attentionrnn.engine.trainer.fit` (learning curve, best weights, early stop, resume);
5. test the best-validation weights: accuracy overall and by question type (yes/no, number,
   other; relational and non-relational on the generated set; the VQA accuracy on VQA v2) and,
   where the data has object boxes, the attention correctness of each glimpse; write
   ``RUN_DIR/metrics.json``.

Batch order of epoch ``e`` is a function of ``(seed, e)`` and the RNG state is checkpointed, so
the same config gives the same metrics, also across a resume.

The config lies in :mod:`~.config`, the run's data in :mod:`~.rundata`, the measurements in
:mod:`~.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import resolve_precision
from attentionrnn.engine.recipe import batch_chunks, finish_run, fit_run, recipe, run_metrics
from attentionrnn.engine.trainer import Sized, train_one_epoch
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.evaluate import answer_prior, evaluate
from attentionrnn.experiments.e3.model import REFERENCE_ATTENTIONS, VQANet
from attentionrnn.experiments.e3.rundata import E3Data, load_data
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e3")

__all__ = ["E3Config", "E3Data", "answer_prior", "build_model", "evaluate", "load_data", "train"]


def lr_at(config: E3Config, epoch: int) -> float:
    """``lr × lr_decay^(e // lr_step)``, ``e`` counted from the end of the curriculum."""
    return config.lr * config.lr_decay ** (
        max(0, epoch - config.curriculum_epochs) // config.lr_step
    )


def build_model(config: E3Config, data: E3Data) -> VQANet:
    model = VQANet(
        config.attention, len(data.vocab), len(data.answers), in_channels=data.in_channels,
        features=data.dataset.features, channels=config.channels, blocks=config.blocks,
        embed=config.embed, question_hidden=config.question_hidden, rnn=config.rnn,
        mcb_dim=config.mcb_dim, glimpses=config.glimpses,
        attention_hidden=config.attention_hidden, query_fusion=config.query_fusion,
        block_size=config.block_size, coords=config.coords,
    )  # fmt: skip
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


# ------------------------------------------------------------------------------------------
# the recipe


@recipe
def train(config: E3Config, ctx: DistContext, out: Path, started: float) -> dict[str, Any]:
    """Train one attention variant.

    Train the VQA network with one attention variant, keep the best-validation checkpoint, test
    it and write RUN_DIR/metrics.json (accuracy overall and by question type, attention
    correctness on the generated set, learning curve). Rerunning the same command resumes an
    interrupted run. Works under torchrun (gloo).

    Returns:
        the metrics; called as ``train(config)`` (:func:`~attentionrnn.engine.recipe.recipe`).
        The text above is ``attentionrnn e3 train --help``.
    """
    data = load_data(config, ctx)
    dataset = data.dataset
    if config.attention in REFERENCE_ATTENTIONS and dataset.train.boxes is None:
        raise UserError(f"--attention {config.attention} needs object boxes, which "
                        f"{config.dataset} does not have (the generated set has them)")  # fmt: skip
    logger.info(
        "%s from %s: train %d / val %d / test %d questions, %d words, %d answers",
        config.dataset, dataset.origin, len(data.train_idx), len(data.val_idx),
        len(data.test_idx), len(data.vocab), len(data.answers),
    )  # fmt: skip

    model = build_model(config, data)
    net: nn.Module = DistributedDataParallel(model) if ctx.world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    precision = resolve_precision(config.precision)
    batch_size = max(2, config.batch_size // ctx.world)  # the global batch is config.batch_size
    name = f"{config.attention} {config.dataset}"

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor | None, ...]):
        x, ids, lengths, target, boxes = batch
        logits = net(x, ids, lengths, boxes=boxes).float()
        return F.cross_entropy(logits, target), logits.argmax(1), target

    def one_epoch(epoch: int) -> dict[str, float]:
        pool = data.curriculum_idx if epoch < config.curriculum_epochs else data.train_idx
        rng = np.random.default_rng([config.seed, epoch])
        order = ctx.shard(pool[rng.permutation(len(pool))], even=True)
        chunks = batch_chunks(order, batch_size)
        batches = (
            (*data.batch("train", np.sort(c)), data.boxes("train", np.sort(c))) for c in chunks
        )
        return train_one_epoch(
            net, optimizer, Sized(batches, len(chunks)), loss_fn, precision=precision,
            clip_norm=config.clip_norm, desc=f"{name} epoch {epoch + 1}/{config.epochs}",
            progress=config.progress and ctx.main,
        )  # fmt: skip

    def validate() -> dict[str, Any]:
        val = evaluate(model, data, "val", config.eval_batch_size, ctx, precision=precision)
        val.pop("by_type")
        val.pop("attention_correctness", None)
        val.pop("attention_chance", None)
        return val

    fingerprint = {**config.fingerprint(), "data": dataset.identity}
    state, done = fit_run(model, optimizer, one_epoch, validate, config=config, out=out,
                          fingerprint=fingerprint, ctx=ctx, lr_at=lr_at, log=logger,
                          name=name, patience_from=config.curriculum_epochs)  # fmt: skip
    if done is not None:
        return done

    test = evaluate(model, data, "test", config.eval_batch_size, ctx, precision=precision)
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "attention": config.attention,
        "seed": config.seed,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_by_type": test["by_type"],
        "test_relational": test.get("relational"),
        "test_non_relational": test.get("non_relational"),
        "test_attention_correctness": test.get("attention_correctness"),
        "test_attention_chance": test.get("attention_chance"),
        "test_answer_prior": answer_prior(data),
        "val_accuracy": state.best_score if state.best_epoch >= 0 else None,
        **run_metrics(started, data.indices, model, attention=model.estimators),
        "vocabulary": len(data.vocab),
        "answers": data.answers,
        "data": {"source": dataset.source, "origin": dataset.origin, "identity": dataset.identity},
    }
    return finish_run(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx, log=logger,
        recorded={"scan_products": scan_products(precision)}, name=name,
        data_sha256=dataset.content_sha256(),
        summary=("test accuracy %.4f (best val %.4f @ epoch %d)", "test_accuracy",
                 "val_accuracy", "best_epoch"),
    )  # fmt: skip
