"""One E4 training run on the shared engine (:mod:`attentionrnn.engine.trainer`).

1. check the config, set the threads, read the task (:func:`~.data.load_task`);
2. train the **judge** — an :class:`~.model.AttributeClassifier` on real images only, with a
   fixed seed of its own, so every row and seed of a dataset is judged by the same network — or
   load it from ``RUN_DIR/judge.pt``;
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
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attentionrnn.data.generate import MAX_CANVAS, MAX_IMAGES, MIN_CANVAS
from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast, resolve_precision
from attentionrnn.engine.state import atomic_save, seed_everything
from attentionrnn.engine.trainer import (
    BEST,
    METRICS,
    finished_metrics,
    fit,
    launch,
    write_metrics,
)
from attentionrnn.experiments.e4.data import DATASETS, load_task
from attentionrnn.experiments.e4.metrics import (
    edit_success,
    kid,
    mask_correctness,
    preservation_l1,
)
from attentionrnn.experiments.e4.model import (
    E4_ROWS,
    AttributeClassifier,
    Discriminator,
    Editor,
    LossWeights,
    attribute_loss,
    discriminator_loss,
    generator_loss,
    split_logits,
)
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

JUDGE = "judge.pt"
#: the judge's seed: the same for every row and training seed
JUDGE_SEED = 1234


@dataclass
class E4Config(RunConfig):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e4 train``."""

    # where the data lies does not change the result; the data's identity enters instead
    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "mnist", "celeba_dir", "data",
                      "samples")  # fmt: skip

    dataset: str = field(default="mref", metadata=option("editing task", choices=DATASETS))
    mask: str = field(
        default="arnn",
        metadata=option("mask head of the transformer modules: ctx (conv head, the baseline), "
                      "arnn (AttentionRNN), brnn (Block AttentionRNN)", choices=E4_ROWS),
    )  # fmt: skip
    out: str = field(default="runs/e4", metadata=option("run folder", metavar="RUN_DIR"))
    epochs: int = field(default=10, metadata=option("maximum epochs", minimum=1))
    seed: int = seed_field()
    batch_size: int = field(default=32, metadata=option("batch size", minimum=2))
    lr: float = field(default=2e-4, metadata=option("Adam learning rate (G and D)", positive=True))
    lr_step: int = field(default=6, metadata=option("epochs between lr decays", minimum=1))
    lr_decay: float = field(default=0.5, metadata=option("lr factor at each decay", positive=True))
    select: str = field(
        default="last",
        metadata=option("weights tested: the last epoch's (as GANs are usually used; validation "
                      "edit success is only as good as the judge) or the best validation edit "
                      "success", choices=("last", "edit_success")),
    )  # fmt: skip
    patience: int = field(default=100, metadata=option("early-stopping patience (epochs)",
                                                     minimum=1))  # fmt: skip
    images: int = field(default=3000, metadata=option("digit tasks: images generated", minimum=1,
                                                    maximum=MAX_IMAGES))  # fmt: skip
    canvas: int = field(
        default=64,
        metadata=option("image side (digits: the generator's canvas; CelebA: resized to it)",
                      minimum=16, maximum=MAX_CANVAS),
    )  # fmt: skip
    data_seed: int = seed_field("digit tasks: seed of the generator")
    train_samples: int | None = field(
        default=None, metadata=option("use only this many training edits (quick runs)", minimum=2)
    )
    val_samples: int = field(default=500, metadata=option("validation edits", minimum=1))
    test_samples: int | None = field(
        default=2000, metadata=option("test edits (default 2000; all with 0)", minimum=0)
    )
    channels: int = field(default=16, metadata=option("editor width", minimum=1))
    d_channels: int = field(default=16, metadata=option("discriminator width", minimum=1))
    mask_hidden: int = field(
        default=16, metadata=option("hidden width of the mask head", minimum=1)
    )
    block_size: int = field(default=2, metadata=option("BRNN block size", minimum=1))
    w_cls: float = field(default=1.0, metadata=option("weight of the classification loss",
                                                    minimum=0))  # fmt: skip
    w_rec: float = field(default=10.0, metadata=option("weight of the reconstruction loss",
                                                     minimum=0))  # fmt: skip
    w_cycle: float = field(default=10.0, metadata=option("weight of the cycle loss", minimum=0))
    w_mask: float = field(default=0.1, metadata=option("weight of the mask sparsity loss",
                                                     minimum=0))  # fmt: skip
    judge_epochs: int = field(default=8, metadata=option("epochs of the judge classifier",
                                                       minimum=1))  # fmt: skip
    judge_channels: int = field(default=32, metadata=option("judge width", minimum=1))
    samples: int = field(default=6, metadata=option("rows of RUN_DIR/samples.png (0: none)",
                                                  minimum=0, maximum=64))  # fmt: skip
    max_images: int | None = field(
        default=None, metadata=option("CelebA: read only the first images", minimum=1)
    )
    data: str | None = field(
        default=None, metadata=option("digit tasks: an existing generated .npz (default: "
                                    "generate into the cache)", metavar="FILE"),
    )  # fmt: skip
    mnist: str | None = field(
        default=None, metadata=option("MNIST folder (default: see 'attentionrnn e1 generate')",
                                    metavar="DIR"),
    )  # fmt: skip
    celeba_dir: str | None = field(
        default=None, metadata=option("CelebA folder (default $ATTENTIONRNN_CELEBA_DIR)",
                                    metavar="DIR"),
    )  # fmt: skip
    data_dir: str | None = field(
        default=None, metadata=option("cache of generated data (default $ATTENTIONRNN_DATA_DIR or "
                                    "~/.cache/attentionrnn)", metavar="DIR"),
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.canvas % 4:
            raise UserError(f"canvas must be divisible by 4 (the editor downsamples twice), "
                            f"got {self.canvas}")  # fmt: skip
        if self.dataset != "celeba" and self.canvas < MIN_CANVAS:
            raise UserError(f"canvas must be >= {MIN_CANVAS} for the digit tasks, "
                            f"got {self.canvas}")  # fmt: skip

    def weights(self) -> LossWeights:
        return LossWeights(self.w_cls, self.w_rec, self.w_cycle, self.w_mask)


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
                    config.mask_hidden, config.block_size)  # fmt: skip
    net = E4Net(editor, Discriminator(task.classes, task.query_channels, config.d_channels))
    return net.to(memory_format=torch.channels_last) if config.channels_last else net


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)  # fmt: skip


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
# the judge


def train_judge(
    task, idx: dict[str, np.ndarray], config: E4Config, out: Path | None, precision: str = "fp32"
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """The attribute classifier of real images, trained with its own seed (or loaded from
    ``out/judge.pt`` when it was trained with the same settings); returns it and its accuracy."""
    key = {
        "data": task.identity, "epochs": config.judge_epochs, "channels": config.judge_channels,
        "batch_size": config.batch_size, "train": len(idx["train"]), "precision": precision,
    }  # fmt: skip
    judge = AttributeClassifier(task.classes, task.query_channels, config.judge_channels)
    path = out / JUDGE if out is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved["key"] == key:
            judge.load_state_dict(saved["model"])
            return judge.eval(), saved["stats"]
    devnull = torch.random.fork_rng()  # leave the run's own random streams untouched
    with devnull:
        torch.manual_seed(JUDGE_SEED)
        judge = AttributeClassifier(task.classes, task.query_channels, config.judge_channels)
        optimizer = torch.optim.Adam(judge.parameters(), lr=1e-3)
        best, best_state, history = -1.0, None, []
        for epoch in range(config.judge_epochs):
            judge.train()
            order = np.random.default_rng([JUDGE_SEED, epoch]).permutation(idx["train"])
            for start in range(0, len(order) - 1, config.batch_size):
                chunk = np.sort(order[start : start + config.batch_size])
                if len(chunk) < 2:
                    continue
                b = task.batch(chunk, task.draw_targets(chunk, np.random.default_rng(0)))
                with autocast(precision):
                    logits = judge(_layout(b.x, config.channels_last), b.query)
                loss = attribute_loss(logits, b.labels, task.classes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            acc = judge_accuracy(judge, task, idx["val"], config.eval_batch_size)
            history.append(acc)
            if acc > best:
                best = acc
                best_state = {k: v.detach().clone() for k, v in judge.state_dict().items()}
            logger.info("judge epoch %d: val accuracy %.4f", epoch + 1, acc)
        judge.load_state_dict(best_state)
    test = judge_accuracy(judge, task, idx["test"], config.eval_batch_size)
    stats = {"val_accuracy": best, "history": history, "test_accuracy": test}
    if path is not None:
        atomic_save({"key": key, "model": judge.state_dict(), "stats": stats}, path)
    return judge.eval(), stats


@torch.no_grad()
def judge_accuracy(judge: nn.Module, task, idx: np.ndarray, batch_size: int) -> float:
    """Accuracy of the judge on the real images of ``idx`` (every attribute)."""
    judge.eval()
    correct = total = 0
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        b = task.batch(chunk, task.draw_targets(chunk, np.random.default_rng(0)))
        parts = split_logits(judge(b.x, b.query), task.classes)
        for m, p in enumerate(parts):
            correct += int((p.argmax(1) == b.labels[:, m]).sum())
            total += len(chunk)
    return correct / max(total, 1)


# ------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    editor: Editor,
    judge: AttributeClassifier,
    task,
    idx: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    precision: str = "fp32",
    truth: bool = False,
) -> dict[str, Any]:
    """The edits of ``idx`` to ``targets``, measured (see the module docstring).

    ``truth=True`` measures the exact edits instead of the editor's (what a perfect editor
    would score: the ceiling of edit success, given the judge).
    """
    editor.eval()
    judge.eval()
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "success", "preservation", "truth_l1", "correctness", "correctness_box", "mask_mean",
        "features", "reference", "uniform", "uniform_box")}  # fmt: skip
    for start in range(0, len(idx), batch_size):
        sl = slice(start, start + batch_size)
        b = task.batch(idx[sl], targets[sl])
        if truth:
            if b.truth is None:
                raise UserError(f"{task.name} has no exact edits")
            edited, masks = b.truth, b.region.float()[:, None].expand(-1, len(task.classes), -1,
                                                                      -1)  # fmt: skip
        else:
            with autocast(precision):
                edited, masks = editor(b.x, b.targets, b.query)
            edited, masks = edited.float(), masks.float()
        rows["success"].append(edit_success(judge(edited, b.query), b.targets, b.changed,
                                            task.classes))  # fmt: skip
        rows["features"].append(judge.features(edited, b.query))
        mask = masks[torch.arange(len(b)), b.changed][:, None]
        rows["mask_mean"].append(mask.flatten(1).mean(1))
        if b.truth is not None:
            rows["reference"].append(judge.features(b.truth, b.query))
            rows["preservation"].append(preservation_l1(edited, b.x, b.region))
            rows["truth_l1"].append((edited - b.truth).abs().flatten(1).mean(1))
            rows["correctness"].append(mask_correctness(mask, b.region))
            rows["correctness_box"].append(mask_correctness(mask, b.box))
            # what a uniform mask scores: the region's share of the image (chance level)
            rows["uniform"].append(b.region.float().flatten(1).mean(1))
            rows["uniform_box"].append(b.box.float().flatten(1).mean(1))
        else:
            rows["reference"].append(judge.features(b.x, b.query))

    def mean(key: str) -> float | None:
        if not rows[key]:
            return None
        values = torch.cat(rows[key]).double()
        values = values[~values.isnan()]
        return float(values.mean()) if len(values) else math.nan

    return {
        "edit_success": mean("success"),
        "preservation_l1": mean("preservation"),
        "truth_l1": mean("truth_l1"),
        "mask_correctness": mean("correctness"),
        "mask_correctness_box": mean("correctness_box"),
        "mask_mean": mean("mask_mean"),
        "uniform_mask_correctness": mean("uniform"),
        "uniform_mask_correctness_box": mean("uniform_box"),
        "kid": kid(torch.cat(rows["features"]), torch.cat(rows["reference"])),
    }


# ------------------------------------------------------------------------------------------
# the recipe


def train(config: E4Config, digits=None) -> dict[str, Any]:
    """Train, keep the best-validation weights, test them; return (and write) the metrics.

    ``digits`` overrides the MNIST pool of the digit tasks (tests use a synthetic one)."""
    return launch(config, lambda c, ctx: _train(c, ctx, digits))


def _train(config: E4Config, ctx: DistContext, digits) -> dict[str, Any]:
    if ctx.world > 1:
        raise UserError("E4 trains in one process (run it without torchrun)")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    started = time.perf_counter()
    precision = resolve_precision(config.precision)

    task = load_data(config, digits)
    idx = split_indices(task, config)
    targets = {s: fixed_targets(task, idx[s], s) for s in ("val", "test")}
    logger.info("%s: train %d / val %d / test %d edits, %s px", task.name, len(idx["train"]),
                len(idx["val"]), len(idx["test"]), task.image_size)  # fmt: skip
    judge, judge_stats = train_judge(task, idx, config, out, precision)

    net = build_model(config, task)
    g, d = net.editor, net.discriminator
    betas = (0.5, 0.999)
    optimizer = _Optimizers(
        torch.optim.Adam(g.parameters(), lr=config.lr, betas=betas),
        torch.optim.Adam(d.parameters(), lr=config.lr, betas=betas),
    )
    weights = config.weights()
    name = f"{config.mask} {task.name}"

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
            x = _layout(b.x, config.channels_last)
            stats = _step(g, d, optimizer, x, b, weights, precision)
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

    fingerprint = {**config.fingerprint(), "data": task.identity}
    state = fit(
        net, optimizer, out=out, fingerprint=fingerprint, ctx=ctx, epochs=config.epochs,  # type: ignore[arg-type]
        patience=config.patience, lr_at=lambda e: lr_at(config, e), train_one_epoch=one_epoch,
        evaluate=validate, monitor="score", name=name,
    )  # fmt: skip
    done = finished_metrics(out, state)
    if done is not None:
        logger.info("run already finished; metrics in %s", out / "metrics.json")
        return done

    test = evaluate(g, judge, task, idx["test"], targets["test"], config.eval_batch_size,
                    precision)  # fmt: skip
    ceiling = (evaluate(g, judge, task, idx["test"], targets["test"], config.eval_batch_size,
                        truth=True) if task.has_truth else None)  # fmt: skip
    metrics: dict[str, Any] = {
        "dataset": task.name,
        "mask": config.mask,
        "seed": config.seed,
        **{f"test_{k}": v for k, v in test.items()},
        "exact_edit": ceiling,
        "judge": judge_stats,
        "val_edit_success": (
            state.history[state.best_epoch]["val_edit_success"] if state.best_epoch >= 0 else None
        ),  # fmt: skip
        "parameters": sum(p.numel() for p in g.parameters()),
        "mask_parameters": sum(p.numel() for t in g.transformers for p in t.mask.parameters()),
        "wall_time_s": time.perf_counter() - started,
        "samples": {k: len(v) for k, v in idx.items()},
        "data": task.identity,
    }
    metrics = write_metrics(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=net, optimizer=optimizer, ctx=ctx,
        recorded={"scan_products": scan_products(precision)},  # type: ignore[arg-type]
    )  # fmt: skip
    if config.samples:
        from attentionrnn.experiments.e4.figures import sample_grid

        picks = slice(0, config.samples)
        sample_grid({config.mask: g}, task, idx["test"][picks], targets["test"][picks],
                    out / "samples.png", title=name)  # fmt: skip
    logger.info("%s: test edit success %.4f, preservation L1 %s, mask correctness %s -> %s",
                name, metrics["test_edit_success"], metrics["test_preservation_l1"],
                metrics["test_mask_correctness"], out / "metrics.json")  # fmt: skip
    return metrics


def _step(g: Editor, d: Discriminator, optimizer: _Optimizers, x: torch.Tensor, b, weights,
          precision: str) -> dict[str, float]:  # fmt: skip
    """One discriminator update, then one generator update (hinge loss, no gradient penalty)."""
    with autocast(precision):
        with torch.no_grad():
            fake, _ = g(x, b.targets, b.query)
        d_loss, d_parts = discriminator_loss(d, x, fake, b.labels, b.query, weights)
    optimizer.d.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.d.step()

    with autocast(precision):
        g_loss, g_parts, _, _ = generator_loss(g, d, x, b.labels, b.targets, b.query, weights)
    optimizer.g.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer.g.step()
    d.zero_grad(set_to_none=True)  # the generator's backward also reached D: drop it

    stats = {"g_loss": float(g_loss.detach()), "d_loss": float(d_loss.detach())}
    stats.update({k: float(v.detach()) for k, v in {**d_parts, **g_parts}.items()})
    return stats


def load_editor(run_dir: str | Path, task) -> Editor:
    """The editor of a finished run (best-validation weights, eval mode) for ``task``."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file() or not (run_dir / BEST).is_file():
        raise UserError(f"{run_dir}: no finished run ({METRICS} and {BEST})")
    config = E4Config(**json.loads((run_dir / METRICS).read_text())["config"])
    net = build_model(config, task)
    net.load_state_dict(torch.load(run_dir / BEST, map_location="cpu", weights_only=False)["model"])
    return net.editor.eval()
