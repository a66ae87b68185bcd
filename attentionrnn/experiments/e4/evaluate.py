"""E4's measurements: the **judge** (an attribute classifier of real images, trained with a seed
of its own, so every row and seed of a dataset is judged by the same network; the frozen
classifier of ``--w-teacher`` is trained alike with another seed) and :func:`evaluate`, which
measures a set of edits (edit success, preservation L1 outside the edited digit, L1 to the exact
edit, mask correctness, KID, mask mass)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import autocast
from attentionrnn.engine.state import atomic_save
from attentionrnn.experiments.e4.config import JUDGE_SEED, E4Config
from attentionrnn.experiments.e4.data import e4_cache
from attentionrnn.experiments.e4.losses import attribute_loss, split_logits
from attentionrnn.experiments.e4.metrics import (
    edit_success,
    kid,
    mask_correctness,
    preservation_l1,
)
from attentionrnn.experiments.e4.model import AttributeClassifier, Editor

logger = logging.getLogger("attentionrnn.e4")

__all__ = ["JUDGE", "JUDGE_SEED", "TEACHER", "evaluate", "input_layout", "judge_accuracy",
           "train_judge", "train_teacher"]  # fmt: skip

JUDGE = "judge.pt"
TEACHER = "teacher.pt"


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels_last memory layout where the run trains so, else contiguous."""
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)  # fmt: skip


# ------------------------------------------------------------------------------------------
# the judge


def train_judge(
    task, idx: dict[str, np.ndarray], config: E4Config, out: Path | None, precision: str = "fp32"
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """The attribute classifier of real images, trained with its own seed (or loaded from
    ``out/judge.pt`` or the data cache when it was trained with the same settings); returns it
    and its accuracy."""
    return _train_classifier(task, idx, config, out, precision, JUDGE_SEED, JUDGE)


def train_teacher(
    task, idx: dict[str, np.ndarray], config: E4Config, out: Path | None, precision: str = "fp32"
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """The frozen classifier of ``--w-teacher``: trained as the judge is, with
    ``config.teacher_seed`` (or loaded from ``out/teacher.pt``); no parameter takes a gradient."""
    if config.teacher_seed == JUDGE_SEED:
        raise UserError(f"the teacher's seed must differ from the judge's ({JUDGE_SEED})")
    teacher, stats = _train_classifier(task, idx, config, out, precision, config.teacher_seed,
                                       TEACHER)  # fmt: skip
    return teacher.requires_grad_(False), stats


def _train_classifier(
    task, idx: dict[str, np.ndarray], config: E4Config, out: Path | None, precision: str,
    seed: int, file: str,
) -> tuple[AttributeClassifier, dict[str, Any]]:  # fmt: skip
    """An attribute classifier of real images trained with ``seed`` (its best validation epoch),
    or loaded from ``out/file`` when that was trained with the same settings."""
    key = {
        "data": task.identity, "epochs": config.judge_epochs, "channels": config.judge_channels,
        "batch_size": config.batch_size, "train": len(idx["train"]), "precision": precision,
    }  # fmt: skip
    if seed != JUDGE_SEED:  # (the judge's key, and so its cached judge.pt, predate the teacher)
        key["seed"] = seed
    net = AttributeClassifier(task.classes, task.query_channels, config.judge_channels)
    path = out / file if out is not None else None
    shared = _shared_path(config, file, key)
    for where in (path, shared):
        if where is not None and where.is_file():
            saved = torch.load(where, map_location="cpu", weights_only=False)
            if saved["key"] == key:
                net.load_state_dict(saved["model"])
                if path is not None and where != path:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_save(saved, path)
                return net.eval(), saved["stats"]
    devnull = torch.random.fork_rng()  # leave the run's own random streams untouched
    with devnull:
        torch.manual_seed(seed)
        net = AttributeClassifier(task.classes, task.query_channels, config.judge_channels)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        best, best_state, history = -1.0, None, []
        for epoch in range(config.judge_epochs):
            net.train()
            order = np.random.default_rng([seed, epoch]).permutation(idx["train"])
            for start in range(0, len(order) - 1, config.batch_size):
                chunk = np.sort(order[start : start + config.batch_size])
                if len(chunk) < 2:
                    continue
                b = task.batch(chunk, task.draw_targets(chunk, np.random.default_rng(0)))
                with autocast(precision):
                    logits = net(input_layout(b.x, config.channels_last), b.query)
                loss = attribute_loss(logits, b.labels, task.classes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            acc = judge_accuracy(net, task, idx["val"], config.eval_batch_size)
            history.append(acc)
            if acc > best:
                best = acc
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            logger.info("%s epoch %d: val accuracy %.4f", file.removesuffix(".pt"), epoch + 1,
                        acc)  # fmt: skip
        net.load_state_dict(best_state)
    test = judge_accuracy(net, task, idx["test"], config.eval_batch_size)
    stats = {"val_accuracy": best, "history": history, "test_accuracy": test}
    saved = {"key": key, "model": net.state_dict(), "stats": stats}
    for where in (path, shared):
        if where is not None:
            where.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(saved, where)
    return net.eval(), stats


def _shared_path(config: E4Config, file: str, key: dict[str, Any]) -> Path:
    """Where a classifier trained with ``key`` is kept for every run of its data: the data
    cache's ``e4/classifiers`` folder (the same network each time, trained once per cache)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{file.removesuffix('.pt')}-{digest[:16]}.pt"
    return e4_cache(config.data_dir) / "classifiers" / name


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
        "features", "reference", "uniform", "uniform_box", "others", "background", "ratio",
        "uniform_others", "uniform_ratio", "leak")}  # fmt: skip
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
            if b.others is not None:
                _query_shares(rows, mask, edited, b)
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
        # what the query does: the mask's share on the other digits and the background, the
        # queried digit's share of the mask on digits (a query-blind mask: about the queried
        # digit's share of the digits' area), and the colour change leaked onto the others
        "mask_others": mean("others"),
        "mask_background": mean("background"),
        "mask_query_ratio": mean("ratio"),
        "uniform_mask_others": mean("uniform_others"),
        "uniform_query_ratio": mean("uniform_ratio"),
        "leak_l1": mean("leak"),
        "kid": kid(torch.cat(rows["features"]), torch.cat(rows["reference"])),
    }


def _query_shares(rows: dict[str, list], mask: torch.Tensor, edited: torch.Tensor, b: Any) -> None:
    """Append one batch's shares of the mask on the other digits and the background, the
    queried digit's share of the mask on digits, their uniform levels and the leaked change."""
    queried = mask_correctness(mask, b.region)
    others = mask_correctness(mask, b.others)
    rows["others"].append(others)
    rows["background"].append(mask_correctness(mask, ~(b.region | b.others)))
    rows["ratio"].append(queried / (queried + others))
    area_q = b.region.float().flatten(1).mean(1)
    area_o = b.others.float().flatten(1).mean(1)
    rows["uniform_others"].append(area_o)
    rows["uniform_ratio"].append(area_q / (area_q + area_o))
    # the mean change of the other digits' pixels: the colour that leaked onto them
    rows["leak"].append(preservation_l1(edited, b.x, ~b.others))
