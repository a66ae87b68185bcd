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
``e`` is a function of ``(seed, e)`` and the RNG state is checkpointed).
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

from attentionrnn.data.attribute import TASKS, E1Data
from attentionrnn.data.generate import CANVAS, DATASETS, MAX_CANVAS, MAX_IMAGES, MIN_CANVAS
from attentionrnn.data.regions import attention_correctness
from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast, resolve_precision
from attentionrnn.engine.state import file_sha256, seed_everything
from attentionrnn.engine.trainer import (
    finished_metrics,
    fit,
    launch,
    train_one_epoch,
    write_metrics,
)
from attentionrnn.experiments.e1.mask_stats import (
    mask_statistic_names,
    mask_statistics,
    summarize_statistics,
)
from attentionrnn.experiments.e1.metrics import accuracy_by_scale
from attentionrnn.experiments.e1.model import MASK_GEOMETRY, PAN
from attentionrnn.experiments.e1.rows import ROWS
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e1")

#: Mean number of (image, query) samples per image, measured on the generator (5–9 digits are
#: drawn, but large digits often leave no room for all of them): 3955 samples from 700 images.
SAMPLES_PER_IMAGE = 5.65
ENV_DATA_DIR = "ATTENTIONRNN_DATA_DIR"
OPTIMIZERS = ("rmsprop", "adam")


@dataclass
class E1Config(RunConfig):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e1 train``
    (the fields of :class:`~attentionrnn.engine.config.RunConfig` too)."""

    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "mnist")
    LATER_FIELDS = {"canvas": CANVAS, "query_fusion": "add", "feedback": True}

    dataset: str = field(default="mref", metadata=option("dataset", choices=DATASETS))
    attention: str = field(default="arnn", metadata=option("attention method", choices=ROWS))
    out: str = field(default="runs/run", metadata=option("run folder", metavar="RUN_DIR"))
    samples: int = field(
        default=50000,
        metadata=option(
            "(image, query) samples to generate, split 60/20/20 (PAN: 50000)",
            minimum=1,
            maximum=int(MAX_IMAGES * SAMPLES_PER_IMAGE),
        ),
    )
    epochs: int = field(default=300, metadata=option("maximum epochs", minimum=1))
    seed: int = seed_field()
    task: str = field(
        default="color",
        metadata=option(
            "color: query a digit, predict its colour; digit: the inverse", choices=tuple(TASKS)
        ),
    )
    data: str | None = field(
        default=None, metadata=option("use this dataset file", metavar="FILE.npz")
    )
    data_seed: int = seed_field("seed of the generated data")
    canvas: int = field(
        default=CANVAS,
        metadata=option(
            f"image side of the generated data in pixels (PAN: {CANVAS}; digit sizes scale "
            "with it)",
            minimum=MIN_CANVAS,
            maximum=MAX_CANVAS,
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=option(
            "cache folder of generated datasets (default $ATTENTIONRNN_DATA_DIR or "
            "~/.cache/attentionrnn/e1)",
            metavar="DIR",
        ),
    )
    mnist: str | None = field(
        default=None, metadata=option("folder of the MNIST IDX files", metavar="DIR")
    )
    batch_size: int = field(
        default=200, metadata=option("global batch size (batch norm needs >= 2)", minimum=2)
    )
    optimizer: str = field(
        default="rmsprop", metadata=option("optimiser (PAN: rmsprop)", choices=OPTIMIZERS)
    )
    lr: float = field(default=0.003, metadata=option("learning rate", positive=True))
    rmsprop_alpha: float = field(
        default=0.9, metadata=option("RMSprop smoothing constant", minimum=0, maximum=1)
    )
    clip_norm: float = field(default=5.0, metadata=option("gradient-norm clip", positive=True))
    lr_decay: float = field(default=1.5, metadata=option("learning-rate divisor", positive=True))
    lr_decay_start: int = field(default=30, metadata=option("first epoch of the decay", minimum=0))
    lr_decay_every: int = field(default=10, metadata=option("epochs between decays", minimum=1))
    lr_warmup_epochs: int = field(
        default=0,
        metadata=option(
            "epochs over which the rate ramps up to --lr: lr*(e+1)/(n+1) in epoch e < n (PAN: 0)",
            minimum=0,
        ),
    )
    patience: int = field(
        default=50, metadata=option("early-stopping patience (epochs)", minimum=1)
    )
    attention_hidden: int | None = field(
        default=None, metadata=option("hidden width of the attention modules", minimum=1)
    )
    layer4_gate: str | None = field(
        default=None,
        metadata=option(
            "gate of the last attention layer (default: PAN's softmax)",
            choices=("sigmoid", "softmax"),
        ),
    )
    query_fusion: str = field(
        default="add",
        metadata=option(
            "how the recurrent attention's encoder joins image and query (ARNN, BRNN): "
            "conv(x) + Uq or conv(x) * Uq",
            choices=("add", "mul"),
        ),
    )
    feedback: bool = field(
        default=True,
        metadata=option("feed the predicted attention values into the scan (ARNN, BRNN)"),
    )


#: E1's config under its former name
TrainConfig = E1Config


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
    root = os.environ.get(ENV_DATA_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attentionrnn" / "e1"


def images_for_samples(samples: int) -> int:
    """Number of images whose digits give about ``samples`` (image, query) samples."""
    return max(1, round(samples / SAMPLES_PER_IMAGE))


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
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: E1Data,
    indices: np.ndarray,
    batch_size: int,
    ctx: DistContext | None = None,
    full: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy on ``indices`` (every rank measures a shard; results are gathered).

    With ``full=True`` also per-sample correctness by scale and attention correctness of every
    attention layer for the queried digit's box and stroke pixels.
    """
    ctx = ctx or DistContext()
    model.eval()
    shard = ctx.shard(indices)
    rows: list[np.ndarray] = []
    names: list[str] = []
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        img, query, target = data.batch(idx)
        with autocast(precision):
            logits, masks = model(img, query, return_masks=True)
        cols = [idx.astype(np.float64), (logits.argmax(1) == target).double().numpy()]
        if full:
            boxes, strokes = data.regions(idx)
            for k, (stride, offset) in enumerate(MASK_GEOMETRY):
                for region in (boxes, strokes):
                    share = attention_correctness(masks[k].float(), region, stride, offset)
                    cols.append(share.double().numpy())
            stats = mask_statistics(masks, MASK_GEOMETRY, data.region_labels(idx))
            names = list(stats)
            cols += [stats[n].astype(np.float64) for n in names]
        rows.append(np.stack(cols, axis=1))
    if full and not names:  # an empty shard still needs the columns' names and count
        names = list(mask_statistic_names(len(MASK_GEOMETRY)))
    first = 2 + 2 * len(MASK_GEOMETRY)
    width = (first + len(names)) if full else 2
    local = np.concatenate(rows) if rows else np.zeros((0, width))
    table = ctx.gather_rows(local)
    table = table[np.argsort(table[:, 0], kind="stable")]
    correct = table[:, 1].astype(bool)
    result: dict[str, Any] = {"accuracy": float(correct.mean()) if len(correct) else math.nan}
    if full:
        sample = table[:, 0].astype(np.int64)
        result["accuracy_by_scale"] = accuracy_by_scale(correct, data.scale[sample])
        result["attention_correctness"] = {
            f"layer{k + 1}": {
                "box": float(np.nanmean(table[:, 2 + 2 * k])),
                "stroke": float(np.nanmean(table[:, 3 + 2 * k])),
            }
            for k in range(len(MASK_GEOMETRY))
        }
        result["masks"] = summarize_statistics(
            {n: [table[:, first + j]] for j, n in enumerate(names)}
        )
    return result


# ------------------------------------------------------------------------------------------
# the recipe


def train(config: E1Config) -> dict[str, Any]:
    """Train, keep the best-validation weights, test them; return (and write) the metrics."""
    return launch(config, _train)


def _train(config: E1Config, ctx: DistContext) -> dict[str, Any]:
    out = Path(config.out)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

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
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # batch norm needs at least two samples
        return train_one_epoch(
            net, optimizer, batches, loss_fn, precision=precision, clip_norm=config.clip_norm,
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
    state = fit(
        model, optimizer, out=out, fingerprint=fingerprint, ctx=ctx, epochs=config.epochs,
        patience=config.patience, lr_at=lambda e: lr_at(config, e), train_one_epoch=one_epoch,
        evaluate=validate, name=name,
    )  # fmt: skip
    done = finished_metrics(out, state)
    if done is not None:
        logger.info("run already finished; metrics in %s", out / "metrics.json")
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention_parameters": sum(p.numel() for p in model.attentions.parameters()),
        "samples": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "data": {
            "path": str(data.path),
            "how": data_how,
            "digit_source": data.digit_source,
            "data_seed": config.data_seed if not config.data else None,
        },
        "layer4_gate": model.layer4_gate,
        "attention_layers": list(model.attention_layers),
    }
    metrics = write_metrics(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx,
        data_file=data.path, recorded={"scan_products": scan_products(precision)},
    )  # fmt: skip
    if ctx.main:
        logger.info(
            "%s: test accuracy %.4f (best val %.4f @ epoch %d) -> %s",
            name, metrics["test_accuracy"], metrics["val_accuracy"], metrics["best_epoch"],
            out / "metrics.json",
        )  # fmt: skip
    return metrics
