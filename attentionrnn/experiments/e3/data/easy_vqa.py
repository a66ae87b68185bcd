"""easy-VQA: the small real set bundled in the PyPI package ``easy-vqa``, read from the installed
package's files (no network); the decoded images are cached as an ``.npz``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.data.base import (
    VQASet,
    VQASplit,
    _read_image,
    answer_type,
    default_cache_dir,
)

logger = logging.getLogger("attentionrnn.e3.data")


def easy_vqa_root() -> Path:
    """The ``data`` folder of the installed ``easy-vqa`` package."""
    import importlib.util

    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or spec.origin is None:
        raise UserError(
            "easy-VQA needs the PyPI package easy-vqa: pip install easy-vqa (or "
            "pip install 'attentionrnn[experiments]')"
        )
    return Path(spec.origin).parent / "data"


def _easy_vqa_split(root: Path, split: str) -> VQASplit:
    folder = root / split
    qfile = folder / "questions.json"
    if not qfile.is_file():
        raise UserError(f"easy-VQA: {qfile} is missing (a broken easy-vqa install?)")
    try:
        rows = json.loads(qfile.read_text())
    except ValueError as exc:
        raise UserError(f"{qfile}: not valid JSON ({exc})") from exc
    ids = sorted({int(r[2]) for r in rows})
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    images = []
    for image_id in ids:
        path = folder / "images" / f"{image_id}.png"
        if not path.is_file():
            raise UserError(f"easy-VQA: image {path} of a {split} question is missing")
        images.append(_read_image(path, None))
    answers = [str(r[1]) for r in rows]
    return VQASplit(
        images=np.stack(images),
        image_index=np.array([row_of[int(r[2])] for r in rows], dtype=np.int64),
        questions=[str(r[0]) for r in rows],
        answers=answers,
        qtypes=np.array([answer_type(a) for a in answers]),
    )


def read_easy_vqa(
    root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> VQASet:
    """easy-VQA (train: 4,000 images / 38,575 questions; test: 1,000 / 9,673).

    Args:
        root: a folder in the package's ``data`` layout (``train/questions.json``,
            ``train/images/N.png``, ``test/...``); default: the installed package's.
        cache_dir: where the decoded images are cached (only for the installed package).

    Raises:
        UserError: the package is not installed, or a file is missing or unreadable.
    """
    installed = root is None
    root = easy_vqa_root() if installed else Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"easy-VQA folder {root}: no such folder")
    cached = None
    if installed:
        cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cached = cached / "easy_vqa-1.0.npz"
        if cached.is_file():
            try:
                return _load_cached_easy_vqa(cached, root)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("cache %s unreadable (%s); decoding the images again", cached, exc)
    train, test = _easy_vqa_split(root, "train"), _easy_vqa_split(root, "test")
    if cached is not None:
        _save_cached_easy_vqa(cached, train, test)
    return VQASet("easy_vqa", train, test, "easy-vqa", str(root), "easy-vqa")


def _save_cached_easy_vqa(path: Path, train: VQASplit, test: VQASplit) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, s in (("train", train), ("test", test)):
        arrays.update({
            f"{name}_images": s.images, f"{name}_index": s.image_index,
            f"{name}_questions": np.array(s.questions), f"{name}_answers": np.array(s.answers),
        })  # fmt: skip
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_cached_easy_vqa(path: Path, root: Path) -> VQASet:
    with np.load(path, allow_pickle=False) as z:
        splits = []
        for name in ("train", "test"):
            answers = [str(a) for a in z[f"{name}_answers"]]
            splits.append(VQASplit(
                z[f"{name}_images"], z[f"{name}_index"], [str(q) for q in z[f"{name}_questions"]],
                answers, np.array([answer_type(a) for a in answers]),
            ))  # fmt: skip
    return VQASet("easy_vqa", splits[0], splits[1], "easy-vqa", str(root), "easy-vqa")
