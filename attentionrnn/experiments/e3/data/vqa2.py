"""VQA v2 from a user folder: the official questions / annotations JSON and either precomputed
grid features or the COCO images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.data.base import (
    ENV_VQA_DIR,
    QUESTION_TYPES,
    VQASet,
    VQASplit,
    _read_image,
    answer_type,
    normalize_answer,
)

#: The official file names, per split.
VQA2_SPLITS = {"train": "train2014", "test": "val2014"}


def _vqa2_file(root: Path, kind: str, coco_split: str) -> tuple[Path, dict]:
    name = {
        "questions": f"v2_OpenEnded_mscoco_{coco_split}_questions.json",
        "annotations": f"v2_mscoco_{coco_split}_annotations.json",
    }[kind]
    path = root / name
    if not path.is_file():
        raise UserError(f"VQA v2 folder {root}: {name} is missing (the official {kind} file)")
    try:
        return path, json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def _vqa2_images(root: Path, coco_split: str, image_ids: list[int], image_size: int) -> np.ndarray:
    features = root / f"features_{coco_split}.npz"
    if features.is_file():
        with np.load(features, allow_pickle=False) as z:
            if "image_ids" not in z.files or "features" not in z.files:
                raise UserError(f"{features}: needs the arrays image_ids and features")
            row = {int(i): k for k, i in enumerate(z["image_ids"])}
            missing = [i for i in image_ids if i not in row]
            if missing:
                raise UserError(f"{features}: no features of image {missing[0]} "
                                f"({len(missing)} image(s) missing)")  # fmt: skip
            feats = z["features"]
            if feats.ndim != 4:
                raise UserError(f"{features}: features must be (N, C, h, w), got {feats.shape}")
            return np.ascontiguousarray(feats[[row[i] for i in image_ids]], dtype=np.float32)
    folder = root / coco_split
    if not folder.is_dir():
        raise UserError(
            f"VQA v2 folder {root}: neither features_{coco_split}.npz (grid features) nor the "
            f"image folder {coco_split}/ is there"
        )
    images = []
    for i in image_ids:
        path = folder / f"COCO_{coco_split}_{i:012d}.jpg"
        if not path.is_file():
            raise UserError(f"VQA v2: image {path} is missing")
        images.append(_read_image(path, image_size))
    return np.stack(images)


def read_vqa_v2(
    root: str | os.PathLike | None, image_size: int = 64, max_questions: int | None = None
) -> VQASet:
    """VQA v2 from a folder: the questions / annotations of ``train2014`` (train) and
    ``val2014`` (test) under their official names, and for each split either
    ``features_SPLIT.npz`` (arrays ``image_ids (N,)`` and ``features (N, C, h, w)``: precomputed
    grid features, e.g. a ResNet's last conv map) or the COCO images ``SPLIT/COCO_SPLIT_ID.jpg``
    (resized to ``image_size``).

    The answer trained on is the annotation's ``multiple_choice_answer``; the ten ``answers``
    give the VQA accuracy and ``answer_type`` the question type.

    Args:
        root: the folder (default ``$ATTENTIONRNN_VQA_DIR``).
        image_size: side the COCO images are resized to (unused with features).
        max_questions: use the first questions of each split only (quick runs).

    Raises:
        UserError: no folder, or a file missing, unreadable or inconsistent.
    """
    root = root or os.environ.get(ENV_VQA_DIR)
    if not root:
        raise UserError(f"VQA v2 needs a folder: pass --vqa-dir or set ${ENV_VQA_DIR}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"VQA v2 folder {root}: no such folder")
    splits, features = {}, False
    for split, coco in VQA2_SPLITS.items():
        qpath, qjson = _vqa2_file(root, "questions", coco)
        apath, ajson = _vqa2_file(root, "annotations", coco)
        try:
            questions = qjson["questions"][:max_questions]
            by_id = {a["question_id"]: a for a in ajson["annotations"]}
        except (KeyError, TypeError) as exc:
            raise UserError(f"{qpath} / {apath}: not in the VQA v2 layout ({exc})") from exc
        ids = sorted({int(q["image_id"]) for q in questions})
        row = {i: k for k, i in enumerate(ids)}
        texts, answers, humans, qtypes, index = [], [], [], [], []
        for q in questions:
            a = by_id.get(q["question_id"])
            if a is None:
                raise UserError(f"{apath}: no annotation of question {q['question_id']}")
            index.append(row[int(q["image_id"])])
            texts.append(str(q["question"]))
            answers.append(normalize_answer(str(a["multiple_choice_answer"])))
            humans.append(tuple(str(h["answer"]) for h in a["answers"]))
            t = str(a.get("answer_type", answer_type(answers[-1])))
            qtypes.append(t if t in QUESTION_TYPES else "other")
        images = _vqa2_images(root, coco, ids, image_size)
        features = images.dtype != np.uint8
        splits[split] = VQASplit(
            images, np.array(index, dtype=np.int64), texts, answers, np.array(qtypes), humans
        )
    ident = f"vqa2:{'features' if features else f'images{image_size}'}:{max_questions}"
    return VQASet("vqa2", splits["train"], splits["test"], "vqa2", str(root), ident, features)
