"""Train one attention method on one attribute-prediction dataset (experiment E1).

``train(config)`` is the whole recipe, top to bottom:

1. join ``torch.distributed`` when launched by ``torchrun`` (gloo; one process otherwise);
2. seed python / numpy / torch and ask for deterministic algorithms;
3. find the data: ``config.data``, or a cached file with the same recipe, or generate it;
4. build the PAN network with the requested attention (channels_last), RMSprop, and PAN's
   schedule (lr ÷1.5 every 10 epochs from epoch 30, gradient-norm clip 5);
5. :func:`~attentionrnn.engine.trainer.fit`: per epoch train under the requested precision,
   measure the validation set (accuracy and attention correctness per layer: the learning
   curve), keep the best weights, early-stop, checkpoint; resume an interrupted run;
6. test the best-validation weights (accuracy, accuracy by scale, attention correctness per layer
   for the queried digit's box and strokes) and write ``RUN_DIR/metrics.json``.

The same config and seed give the same metrics, also across a resume (the data order of epoch

The config lies in :mod:`~.config`, the measurements in :mod:`~.evaluate`.
``e`` is a function of ``(seed, e)`` and the RNG state is checkpointed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.cache import cache_dir
from attentionrnn.data.generate import CANVAS
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import resolve_precision
from attentionrnn.engine.recipe import batch_chunks, finish_run, fit_run, recipe, run_metrics
from attentionrnn.engine.state import file_sha256
from attentionrnn.engine.trainer import train_one_epoch
from attentionrnn.experiments.e1.config import SAMPLES_PER_IMAGE, E1Config
from attentionrnn.experiments.e1.evaluate import evaluate
from attentionrnn.experiments.e1.model import PAN
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e1")


def lr_at(config: E1Config, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr`` until ``lr_decay_start``, then ÷``lr_decay``
    at the start of every ``lr_decay_every`` epochs (epochs 30, 40, 50, … by default); in the
    first ``lr_warmup_epochs`` epochs a linear ramp up to ``lr`` (RMSprop's running square
    starts at zero, so its first steps are ~3x the rate)."""
    if epoch < config.lr_warmup_epochs:
        return config.lr * (epoch + 1) / (config.lr_warmup_epochs + 1)
    if epoch < config.lr_decay_start:
        return config.lr
    decays = (epoch - config.lr_decay_start) // config.lr_decay_every + 1
    return config.lr / config.lr_decay**decays


# ------------------------------------------------------------------------------------------
# data


def default_data_dir() -> Path:
    """Folder of generated datasets: ``$ATTENTIONRNN_DATA_DIR`` or ``~/.cache/attentionrnn/e1``."""
    return cache_dir("e1")


def images_for_samples(samples: int) -> int:
    """Number of images whose digits give about ``samples`` (image, query) samples."""
    return max(1, round(samples / SAMPLES_PER_IMAGE))


def recorded_data_file(recorded: str, out: str | Path) -> Path | None:
    """A finished run's data file: the path it recorded, else a file of that name in
    ``OUT/data/`` (a run records the path it was given, which may be relative to where it ran);
    None where neither exists."""
    for path in (Path(recorded), Path(out) / "data" / Path(recorded).name):
        if path.is_file():
            return path
    return None


def resolve_data(config: E1Config, ctx: DistContext | None = None) -> tuple[Path, str]:
    """Return the dataset file and how it was obtained (``given``, ``cached`` or ``generated``).

    A generated file is named after its recipe (dataset, images, data seed, MNIST source) so a
    later run with the same recipe reuses it. Under torchrun rank 0 generates, the others wait.
    """
    ctx = ctx or DistContext()
    if config.data:
        path = Path(config.data)
        if not path.is_file():
            raise UserError(f"--data {path}: no such file")
        return path, "given"
    images = images_for_samples(config.samples)
    mnist = config.mnist or os.environ.get("ATTENTIONRNN_MNIST")
    tag = "mnist" if mnist else "default"
    folder = Path(config.data_dir) if config.data_dir else default_data_dir()
    size = "" if config.canvas == CANVAS else f"_{config.canvas}px"
    path = folder / f"{config.dataset}_{images}img{size}_seed{config.data_seed}_{tag}.npz"
    how = "cached" if path.is_file() else "generated"
    if how == "generated" and ctx.main:
        from attentionrnn.data.generate import generate_dataset
        from attentionrnn.engine.lock import make_folder

        make_folder(folder, "--data-dir")

        logger.info("generating %s with %d images -> %s", config.dataset, images, path)
        generate_dataset(
            config.dataset, images, config.data_seed, out=path, mnist=mnist,
            progress=config.progress, canvas=config.canvas,
        )  # fmt: skip
    ctx.barrier()
    return path, how


def load_data(config: E1Config, ctx: DistContext | None = None) -> tuple[E1Data, str]:
    """The run's dataset, checked against ``config.dataset``, and how it was obtained."""
    path, how = resolve_data(config, ctx)
    data = E1Data(path, config.task)
    if data.dataset is not None and data.dataset != config.dataset:
        raise UserError(
            f"{path} holds {data.dataset!r} data but the run is for dataset "
            f"{config.dataset!r}; pass --dataset {data.dataset}"
        )
    side = data.images.shape[1]
    if config.data and config.canvas not in (CANVAS, side):
        raise UserError(
            f"{path} holds {side}-pixel images but the run asks for --canvas {config.canvas}"
        )
    for split in ("train", "val", "test"):
        if len(data.indices(split)) == 0:
            raise UserError(f"{path} has no {split} samples; use more samples")
    return data, how


def attention_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The attention modules' options of a run's config (a run recorded before an option existed
    has its default)."""
    return {
        "query_fusion": config.get("query_fusion", "add"),
        "feedback": config.get("feedback", True),
    }


def build_model(config: E1Config) -> PAN:
    """The PAN network with the run's attention method, in the run's memory format."""
    model = PAN(
        config.attention,
        task=config.task,
        attention_hidden=config.attention_hidden,
        layer4_gate=config.layer4_gate,
        attention_kwargs=attention_kwargs(vars(config)),
    )
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def build_optimizer(config: E1Config, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rmsprop_alpha)


# ------------------------------------------------------------------------------------------
# the recipe


@recipe
def train(config: E1Config, ctx: DistContext, out: Path, started: float) -> dict[str, Any]:
    """Train one attention method on one dataset.

    Train the PAN network with one attention method, keep the best-validation checkpoint and
    write RUN_DIR/metrics.json (with the learning curve). Rerunning the same command resumes an
    interrupted run. Works under torchrun (gloo).

    Returns:
        the metrics; called as ``train(config)`` (:func:`~attentionrnn.engine.recipe.recipe`).
        The text above is ``attentionrnn e1 train --help``.
    """
    # -- data
    data, data_how = load_data(config, ctx)
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    logger.info(
        "%s (%s, digits: %s): train %d / val %d / test %d samples",
        data.path, data_how, data.digit_source, len(train_idx), len(val_idx), len(test_idx),
    )  # fmt: skip

    # -- model, optimiser, precision
    model = build_model(config)
    net: nn.Module = DistributedDataParallel(model) if ctx.world > 1 else model
    optimizer = build_optimizer(config, model)
    precision = resolve_precision(config.precision)
    batch_size = max(1, config.batch_size // ctx.world)  # the global batch is config.batch_size
    name = f"{config.attention} {config.dataset}"

    def loss_fn(net: nn.Module, idx: np.ndarray):
        img, query, target = data.batch(idx)
        logits = net(img, query)
        return F.cross_entropy(logits, target), logits.argmax(1), target

    def one_epoch(epoch: int) -> dict[str, float]:
        # the permutation DistributedSampler(shuffle=True, seed=config.seed) drew at this epoch
        generator = torch.Generator().manual_seed(config.seed + epoch)
        order = ctx.shard(train_idx[torch.randperm(len(train_idx), generator=generator).numpy()],
                          even=True)  # fmt: skip
        return train_one_epoch(
            net, optimizer, batch_chunks(order, batch_size), loss_fn, precision=precision,
            clip_norm=config.clip_norm,
            desc=f"{name} epoch {epoch + 1}/{config.epochs}", progress=config.progress and ctx.main,
        )  # fmt: skip

    def validate() -> dict[str, Any]:
        val = evaluate(
            model, data, val_idx, config.eval_batch_size, ctx, full=True, precision=precision
        )
        val.pop("accuracy_by_scale")
        return val

    # the data file's content: the same path holding other data is another run
    fingerprint = {**config.fingerprint(), "data_sha256": file_sha256(data.path)}
    state, done = fit_run(model, optimizer, one_epoch, validate, config=config, out=out,
                          fingerprint=fingerprint, ctx=ctx, lr_at=lr_at, log=logger,
                          name=name, patience_from=config.patience_from)  # fmt: skip
    if done is not None:
        return done

    # -- test at the best-validation weights
    test = evaluate(
        model, data, test_idx, config.eval_batch_size, ctx, full=True, precision=precision
    )
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "attention": config.attention,
        "task": config.task,
        "seed": config.seed,
        "test_accuracy": test["accuracy"],
        "val_accuracy": state.best_score,
        "accuracy_by_scale": test["accuracy_by_scale"],
        "attention_correctness": test["attention_correctness"],
        "masks": test["masks"],
        # no wall time: E1's tables time a run by its training time
        **run_metrics(None, data.indices, model, attention=model.attentions),
        "data": {
            "path": str(data.path),
            "how": data_how,
            "digit_source": data.digit_source,
            "data_seed": config.data_seed if not config.data else None,
        },
        "layer4_gate": model.layer4_gate,
        "attention_layers": list(model.attention_layers),
    }
    return finish_run(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx, log=logger,
        recorded={"scan_products": scan_products(precision)}, data_file=data.path,
        name=name, summary=("test accuracy %.4f (best val %.4f @ epoch %d)", "test_accuracy",
                            "val_accuracy", "best_epoch"),
    )  # fmt: skip
