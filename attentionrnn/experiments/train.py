"""Train one attention method on one attribute-prediction dataset (SPEC §3, E1).

``train(config)`` is the whole recipe, top to bottom:

1. start ``torch.distributed`` when launched by ``torchrun`` (gloo; one process otherwise);
2. seed python / numpy / torch and ask for deterministic algorithms;
3. find the data: ``config.data``, or a cached file with the same recipe, or generate it;
4. build the PAN network with the requested attention, RMSprop, and the PAN schedule
   (lr ÷1.5 every 10 epochs from epoch 30, gradient-norm clip 5);
5. resume from ``RUN_DIR/checkpoint.pt`` if an earlier run with the same config was interrupted;
6. per epoch: train, measure validation accuracy, keep the best weights, early-stop after
   ``patience`` epochs without improvement, and checkpoint (to a temporary file, then renamed);
7. load the best-validation weights, measure the test set (accuracy, accuracy by scale, attention
   correctness per layer for the queried digit's box and strokes), write ``RUN_DIR/metrics.json``.

Only rank 0 writes files. The same config and seed give the same metrics, also across a resume
(the data order of epoch ``e`` is a function of ``(seed, e)`` and the RNG state is checkpointed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from attentionrnn.engine.precision import PRECISIONS, autocast, resolve_precision
from attentionrnn.experiments.metrics import (
    accuracy_by_scale,
    attention_correctness,
    box_regions,
)
from attentionrnn.layers.factory import ATTENTION_NAMES
from attentionrnn.models.pan import MASK_GEOMETRY, PAN, TASKS

logger = logging.getLogger("attentionrnn.train")

DATASETS = ("mref", "mdist", "mbg")
#: Mean number of (image, query) samples per image, measured on the generator (5–9 digits are
#: drawn, but large digits often leave no room for all of them): 3955 samples from 700 images.
SAMPLES_PER_IMAGE = 5.65
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.json"
ENV_DATA_DIR = "ATTENTIONRNN_DATA_DIR"

# Config fields that do not change the result: a run may be resumed with other values.
_RUNTIME_FIELDS = ("out", "progress", "threads", "data_dir", "eval_batch_size", "mnist")


@dataclass
class TrainConfig:
    """Everything one training run depends on (the CLI flags of ``attentionrnn train``)."""

    dataset: str = "mref"
    attention: str = "arnn"
    out: str = "runs/run"
    samples: int = 50000
    epochs: int = 300
    seed: int = 0
    task: str = "color"
    data: str | None = None
    data_seed: int = 0
    data_dir: str | None = None
    mnist: str | None = None
    batch_size: int = 200
    lr: float = 0.003
    rmsprop_alpha: float = 0.9
    clip_norm: float = 5.0
    lr_decay: float = 1.5
    lr_decay_start: int = 30
    lr_decay_every: int = 10
    patience: int = 50
    attention_hidden: int | None = None
    layer4_gate: str | None = None
    precision: str = "auto"
    channels_last: bool = True
    eval_batch_size: int = 500
    threads: int | None = None
    progress: bool = True

    def check(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(
                f"unknown attention {self.attention!r}; valid: {', '.join(ATTENTION_NAMES)}"
            )
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {self.task!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.layer4_gate not in (None, "sigmoid", "softmax"):
            raise ValueError(
                f"layer4_gate must be 'sigmoid' or 'softmax', got {self.layer4_gate!r}"
            )
        for name in ("samples", "epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def fingerprint(self) -> dict[str, Any]:
        """The fields that determine the result (compared when resuming)."""
        d = dataclasses.asdict(self)
        for key in _RUNTIME_FIELDS:
            d.pop(key)
        return d


# ------------------------------------------------------------------------------------------
# small helpers


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr`` until ``lr_decay_start``, then ÷``lr_decay``
    at the start of every ``lr_decay_every`` epochs (epochs 30, 40, 50, … by default)."""
    if epoch < config.lr_decay_start:
        return config.lr
    decays = (epoch - config.lr_decay_start) // config.lr_decay_every + 1
    return config.lr / config.lr_decay**decays


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by ``None`` (standard JSON: null)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), owns)


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


def resolve_data(config: TrainConfig, ctx: _Dist) -> tuple[Path, str]:
    """Return the dataset file and how it was obtained (``given``, ``cached`` or ``generated``).

    A generated file is named after its recipe (dataset, images, data seed, MNIST source) so a
    later run with the same recipe reuses it. Under torchrun rank 0 generates, the others wait.
    """
    if config.data:
        path = Path(config.data)
        if not path.is_file():
            raise FileNotFoundError(f"--data {path}: no such file")
        return path, "given"
    images = images_for_samples(config.samples)
    mnist = config.mnist or os.environ.get("ATTENTIONRNN_MNIST")
    tag = "mnist" if mnist else "default"
    folder = Path(config.data_dir) if config.data_dir else default_data_dir()
    path = folder / f"{config.dataset}_{images}img_seed{config.data_seed}_{tag}.npz"
    how = "cached" if path.is_file() else "generated"
    if how == "generated" and ctx.main:
        from attentionrnn.data.generate import generate_dataset

        logger.info("generating %s with %d images -> %s", config.dataset, images, path)
        generate_dataset(
            config.dataset,
            images,
            config.data_seed,
            out=path,
            mnist=mnist,
            progress=config.progress,
        )
    ctx.barrier()
    return path, how


class E1Data:
    """The arrays of one ``.npz`` dataset, with batched access by sample index.

    Images stay uint8 and are shared by the samples of an image; a batch is gathered with one
    fancy index and converted to float, which is much faster than per-sample ``Dataset`` items.
    For the inverse task (``task="digit"``: query a colour, predict the digit) only samples whose
    colour is unique in their image are kept, since otherwise the answer is ambiguous.
    """

    def __init__(self, path: str | os.PathLike, task: str = "color") -> None:
        with np.load(path, allow_pickle=False) as z:
            self.images = z["images"]
            self.instances = z["instances"]
            self.image_index = z["image_index"]
            self.digit = z["query"]
            self.color = z["color"]
            self.scale = z["scale"].astype(np.float64)
            self.box = z["box"]
            self.instance = z["instance"]
            self.split = z["split"]
            self.digit_source = str(z["digit_source"]) if "digit_source" in z else "unknown"
            self.dataset = str(z["dataset"]) if "dataset" in z else None
        self.task = task
        if task == "color":
            self.query, self.target = self.digit, self.color
        else:
            self.query, self.target = self.color, self.digit
        keep = np.ones(len(self.split), dtype=bool)
        if task == "digit":
            key = self.image_index * 5 + self.color
            _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
            keep = counts[inverse] == 1
        self.keep = keep

    def indices(self, split: str) -> np.ndarray:
        code = {"train": 0, "val": 1, "test": 2}[split]
        return np.flatnonzero((self.split == code) & self.keep)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, 100, 100)`` float in [0, 1], queries ``(B,)`` and targets ``(B,)``.

        The stored images are HWC, so the batch comes out in channels_last memory order.
        """
        img = torch.from_numpy(self.images[self.image_index[idx]]).permute(0, 3, 1, 2)
        img = img.float().div_(255)
        return img, torch.from_numpy(self.query[idx]), torch.from_numpy(self.target[idx])

    def regions(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean image regions ``(B, 100, 100)`` of the queried digit: its box and strokes."""
        size = self.images.shape[1:3]
        boxes = box_regions(torch.from_numpy(self.box[idx]), size)
        strokes = self.instances[self.image_index[idx]] == self.instance[idx][:, None, None]
        return boxes, torch.from_numpy(strokes)


# ------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: E1Data,
    indices: np.ndarray,
    batch_size: int,
    ctx: _Dist,
    full: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy on ``indices`` (every rank measures a shard; results are gathered).

    With ``full=True`` also per-sample correctness by scale and attention correctness of every
    attention layer for the queried digit's box and stroke pixels.
    """
    model.eval()
    shard = indices[ctx.rank :: ctx.world]
    rows: list[np.ndarray] = []
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        img, query, target = data.batch(idx)
        with autocast(precision):
            logits, masks = model(img, query, return_masks=True)
        masks = [m.float() for m in masks]
        cols = [idx.astype(np.float64), (logits.argmax(1) == target).double().numpy()]
        if full:
            boxes, strokes = data.regions(idx)
            for k, (stride, offset) in enumerate(MASK_GEOMETRY):
                for region in (boxes, strokes):
                    cols.append(
                        attention_correctness(masks[k], region, stride, offset).double().numpy()
                    )
        rows.append(np.stack(cols, axis=1))
    width = 2 + (2 * len(MASK_GEOMETRY) if full else 0)
    local = np.concatenate(rows) if rows else np.zeros((0, width))
    if ctx.world > 1:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, local)
        local = np.concatenate(gathered)
    table = local[np.argsort(local[:, 0], kind="stable")]
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
    return result


def _sync_buffers(model: nn.Module, ctx: _Dist) -> None:
    """Give every rank rank 0's batch-norm statistics, so all ranks evaluate the same model."""
    if ctx.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# ------------------------------------------------------------------------------------------
# the recipe


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, keep the best-validation weights, test them; return (and write) the metrics."""
    config.check()
    ctx = _init_distributed()
    # process-wide settings changed for the run, restored afterwards
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    try:
        return _train(config, ctx)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: _Dist) -> dict[str, Any]:
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # -- data
    data_path, data_how = resolve_data(config, ctx)
    data = E1Data(data_path, config.task)
    if data.dataset is not None and data.dataset != config.dataset:
        raise ValueError(
            f"{data_path} holds {data.dataset!r} data but the run is for dataset "
            f"{config.dataset!r}; pass --dataset {data.dataset}"
        )
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test_idx) == 0:
        raise ValueError(
            f"{data_path} has an empty split (train {len(train_idx)}, val {len(val_idx)}, "
            f"test {len(test_idx)}); use more samples"
        )
    logger.info(
        "%s (%s, digits: %s): train %d / val %d / test %d samples",
        data_path,
        data_how,
        data.digit_source,
        len(train_idx),
        len(val_idx),
        len(test_idx),
    )

    # -- model and optimiser
    model = PAN(
        config.attention,
        task=config.task,
        attention_hidden=config.attention_hidden,
        layer4_gate=config.layer4_gate,
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(config.precision)
    net: nn.Module = DistributedDataParallel(model) if ctx.world > 1 else model
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rmsprop_alpha)
    batch_size = max(1, config.batch_size // ctx.world)  # the global batch is config.batch_size
    sampler = DistributedSampler(
        range(len(train_idx)), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=config.seed
    )

    # -- resume
    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": -1,
        "best_val_accuracy": -1.0,
        "best_model": None,
        "history": [],
        "elapsed": 0.0,
        "steps": 0,
        "done": False,
    }
    ckpt_path = out / CHECKPOINT
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["config"] != config.fingerprint():
            raise ValueError(
                f"{ckpt_path} belongs to a run with another configuration; use a new --out "
                f"or delete the folder.\n saved: {ckpt['config']}\n now:   {config.fingerprint()}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        logger.info("resuming %s from epoch %d", out, state["epoch"])
        if state["done"] and (out / METRICS).is_file():
            logger.info("run already finished; metrics in %s", out / METRICS)
            return json.loads((out / METRICS).read_text())

    # -- epochs
    epoch = state["epoch"]
    while epoch < config.epochs and epoch - state["best_epoch"] <= config.patience:
        started = time.perf_counter()
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        order = train_idx[np.fromiter(iter(sampler), dtype=np.int64)]
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # batch norm needs at least two samples
        net.train()
        loss_sum = correct = seen = 0.0
        bar = tqdm(
            batches,
            desc=f"{config.attention} {config.dataset} epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not (config.progress and ctx.main),
            leave=False,
        )
        for idx in bar:
            img, query, target = data.batch(idx)
            with autocast(precision):
                logits = net(img, query)
                loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            state["steps"] = state.get("steps", 0) + 1
            loss_sum += loss.item() * len(idx)
            correct += float((logits.argmax(1) == target).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        _sync_buffers(model, ctx)
        # the learning curve: accuracy and attention correctness on the validation set
        curve = evaluate(
            model, data, val_idx, config.eval_batch_size, ctx, full=True, precision=precision
        )
        val = curve["accuracy"]
        seconds = time.perf_counter() - started
        state["elapsed"] += seconds
        state["history"].append(
            {
                "epoch": epoch + 1,
                "step": state["steps"],
                "lr": lr,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_accuracy": val,
                "val_attention_correctness": curve["attention_correctness"],
                "seconds": seconds,
            }
        )
        if val > state["best_val_accuracy"]:
            state["best_val_accuracy"] = val
            state["best_epoch"] = epoch
            state["best_model"] = {k: v.clone() for k, v in model.state_dict().items()}
        epoch += 1
        state["epoch"] = epoch
        if ctx.main:
            logger.info(
                "epoch %d: loss %.4f train acc %.4f val acc %.4f (best %.4f @ %d) %.1fs",
                epoch,
                loss_sum / max(seen, 1),
                correct / max(seen, 1),
                val,
                state["best_val_accuracy"],
                state["best_epoch"] + 1,
                seconds,
            )
            _checkpoint(ckpt_path, config, model, optimizer, state)
        ctx.barrier()
    stopped_early = epoch < config.epochs

    # -- test at the best-validation weights
    model.load_state_dict(state["best_model"])
    test = evaluate(
        model, data, test_idx, config.eval_batch_size, ctx, full=True, precision=precision
    )
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "attention": config.attention,
        "task": config.task,
        "seed": config.seed,
        "test_accuracy": test["accuracy"],
        "val_accuracy": state["best_val_accuracy"],
        "accuracy_by_scale": test["accuracy_by_scale"],
        "attention_correctness": test["attention_correctness"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention_parameters": sum(p.numel() for p in model.attentions.parameters()),
        "training_time_s": state["elapsed"],
        "seconds_per_epoch": state["elapsed"] / max(epoch, 1),
        "epochs": epoch,
        "best_epoch": state["best_epoch"] + 1,
        "stopped_early": stopped_early,
        "samples": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "data": {
            "path": str(data_path),
            "how": data_how,
            "digit_source": data.digit_source,
            "data_seed": config.data_seed if not config.data else None,
        },
        "precision": precision,
        "channels_last": config.channels_last,
        "layer4_gate": model.layer4_gate,
        "steps": state["steps"],
        "world_size": ctx.world,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": dataclasses.asdict(config),
        "history": state["history"],
    }
    metrics = json_safe(metrics)
    if ctx.main:
        atomic_save({"model": state["best_model"], "epoch": state["best_epoch"] + 1}, out / BEST)
        atomic_write_json(metrics, out / METRICS)
        state["done"] = True
        _checkpoint(ckpt_path, config, model, optimizer, state)
        logger.info(
            "%s on %s: test accuracy %.4f (best val %.4f @ epoch %d) -> %s",
            config.attention,
            config.dataset,
            metrics["test_accuracy"],
            metrics["val_accuracy"],
            metrics["best_epoch"],
            out / METRICS,
        )
    ctx.barrier()
    return metrics


def _checkpoint(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    atomic_save(
        {
            "config": config.fingerprint(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "state": state,
        },
        path,
    )
