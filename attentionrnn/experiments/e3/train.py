"""One E3 training run on the shared engine (:mod:`attentionrnn.engine.trainer`).

1. check the config, join the process group under ``torchrun`` (gloo), set the threads;
2. read the dataset (:func:`~attentionrnn.experiments.e3.data.load_dataset`), hold out the
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
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast, resolve_precision
from attentionrnn.engine.state import seed_everything
from attentionrnn.engine.trainer import (
    Sized,
    finished_metrics,
    fit,
    launch,
    train_one_epoch,
    write_metrics,
)
from attentionrnn.experiments.e3.data import (
    DATASETS,
    QUESTION_TYPES,
    Vocabulary,
    VQASet,
    VQASplit,
    load_dataset,
    tokenize,
    vqa_accuracy,
)
from attentionrnn.experiments.e3.model import E3_ROWS, REFERENCE_ATTENTIONS, VQANet
from attentionrnn.layers.fused import scan_products

logger = logging.getLogger("attentionrnn.e3")

__all__ = ["E3Config", "E3Data", "answer_prior", "build_model", "evaluate", "load_data", "train"]


@dataclass
class E3Config(RunConfig):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e3 train``."""

    # where the data lies does not change the result; the dataset's identity enters instead
    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "vqa_dir", "easy_vqa_dir")
    LATER_FIELDS = {"curriculum_epochs": 0}

    dataset: str = field(default="easy_vqa", metadata=option("dataset", choices=DATASETS))
    attention: str = field(
        default="arnn",
        metadata=option(
            "attention: mcb (MCB's conv attention), arnn (AttentionRNN on the question), brnn "
            "(Block AttentionRNN), none (mean pool); oracle (reference: the mask on the "
            "question's object boxes, generated set only)",
            choices=E3_ROWS,
        ),
    )
    out: str = field(default="runs/e3", metadata=option("run folder", metavar="RUN_DIR"))
    epochs: int = field(default=20, metadata=option("maximum epochs", minimum=1))
    seed: int = seed_field()
    batch_size: int = field(default=64, metadata=option("global batch size", minimum=2))
    lr: float = field(default=1e-3, metadata=option("Adam learning rate", positive=True))
    lr_step: int = field(default=8, metadata=option("epochs between lr decays", minimum=1))
    lr_decay: float = field(default=0.5, metadata=option("lr factor at each decay", positive=True))
    clip_norm: float = field(default=10.0, metadata=option("gradient-norm clip", positive=True))
    patience: int = field(
        default=6, metadata=option("early-stopping patience (epochs without a better val score)",
                                 minimum=1),
    )  # fmt: skip
    curriculum_epochs: int = field(
        default=0,
        metadata=option(
            "generated set: train the first N epochs on the non-relational questions only, then "
            "on all (lr decays and early stopping count from the end of the curriculum)",
            minimum=0,
        ),
    )
    val_images: int = field(
        default=400,
        metadata=option("training images whose questions are held out for validation", minimum=0),
    )
    train_questions: int | None = field(
        default=None,
        metadata=option("use only this many training questions (quick runs)", minimum=1),
    )
    test_questions: int | None = field(
        default=None, metadata=option("use only this many test questions (quick runs)", minimum=1)
    )
    channels: int = field(default=64, metadata=option("width of the image grid", minimum=1))
    blocks: int = field(
        default=3,
        metadata=option(
            "CNN blocks (64 px -> 8x8 grid; each halves the image)", minimum=1, maximum=8
        ),  # fmt: skip
    )
    embed: int = field(default=32, metadata=option("word embedding width", minimum=1))
    question_hidden: int = field(default=64, metadata=option("question RNN width", minimum=1))
    rnn: str = field(default="gru", metadata=option("question encoder", choices=("gru", "lstm")))
    mcb_dim: int = field(default=1024, metadata=option("MCB sketch size (MCB: 16000)", minimum=2))
    glimpses: int = field(default=2, metadata=option("attention glimpses (MCB: 2)", minimum=1))
    attention_hidden: int = field(
        default=16, metadata=option("hidden width of the ARNN / BRNN scan", minimum=1)
    )
    query_fusion: str = field(
        default="mul",
        metadata=option("image-question fusion in the ARNN / BRNN encoder", choices=("mul", "add")),
    )
    block_size: int = field(default=2, metadata=option("BRNN block size", minimum=1))
    coords: bool = field(
        default=True, metadata=option("append x / y coordinate maps to the image grid")
    )
    max_answers: int = field(
        default=3000, metadata=option("answer classes: the most frequent training answers",
                                    minimum=2),
    )  # fmt: skip
    image_size: int = field(
        default=64, metadata=option("image side (generated set; VQA v2 images are resized)",
                                  minimum=16),
    )  # fmt: skip
    generated_train_images: int = field(
        default=4000, metadata=option("generated set: training images", minimum=2)
    )
    generated_test_images: int = field(
        default=1000, metadata=option("generated set: test images", minimum=1)
    )
    generated_seed: int = seed_field("generated set: seed of the generator")
    max_questions: int | None = field(
        default=None,
        metadata=option(
            "VQA v2: read only the first questions of each split (quick runs)", minimum=1
        ),
    )
    vqa_dir: str | None = field(
        default=None,
        metadata=option("VQA v2 folder (default $ATTENTIONRNN_VQA_DIR)", metavar="DIR"),
    )
    easy_vqa_dir: str | None = field(
        default=None,
        metadata=option("easy-VQA data folder (default: the installed easy-vqa package)",
                      metavar="DIR"),
    )  # fmt: skip
    data_dir: str | None = field(
        default=None,
        metadata=option("cache of decoded images (default $ATTENTIONRNN_DATA_DIR or "
                      "~/.cache/attentionrnn/e3)", metavar="DIR"),
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.image_size >> self.blocks < 1:
            raise UserError(
                f"blocks {self.blocks} halve a {self.image_size}-pixel image to nothing; at most "
                f"{int(math.log2(self.image_size))} blocks for --image-size {self.image_size}"
            )


def lr_at(config: E3Config, epoch: int) -> float:
    """``lr × lr_decay^(e // lr_step)``, ``e`` counted from the end of the curriculum."""
    return config.lr * config.lr_decay ** (
        max(0, epoch - config.curriculum_epochs) // config.lr_step
    )


# ------------------------------------------------------------------------------------------
# data


class E3Data:
    """A :class:`VQASet` with the run's splits, vocabulary and answer classes; serves batches.

    Validation holds out every question of ``val_images`` training images (chosen by a fixed
    seed, the same for every training seed), so no image is seen in both.
    """

    def __init__(self, dataset: VQASet, config: E3Config) -> None:
        self.dataset = dataset
        train = dataset.train
        rng = np.random.default_rng(12345)
        n_images = len(train.images)
        if config.val_images >= n_images:
            raise UserError(
                f"val_images {config.val_images} leaves no training image ({n_images} in all)"
            )
        held = np.zeros(n_images, dtype=bool)
        held[rng.permutation(n_images)[: config.val_images]] = True
        order = rng.permutation(len(train))
        self.train_idx = np.sort(order[~held[train.image_index[order]]][: config.train_questions])
        self.val_idx = np.sort(order[held[train.image_index[order]]])
        if len(self.val_idx) == 0:
            self.val_idx = self.train_idx  # --val-images 0: select on the training questions
        test_order = np.random.default_rng(54321).permutation(len(dataset.test))
        self.test_idx = np.sort(test_order[: config.test_questions])
        if len(self.train_idx) == 0 or len(self.test_idx) == 0:
            raise UserError(f"{dataset.name}: no training or no test questions to use")
        self.vocab = Vocabulary.build(train.questions[i] for i in self.train_idx)
        counts = Counter(train.answers[i] for i in self.train_idx)
        ranked = sorted(counts, key=lambda a: (-counts[a], a))[: config.max_answers]
        self.answers = sorted(ranked)
        self.answer_index = {a: k for k, a in enumerate(self.answers)}
        self.targets = {
            "train": self._targets(train.answers), "test": self._targets(dataset.test.answers)
        }  # fmt: skip
        # a training question whose answer is no class cannot be learnt: train on the others
        self.train_idx = self.train_idx[self.targets["train"][self.train_idx] >= 0]
        self.channels_last = config.channels_last
        # the curriculum's questions: the non-relational ones (about one named object), whose
        # answer needs attention on that object and nothing else
        self.curriculum_idx = self.train_idx
        if config.curriculum_epochs:
            if train.relational is None:
                raise UserError(
                    f"--curriculum-epochs needs relational / non-relational question labels, "
                    f"which {dataset.name} does not have (the generated set has them)"
                )
            self.curriculum_idx = self.train_idx[~train.relational[self.train_idx]]

    def _targets(self, answers: list[str]) -> np.ndarray:
        return np.array([self.answer_index.get(a, -1) for a in answers], dtype=np.int64)

    def split(self, name: str):
        return self.dataset.test if name == "test" else self.dataset.train

    def indices(self, name: str) -> np.ndarray:
        return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}[name]

    @property
    def in_channels(self) -> int:
        images = self.dataset.train.images
        return int(images.shape[1]) if self.dataset.features else 3

    def batch(self, name: str, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``(images, ids, lengths, targets)`` of the questions ``idx`` of split ``name``."""
        s = self.split(name)
        images = s.images[s.image_index[idx]]
        if self.dataset.features:
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        else:  # uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-0.5, 0.5]
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
            x = x / 255 - 0.5
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                         else torch.contiguous_format)  # fmt: skip
        ids, lengths = self.vocab.encode([s.questions[i] for i in idx])
        target = self.targets["test" if name == "test" else "train"][idx]
        return x, torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(target)

    def boxes(self, name: str, idx: np.ndarray) -> torch.Tensor | None:
        """The ``(B, 2, 4)`` pixel boxes of the questions' objects, or ``None`` (no boxes)."""
        boxes = self.split(name).boxes
        return None if boxes is None else torch.from_numpy(boxes[idx])


def load_data(config: E3Config, ctx: DistContext | None = None) -> E3Data:
    """Read the dataset (rank 0 first, so that only one process fills the cache)."""
    ctx = ctx or DistContext()
    kwargs = dict(
        vqa_dir=config.vqa_dir, easy_vqa_dir=config.easy_vqa_dir, cache_dir=config.data_dir,
        image_size=config.image_size, generated_seed=config.generated_seed,
        generated_images=(config.generated_train_images, config.generated_test_images),
        max_questions=config.max_questions,
    )  # fmt: skip
    if ctx.main:
        dataset = load_dataset(config.dataset, **kwargs)
    ctx.barrier()
    if not ctx.main:
        dataset = load_dataset(config.dataset, **kwargs)
    return E3Data(dataset, config)


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
# evaluation


def _attention_mass(masks: torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]):
    """Share of each glimpse's mass inside the union of each question's boxes: ``(B, G)``.

    The mask (normalised to sum 1) is resized to the image (nearest, each cell spread over the
    pixels it covers), as attention correctness (Liu et al., 2017) measures it."""
    height, width = image_size
    up = F.interpolate(masks.float(), size=(height, width), mode="nearest")
    up = up / up.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]
    region = torch.zeros(len(boxes), height, width)
    for b, question_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in question_boxes:
            if x0 >= 0:
                region[b, y0:y1, x0:x1] = 1
    return (up * region[:, None]).flatten(2).sum(-1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: E3Data,
    split: str,
    batch_size: int,
    ctx: DistContext | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy (the VQA accuracy where the split has human answers), loss, accuracy by question
    type and, where the split has object boxes, attention correctness; sharded over ranks."""
    ctx = ctx or DistContext()
    model.eval()
    s = data.split(split)
    shard = ctx.shard(data.indices(split))
    glimpses = getattr(model, "glimpses", 1)
    with_mass = s.boxes is not None and getattr(model, "attention", "none") != "none"
    rows: list[np.ndarray] = []
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        x, ids, lengths, target = data.batch(split, idx)
        with autocast(precision):
            logits, masks = model(x, ids, lengths, return_masks=True,
                                  boxes=data.boxes(split, idx))  # fmt: skip
        logits = logits.float()
        loss = F.cross_entropy(logits, target, ignore_index=-1, reduction="none")
        pred = logits.argmax(1).numpy()
        if s.human_answers is not None:
            score = [
                vqa_accuracy(data.answers[p], s.human_answers[i])
                for p, i in zip(pred, idx, strict=True)
            ]
        else:
            score = (pred == target.numpy()).astype(np.float64)
        mass = (
            _attention_mass(masks, s.boxes[idx], x.shape[-2:]).numpy()
            if with_mass and masks is not None
            else np.full((len(idx), glimpses), np.nan)
        )
        rows.append(np.column_stack([idx, pred, score, loss.double().numpy(), mass]))
    local = np.concatenate(rows) if rows else np.zeros((0, 4 + glimpses))
    table = ctx.gather_rows(local)
    table = table[np.argsort(table[:, 0], kind="stable")]
    idx = table[:, 0].astype(np.int64)
    score = table[:, 2]

    result: dict[str, Any] = {
        "accuracy": float(score.mean()) if len(score) else math.nan,
        "loss": float(table[:, 3].mean()) if len(table) else math.nan,
        **_by_kind(score, s, idx),
    }
    if with_mass:
        per_glimpse = np.nanmean(table[:, 4:], axis=0) if len(table) else np.full(glimpses, np.nan)
        result["attention_correctness"] = [float(v) for v in per_glimpse]
    if s.boxes is not None and len(idx):
        # what a uniform mask scores: the share of the image the boxes cover
        uniform = torch.ones(len(idx), 1, 1, 1)
        share = _attention_mass(uniform, s.boxes[idx], s.images.shape[1:3])
        result["attention_chance"] = float(share.mean())
    return result


def answer_prior(data: E3Data) -> dict[str, Any]:
    """How far the question alone goes: the test scores of answering each question with the
    training questions' most frequent answer to the same words (to an unseen question: the most
    frequent training answer). Keys as :func:`evaluate`'s (no loss, no attention).

    A row that scores no better than this has not used the image.
    """
    train, test = data.split("train"), data.split("test")
    by_question: dict[tuple[str, ...], Counter] = {}
    for i in data.train_idx:
        words = tuple(tokenize(train.questions[i]))
        by_question.setdefault(words, Counter())[train.answers[i]] += 1
    overall = sum(by_question.values(), Counter())

    def top(counts: Counter) -> str:
        return min(counts, key=lambda a: (-counts[a], a))  # ties: the first answer by name

    prior = {q: top(c) for q, c in by_question.items()}
    fallback = top(overall)
    idx = data.test_idx
    guess = {i: prior.get(tuple(tokenize(test.questions[i])), fallback) for i in idx}
    if test.human_answers is not None:
        score = np.array([vqa_accuracy(guess[i], test.human_answers[i]) for i in idx])
    else:
        score = np.array([guess[i] == test.answers[i] for i in idx], dtype=np.float64)
    return {"accuracy": float(score.mean()), **_by_kind(score, test, idx)}


def _by_kind(score: np.ndarray, split: VQASplit, idx: np.ndarray) -> dict[str, Any]:
    """Mean ``score`` of the questions ``idx`` by question type and, where the split marks
    them, of the relational and the non-relational ones (``None`` where there are none)."""

    def mean(mask: np.ndarray) -> float | None:
        return float(score[mask].mean()) if mask.any() else None

    qtypes = split.qtypes[idx]
    result: dict[str, Any] = {
        "by_type": {t: mean(qtypes == t) for t in QUESTION_TYPES if (qtypes == t).any()}
    }
    if split.relational is not None:
        relational = split.relational[idx]
        result["relational"] = mean(relational)
        result["non_relational"] = mean(~relational)
    return result


# ------------------------------------------------------------------------------------------
# the recipe


def train(config: E3Config) -> dict[str, Any]:
    """Train, keep the best-validation weights, test them; return (and write) the metrics."""
    return launch(config, _train)


def _train(config: E3Config, ctx: DistContext) -> dict[str, Any]:
    out = Path(config.out)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    started = time.perf_counter()

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
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks.pop()  # batch norm needs at least two samples
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
    state = fit(
        model, optimizer, out=out, fingerprint=fingerprint, ctx=ctx, epochs=config.epochs,
        patience=config.patience, lr_at=lambda e: lr_at(config, e), train_one_epoch=one_epoch,
        evaluate=validate, name=name, patience_from=config.curriculum_epochs,
    )  # fmt: skip
    done = finished_metrics(out, state)
    if done is not None:
        logger.info("run already finished; metrics in %s", out / "metrics.json")
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention_parameters": sum(p.numel() for p in model.estimators.parameters()),
        "wall_time_s": time.perf_counter() - started,
        "samples": {
            "train": len(data.train_idx),
            "val": len(data.val_idx),
            "test": len(data.test_idx),
        },
        "vocabulary": len(data.vocab),
        "answers": data.answers,
        "data": {"source": dataset.source, "origin": dataset.origin, "identity": dataset.identity},
    }
    metrics = write_metrics(
        out, metrics, state, config=config, precision=precision, fingerprint=fingerprint,
        model=model, optimizer=optimizer, ctx=ctx,
        recorded={"scan_products": scan_products(precision)},
    )  # fmt: skip
    if ctx.main:
        logger.info(
            "%s: test accuracy %.4f (best val %.4f @ epoch %d) -> %s",
            name, metrics["test_accuracy"], metrics["val_accuracy"], metrics["best_epoch"],
            out / "metrics.json",
        )  # fmt: skip
    return metrics
