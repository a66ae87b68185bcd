"""E3's measurements: :func:`evaluate` (accuracy, the VQA accuracy where the split has human
answers, loss, accuracy by question type, attention correctness of each glimpse where the data
has object boxes) and :func:`answer_prior`, how far the question alone goes."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attentionrnn.engine.precision import autocast
from attentionrnn.engine.recipe import Evaluation
from attentionrnn.experiments.e3.data import QUESTION_TYPES, VQASplit, tokenize, vqa_accuracy

if TYPE_CHECKING:
    from attentionrnn.experiments.e3.rundata import E3Data

__all__ = ["answer_prior", "evaluate"]


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


def _glimpses(model: nn.Module) -> int:
    return getattr(model, "glimpses", 1)


def _with_mass(model: nn.Module, s: VQASplit) -> bool:
    """Whether attention correctness is measured: the split has boxes, the model attends."""
    return s.boxes is not None and getattr(model, "attention", "none") != "none"


def _rows(
    model: nn.Module, data: E3Data, split: str, idx: np.ndarray, precision: str
) -> np.ndarray:
    """Per question of ``idx``: its index, the predicted answer, its score, the loss and the
    attention correctness of each glimpse (NaN where not measured)."""
    s = data.split(split)
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
        if _with_mass(model, s) and masks is not None
        else np.full((len(idx), _glimpses(model)), np.nan)
    )
    return np.column_stack([idx, pred, score, loss.double().numpy(), mass])


def _summary(table: np.ndarray, model: nn.Module, data: E3Data, split: str) -> dict[str, Any]:
    """Accuracy, mean loss, accuracy by question type and, where measured, the attention
    correctness of each glimpse and a uniform mask's, of the rows of :func:`_rows`."""
    s = data.split(split)
    idx = table[:, 0].astype(np.int64)
    score = table[:, 2]
    result: dict[str, Any] = {
        "accuracy": float(score.mean()) if len(score) else math.nan,
        "loss": float(table[:, 3].mean()) if len(table) else math.nan,
        **_by_kind(score, s, idx),
    }
    if _with_mass(model, s):
        per_glimpse = (
            np.nanmean(table[:, 4:], axis=0) if len(table) else np.full(_glimpses(model), np.nan)
        )
        result["attention_correctness"] = [float(v) for v in per_glimpse]
    if s.boxes is not None and len(idx):
        # what a uniform mask scores: the share of the image the boxes cover
        uniform = torch.ones(len(idx), 1, 1, 1)
        share = _attention_mass(uniform, s.boxes[idx], s.images.shape[1:3])
        result["attention_chance"] = float(share.mean())
    return result


#: Accuracy (the VQA accuracy where the split has human answers), loss, accuracy by question
#: type and, where the split has object boxes, attention correctness, sharded over the ranks:
#: ``evaluate(model, data, split, batch_size, ctx=None, precision="fp32")``
#: (:class:`~attentionrnn.engine.recipe.Evaluation`).
evaluate = Evaluation(_rows, _summary, width=lambda model: 4 + _glimpses(model))


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
