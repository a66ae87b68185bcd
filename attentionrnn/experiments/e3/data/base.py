"""The common base of E3's readers: the :class:`VQASet` / :class:`VQASplit` every reader
returns, the question text (:func:`tokenize`, :class:`Vocabulary`), the answer rules
(:func:`normalize_answer`, :func:`vqa_accuracy`, :func:`answer_type`) and the helpers the readers
share (the cache folder, reading one image)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attentionrnn.data.cache import cache_dir
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.state import content_sha256

DATASETS = ("easy_vqa", "sort_of_clevr", "vqa2")
#: The question types the tables report (VQA's answer types).
QUESTION_TYPES = ("yes/no", "number", "other")
ENV_VQA_DIR = "ATTENTIONRNN_VQA_DIR"


@dataclass
class VQASplit:
    """The questions of one split and the images they are about.

    Attributes:
        images: uint8 ``(N, H, W, 3)`` images, or float32 ``(N, C, h, w)`` grid features.
        image_index: ``(Q,)`` row of ``images`` each question is about.
        questions: the ``Q`` question texts.
        answers: the answer to train on (VQA v2: the most frequent human answer).
        qtypes: ``(Q,)`` the question type, one of :data:`QUESTION_TYPES`.
        human_answers: VQA v2: the ten human answers of each question, else ``None``.
        relational: generated set: ``(Q,)`` whether the question is relational, else ``None``.
        boxes: generated set: ``(Q, 2, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels (end exclusive)
            of the objects the question is about, unused slots ``-1``; else ``None``.
    """

    images: np.ndarray
    image_index: np.ndarray
    questions: list[str]
    answers: list[str]
    qtypes: np.ndarray
    human_answers: list[tuple[str, ...]] | None = None
    relational: np.ndarray | None = None
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, idx: np.ndarray) -> VQASplit:
        """The questions ``idx`` (all images are kept: questions index into them)."""
        idx = np.asarray(idx, dtype=np.int64)
        return VQASplit(
            self.images, self.image_index[idx], [self.questions[i] for i in idx],
            [self.answers[i] for i in idx], self.qtypes[idx],
            [self.human_answers[i] for i in idx] if self.human_answers is not None else None,
            self.relational[idx] if self.relational is not None else None,
            self.boxes[idx] if self.boxes is not None else None,
        )  # fmt: skip


@dataclass
class VQASet:
    """A dataset as one of the readers returns it: its two splits and where it came from."""

    name: str
    train: VQASplit
    test: VQASplit
    source: str  # "easy-vqa", "generated" or "vqa2"
    origin: str  # the folder or generator settings it was read from
    identity: str = ""  # enters the run fingerprint (e.g. the generator's seed and sizes)
    features: bool = False  # images are precomputed grid features
    extra: dict = field(default_factory=dict)

    def content_sha256(self) -> str:
        """sha256 of both splits' images, questions, answers and labels (the run's data hash:
        the generated set has no file, and a reader's cache is not the data)."""
        fields = ("images", "image_index", "questions", "answers", "qtypes", "human_answers",
                  "relational", "boxes")  # fmt: skip
        return content_sha256(
            *(getattr(split, f) for split in (self.train, self.test) for f in fields)
        )


# ------------------------------------------------------------------------------------------
# text


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers of a question (punctuation dropped, ``"what's"`` kept).

    Example::

        >>> tokenize("What color is the shape?")
        ['what', 'color', 'is', 'the', 'shape']
    """
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word ids of the training questions: ``0`` pads, ``1`` is a word not seen in training.

    Args:
        words: the known words; ids follow their order from 2.
    """

    PAD, UNK = 0, 1

    def __init__(self, words: Sequence[str]) -> None:
        self.words = ["<pad>", "<unk>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        """The words that occur ``min_count`` times or more, most frequent first (then a-z)."""
        counts = Counter(w for t in texts for w in tokenize(t))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(kept)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str], max_length: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (B, L) int64 padded with 0, lengths (B,))``; at most ``max_length`` words, and
        at least one (an empty question is one unknown word)."""
        rows = [[self.index.get(w, self.UNK) for w in tokenize(t)][:max_length] or [self.UNK]
                for t in texts]  # fmt: skip
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.zeros((len(rows), int(lengths.max(initial=1))), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, lengths


_PUNCT = re.compile(r"[^\w\s']")
_ARTICLES = {"a", "an", "the"}


def normalize_answer(answer: str) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed (a simplified form of the
    official VQA answer normalisation)."""
    words = _PUNCT.sub(" ", answer.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The VQA accuracy of one answer: ``min(#humans who gave it / 3, 1)``.

    (The official script also averages this over the ten leave-one-out subsets of the humans;
    that differs from the formula here by at most a few tenths of a percent.)

    Example::

        >>> vqa_accuracy("two", ["2", "two", "two", "2", "two", "3", "two", "2", "2", "2"])
        1.0
        >>> vqa_accuracy("3", ["2", "two", "two", "2", "two", "3", "two", "2", "2", "2"])
        0.3333333333333333
    """
    p = normalize_answer(prediction)
    return min(sum(normalize_answer(a) == p for a in human_answers) / 3.0, 1.0)


_NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
}  # fmt: skip


def answer_type(answer: str) -> str:
    """The question type implied by an answer: ``"yes/no"``, ``"number"`` or ``"other"`` (for
    sources without VQA's ``answer_type``)."""
    a = normalize_answer(answer)
    if a in ("yes", "no"):
        return "yes/no"
    if a.isdigit() or a in _NUMBER_WORDS:
        return "number"
    return "other"


# ------------------------------------------------------------------------------------------
# shared by the readers


def default_cache_dir() -> Path:
    """``$ATTENTIONRNN_DATA_DIR``, else ``$XDG_CACHE_HOME/attentionrnn/e3`` (``~/.cache``)."""
    return cache_dir("e3")


def _read_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from exc
