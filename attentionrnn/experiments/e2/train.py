"""Train one attention estimator in LTPA's VGG-att3 on CIFAR (experiment E2).

``train(config)`` is the whole recipe, top to bottom:

1. join ``torch.distributed`` when launched by ``torchrun`` (gloo; one process otherwise);
2. seed python / numpy / torch and ask for deterministic algorithms;
3. load the images (the JPEG tar through its cache, or the pickle folder), hold out a fixed,
   stratified validation split of the training images, compute the normalisation;
4. build the network (channels_last), SGD with momentum and weight decay, and LTPA's schedule
   (lr × ``lr_decay`` every ``lr_step`` epochs);
5. :func:`~attentionrnn.engine.trainer.fit`: per epoch train on augmented batches under the
   requested precision, measure the validation split (the learning curve), keep the best weights,
   early-stop, checkpoint; resume an interrupted run;
6. test the best-validation weights (top-1 error, per-class accuracy) and write
   ``RUN_DIR/metrics.json``.

Batch order and augmentation of epoch ``e`` are functions of ``(seed, e)``, and the RNG state is
checkpointed, so the same config gives the same metrics, also across a resume.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from attentionrnn.engine.config import RunConfig, option
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast, resolve_precision
from attentionrnn.engine.recipe import (
    Evaluation,
    batch_chunks,
    finish_run,
    fit_run,
    recipe,
    run_metrics,
)
from attentionrnn.engine.trainer import Sized, train_one_epoch
from attentionrnn.experiments.e2.data import (
    CIFAR10_TAR_MD5,
    DATASETS,
    ENV_CIFAR10_TAR,
    ENV_CIFAR_DIR,
    ImageSet,
    augment,
    normalize,
    read_cifar10_tar,
    read_cifar_pickles,
    split_indices,
)
from attentionrnn.experiments.e2.model import E2_ROWS, AttnVGG
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e2")

__all__ = ["E2Config", "E2Data", "build_model", "evaluate", "lr_at", "read_images", "train"]


@dataclass
class E2Config(RunConfig, out="runs/e2", patience=300):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e2 train``."""

    # where the data comes from enters the fingerprint as its identity (source, md5), not its path
    RUNTIME_FIELDS = (
        *RunConfig.RUNTIME_FIELDS,
        "data_dir",
        "cifar10_tar",
        "cifar_dir",
        "cifar10_md5",
    )

    dataset: str = field(default="cifar10", metadata=option("dataset", choices=DATASETS))
    attention: str = field(
        default="arnn",
        metadata=option(
            "attention estimator: ltpa (LTPA's compatibility), arnn (AttentionRNN), brnn (Block "
            "AttentionRNN), none (plain VGG)",
            choices=E2_ROWS,
        ),
    )
    epochs: int = field(default=300, metadata=option("maximum epochs (LTPA: 300)", minimum=1))
    width: float = field(
        default=1.0,
        metadata=option("channel multiplier of the VGG (1.0: VGG-16's 64 ... 512)", positive=True),
    )
    depth: int | None = field(
        default=None, metadata=option("convs per block (default: VGG-16's 2,2,3,3,3,2)", minimum=1)
    )
    batch_size: int = field(
        default=128,
        metadata=option("global batch size (LTPA: 128; batch norm needs >= 2)", minimum=2),
    )
    lr: float = field(default=0.1, metadata=option("SGD learning rate (LTPA: 0.1)", positive=True))
    momentum: float = field(default=0.9, metadata=option("SGD momentum", minimum=0))
    weight_decay: float = field(default=5e-4, metadata=option("SGD weight decay", minimum=0))
    lr_step: int = field(
        default=25, metadata=option("epochs between learning-rate decays", minimum=1)
    )
    lr_decay: float = field(
        default=0.5, metadata=option("learning-rate factor at each decay", positive=True)
    )
    val_samples: int = field(
        default=5000,
        metadata=option("training images held out for validation (stratified, fixed)", minimum=0),
    )
    train_samples: int | None = field(
        default=None, metadata=option("use only this many training images (quick runs)", minimum=1)
    )
    test_samples: int | None = field(
        default=None, metadata=option("use only this many test images (quick runs)", minimum=1)
    )
    attention_hidden: int | None = field(
        default=None,
        metadata=option("hidden width of the ARNN / BRNN estimators (default 16)", minimum=1),
    )
    cifar10_tar: str | None = field(
        default=None,
        metadata=option(
            "the CIFAR-10 JPEG tar (default $ATTENTIONRNN_CIFAR10_TAR)", metavar="PATH"
        ),
    )
    cifar10_md5: str = field(
        default=CIFAR10_TAR_MD5, metadata=option("expected md5 of the tar ('' skips the check)")
    )
    cifar_dir: str | None = field(
        default=None,
        metadata=option(
            "folder of the python pickles (cifar-10-batches-py / cifar-100-python); used instead "
            "of the tar (default $ATTENTIONRNN_CIFAR_DIR)",
            metavar="DIR",
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=option(
            "cache of decoded images (default $ATTENTIONRNN_DATA_DIR or ~/.cache/attentionrnn/e2)",
            metavar="DIR",
        ),
    )


def lr_at(config: E2Config, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr × lr_decay^(epoch // lr_step)`` (LTPA: halved
    every 25 epochs)."""
    return config.lr * config.lr_decay ** (epoch // config.lr_step)


# ------------------------------------------------------------------------------------------
# data


class E2Data:
    """The run's images with its splits and normalisation; serves augmented batches by index."""

    def __init__(self, images: ImageSet, config: E2Config) -> None:
        self.images = images
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            images.train_y, images.test_y, config.val_samples, config.train_samples,
            config.test_samples,
        )  # fmt: skip
        if len(self.val_idx) == 0:
            self.val_idx = self.train_idx  # --val-samples 0: select on the training images
        mean, std = images.mean_std()
        self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        self.channels_last = config.channels_last

    def indices(self, split: str) -> np.ndarray:
        """The image indices of ``split`` (``train``, ``val`` or ``test``)."""
        return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}[split]

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    def batch(
        self, split: str, idx: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, 32, 32)`` (augmented when ``generator`` is given) and labels."""
        images = self.images.test_x if split == "test" else self.images.train_x
        labels = self.images.test_y if split == "test" else self.images.train_y
        x = self._tensor(images[idx])
        if generator is not None:
            x = augment(x, generator)
        x = normalize(x, self.mean, self.std)
        if not self.channels_last:
            x = x.contiguous()
        return x, self._tensor(labels[idx])


def read_images(config: E2Config, progress: bool = False) -> ImageSet:
    """The images of ``config.dataset`` from the source the config names: the pickle folder
    (``cifar_dir``, or ``$ATTENTIONRNN_CIFAR_DIR``) if given, else, for CIFAR-10, the JPEG tar
    (``cifar10_tar``, or ``$ATTENTIONRNN_CIFAR10_TAR``; checked against ``cifar10_md5`` and
    cached in ``data_dir``)."""
    config.check()
    folder = config.cifar_dir or os.environ.get(ENV_CIFAR_DIR)
    if folder:
        return read_cifar_pickles(folder, config.dataset)
    if config.dataset == "cifar100":
        raise UserError(
            "CIFAR-100 needs --cifar-dir DIR (or $ATTENTIONRNN_CIFAR_DIR): a folder in the "
            "cifar-100-python layout (train, test)"
        )
    tar = config.cifar10_tar or os.environ.get(ENV_CIFAR10_TAR)
    if not tar:
        raise UserError(
            "CIFAR-10 needs its data: --cifar10-tar PATH (or $ATTENTIONRNN_CIFAR10_TAR) for the "
            "JPEG tar, or --cifar-dir DIR for the cifar-10-batches-py pickles"
        )
    return read_cifar10_tar(
        tar, md5=config.cifar10_md5, cache_dir=config.data_dir, progress=progress
    )


def load_data(config: E2Config, ctx: DistContext | None = None) -> E2Data:
    """Load (rank 0 first, so that only one process decodes the tar into the cache)."""
    ctx = ctx or DistContext()
    images = ctx.main_first(read_images, config, progress=config.progress and ctx.main)
    return E2Data(images, config)


def build_model(config: E2Config, num_classes: int) -> AttnVGG:
    model = AttnVGG(
        config.attention, num_classes=num_classes, width=config.width, depth=config.depth,
        attention_hidden=config.attention_hidden,
    )  # fmt: skip
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


# ------------------------------------------------------------------------------------------
# evaluation


def _rows(
    model: nn.Module, data: E2Data, split: str, idx: np.ndarray, precision: str
) -> np.ndarray:
    """Per image of ``idx``: its index, the predicted class, the label and the loss."""
    x, y = data.batch(split, idx)
    with autocast(precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    pred = logits.argmax(1)
    return np.stack([idx, pred.numpy(), y.numpy(), loss.double().numpy()], axis=1)


def _summary(table: np.ndarray, model: nn.Module, data: E2Data, split: str) -> dict[str, Any]:
    """Accuracy, top-1 error, mean loss and per-class accuracy of the rows of :func:`_rows`."""
    pred, target = table[:, 1].astype(np.int64), table[:, 2].astype(np.int64)
    correct = pred == target
    accuracy = float(correct.mean()) if len(correct) else math.nan
    per_class = {
        name: float(correct[target == c].mean()) if (target == c).any() else None
        for c, name in enumerate(data.images.classes)
    }
    return {
        "accuracy": accuracy,
        "error": 1 - accuracy,
        "loss": float(table[:, 3].mean()) if len(table) else math.nan,
        "per_class_accuracy": per_class,
    }


#: Accuracy, top-1 error, loss and per-class accuracy on a split, sharded over the ranks:
#: ``evaluate(model, data, split, batch_size, ctx=None, precision="fp32")``
#: (:class:`~attentionrnn.engine.recipe.Evaluation`).
evaluate = Evaluation(_rows, _summary, width=4)


# ------------------------------------------------------------------------------------------
# the recipe


@recipe
def train(config: E2Config, ctx: DistContext, out: Path, started: float) -> dict[str, Any]:
    """Train one attention estimator on CIFAR.

    Train VGG-att3 with one attention estimator, keep the best-validation checkpoint, test it
    and write RUN_DIR/metrics.json (top-1 error, per-class accuracy, learning curve). Rerunning
    the same command resumes an interrupted run. Works under torchrun (gloo).

    Returns:
        the metrics; called as ``train(config)`` (:func:`~attentionrnn.engine.recipe.recipe`).
        The text above is ``attentionrnn e2 train --help``.
    """
    data = load_data(config, ctx)
    images = data.images
    logger.info(
        "%s from %s (%s): train %d / val %d / test %d images",
        config.dataset, images.origin, images.source, len(data.train_idx), len(data.val_idx),
        len(data.test_idx),
    )  # fmt: skip

    # -- model, optimiser, precision
    model = build_model(config, images.num_classes)
    net: nn.Module = DistributedDataParallel(model) if ctx.world > 1 else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    precision = resolve_precision(config.precision)
    batch_size = max(1, config.batch_size // ctx.world)  # the global batch is config.batch_size
    name = f"{config.attention} {config.dataset}"

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        logits = net(x)
        return F.cross_entropy(logits, y), logits.argmax(1), y

    def one_epoch(epoch: int) -> dict[str, float]:
        rng = np.random.default_rng([config.seed, epoch])
        order = ctx.shard(data.train_idx[rng.permutation(len(data.train_idx))], even=True)
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([config.seed, epoch, ctx.rank, 1]).integers(2**62))
        )
        chunks = batch_chunks(order, batch_size)
        batches = (data.batch("train", np.sort(c), generator) for c in chunks)
        return train_one_epoch(
            net, optimizer, Sized(batches, len(chunks)), loss_fn, precision=precision,
            clip_norm=None, desc=f"{name} epoch {epoch + 1}/{config.epochs}",
            progress=config.progress and ctx.main,
        )  # fmt: skip

    def validate() -> dict[str, Any]:
        val = evaluate(model, data, "val", config.eval_batch_size, ctx, precision=precision)
        val.pop("per_class_accuracy")
        return val

    data_id = images.source + (f":{images.md5}" if images.md5 else "")
    fingerprint = {**config.fingerprint(), "data": data_id}
    state, done = fit_run(model, optimizer, one_epoch, validate, config=config, out=out,
                          fingerprint=fingerprint, ctx=ctx, lr_at=lr_at, log=logger,
                          name=name)  # fmt: skip
    if done is not None:
        return done

    # -- test at the best-validation weights
    test = evaluate(model, data, "test", config.eval_batch_size, ctx, precision=precision)
    best = state.history[state.best_epoch] if state.best_epoch >= 0 else {}
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "attention": config.attention,
        "seed": config.seed,
        "width": config.width,
        "depth": config.depth,
        "test_error": test["error"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "per_class_accuracy": test["per_class_accuracy"],
        "val_error": 1 - state.best_score if state.best_epoch >= 0 else None,
        "val_loss": best.get("val_loss"),
        **run_metrics(started, data.indices, model, attention=model.estimators),
        "data": {"source": images.source, "origin": images.origin, "md5": images.md5},
        "classes": list(images.classes),
    }
    return finish_run(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx, log=logger,
        recorded={"scan_products": scan_products(precision)},
        data_sha256=images.content_sha256(),
        name=name, summary=("test top-1 error %.4f (best val error %.4f @ epoch %d)",
                            "test_error", "val_error", "best_epoch"),
    )  # fmt: skip
