"""The data of experiment E3 (visual question answering), three sources behind one interface.

Every reader returns a :class:`VQASet`: a train and a test :class:`VQASplit`, each a table of
questions that point into an array of images (or of precomputed grid features), with the answer
to train on, the question type and, where the source has them, the human answers (for the VQA
accuracy) and the boxes of the objects a question is about (for attention correctness).

* ``easy_vqa`` — the small real set bundled in the PyPI package ``easy-vqa`` (64×64 images of one
  shape, 13 answers, yes/no and open questions); read from the installed package's files, no
  network. The decoded images are cached as an ``.npz`` (see :func:`default_cache_dir`).
* ``sort_of_clevr`` — generated here, deterministic by seed, in the style of Sort-of-CLEVR
  (Santoro et al., 2017): several objects of distinct colours per image, non-relational questions
  (the shape or position of the object of a colour) and relational ones (the shape of the object
  nearest to / farthest from it, how many objects share its shape). Answering needs the object
  of the named colour, whose box (and, for nearest / farthest, the other object's) is kept.
* ``vqa2`` — VQA v2 from a folder the user gives: the official questions / annotations JSON and
  either precomputed grid features or the COCO images (see :func:`read_vqa_v2`).

Questions are tokenised by :func:`tokenize`; :class:`Vocabulary` is built on the training
questions only. :func:`vqa_accuracy` is the standard VQA accuracy ``min(#humans who gave the
answer / 3, 1)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attentionrnn.engine.errors import UserError

logger = logging.getLogger("attentionrnn.e3.data")

__all__ = [
    "DATASETS",
    "QUESTION_TYPES",
    "VQASet",
    "VQASplit",
    "Vocabulary",
    "answer_type",
    "default_cache_dir",
    "generate_sort_of_clevr",
    "load_dataset",
    "normalize_answer",
    "read_easy_vqa",
    "read_vqa_v2",
    "tokenize",
    "vqa_accuracy",
]

DATASETS = ("easy_vqa", "sort_of_clevr", "vqa2")
#: The question types the tables report (VQA's answer types).
QUESTION_TYPES = ("yes/no", "number", "other")
ENV_DATA_DIR = "ATTENTIONRNN_DATA_DIR"
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
    """A dataset of :func:`load_dataset`: its two splits and where it came from."""

    name: str
    train: VQASplit
    test: VQASplit
    source: str  # "easy-vqa", "generated" or "vqa2"
    origin: str  # the folder or generator settings it was read from
    identity: str = ""  # enters the run fingerprint (e.g. the generator's seed and sizes)
    features: bool = False  # images are precomputed grid features
    extra: dict = field(default_factory=dict)


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
# easy-VQA


def default_cache_dir() -> Path:
    """``$ATTENTIONRNN_DATA_DIR``, else ``$XDG_CACHE_HOME/attentionrnn/e3`` (``~/.cache``)."""
    root = os.environ.get(ENV_DATA_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attentionrnn" / "e3"


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


# ------------------------------------------------------------------------------------------
# the generated relational set (Sort-of-CLEVR style)

#: Object colours (RGB), one object of each colour per image at most.
CLEVR_COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 30), "blue": (40, 60, 230),
    "orange": (245, 140, 20), "gray": (128, 128, 128), "yellow": (235, 220, 30),
}  # fmt: skip
#: Question kinds: (template, relational).
CLEVR_KINDS = {
    "shape": ("what is the shape of the {c} object?", False),
    "horizontal": ("is the {c} object on the left or on the right?", False),
    "vertical": ("is the {c} object at the top or at the bottom?", False),
    "nearest": ("what is the shape of the object nearest to the {c} object?", True),
    "farthest": ("what is the shape of the object farthest from the {c} object?", True),
    "count": ("how many objects have the same shape as the {c} object?", True),
}


def _draw(canvas: np.ndarray, shape: str, x0: int, y0: int, size: int, rgb) -> None:
    if shape == "square":
        canvas[y0 : y0 + size, x0 : x0 + size] = rgb
        return
    yy, xx = np.mgrid[0:size, 0:size]
    r = (size - 1) / 2
    disc = (yy - r) ** 2 + (xx - r) ** 2 <= (r + 0.25) ** 2
    canvas[y0 : y0 + size, x0 : x0 + size][disc] = rgb


def generate_sort_of_clevr(
    train_images: int = 4000,
    test_images: int = 1000,
    *,
    seed: int = 0,
    image_size: int = 64,
    objects: int = 6,
    questions_per_image: int = 10,
) -> VQASet:
    """A Sort-of-CLEVR-style relational VQA set, the same for the same arguments.

    Each image holds ``objects`` non-overlapping squares / circles of distinct colours (side
    ``image_size // 8``) on a black canvas. Each image gets ``questions_per_image`` questions
    about an object named by its colour, half non-relational (its shape; left or right; top or
    bottom half) and half relational (the shape of the object nearest to it / farthest from it;
    how many objects share its shape — a ``number`` question). ``boxes`` holds the named
    object's box and, for nearest / farthest, the other object's.

    Raises:
        UserError: more objects than colours, or the objects do not fit the canvas.
    """
    colours = list(CLEVR_COLOURS)
    if not 2 <= objects <= len(colours):
        raise UserError(f"objects must be between 2 and {len(colours)}, got {objects}")
    size = max(2, image_size // 8)
    if (image_size // size) ** 2 < 2 * objects:
        raise UserError(f"{objects} objects of side {size} do not fit a {image_size}px image")
    rng = np.random.default_rng([seed, image_size, objects])
    kinds = list(CLEVR_KINDS)
    non_rel = [k for k in kinds if not CLEVR_KINDS[k][1]]
    rel = [k for k in kinds if CLEVR_KINDS[k][1]]

    def split(n_images: int) -> VQASplit:
        images = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
        index, questions, answers, qtypes, relational, boxes = [], [], [], [], [], []
        for n in range(n_images):
            placed: list[tuple[int, int]] = []
            while len(placed) < objects:  # rejection sampling on a grid-free canvas
                x0, y0 = (int(v) for v in rng.integers(0, image_size - size + 1, 2))
                if all(abs(x0 - a) > size or abs(y0 - b) > size for a, b in placed):
                    placed.append((x0, y0))
            names = [colours[int(i)] for i in rng.permutation(len(colours))[:objects]]
            shapes = [("square", "circle")[int(s)] for s in rng.integers(0, 2, objects)]
            for (x0, y0), c, s in zip(placed, names, shapes, strict=True):
                _draw(images[n], s, x0, y0, size, CLEVR_COLOURS[c])
            centres = np.array([(x0 + size / 2, y0 + size / 2) for x0, y0 in placed])
            box = [(x0, y0, x0 + size, y0 + size) for x0, y0 in placed]
            for q in range(questions_per_image):
                o = int(rng.integers(objects))
                kind = (non_rel if q % 2 == 0 else rel)[int(rng.integers(3))]
                dist = np.hypot(*(centres - centres[o]).T)
                other = -1
                if kind == "shape":
                    answer = shapes[o]
                elif kind == "horizontal":
                    answer = "left" if centres[o, 0] < image_size / 2 else "right"
                elif kind == "vertical":
                    answer = "top" if centres[o, 1] < image_size / 2 else "bottom"
                elif kind in ("nearest", "farthest"):
                    dist[o] = np.inf if kind == "nearest" else -np.inf
                    other = int(dist.argmin() if kind == "nearest" else dist.argmax())
                    answer = shapes[other]
                else:
                    answer = str(sum(s == shapes[o] for s in shapes))
                index.append(n)
                questions.append(CLEVR_KINDS[kind][0].format(c=names[o]))
                answers.append(answer)
                qtypes.append(answer_type(answer))
                relational.append(CLEVR_KINDS[kind][1])
                boxes.append([box[o], box[other] if other >= 0 else (-1, -1, -1, -1)])
        return VQASplit(
            images, np.array(index, dtype=np.int64), questions, answers, np.array(qtypes),
            relational=np.array(relational, dtype=bool),
            boxes=np.array(boxes, dtype=np.int64).reshape(-1, 2, 4),
        )  # fmt: skip

    settings = (
        f"seed={seed},train={train_images},test={test_images},size={image_size},"
        f"objects={objects},questions={questions_per_image}"
    )
    train = split(train_images)
    test = split(test_images)
    return VQASet("sort_of_clevr", train, test, "generated", settings, f"generated:{settings}")


# ------------------------------------------------------------------------------------------
# VQA v2 from a user folder

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


# ------------------------------------------------------------------------------------------
# one entry point


def load_dataset(
    name: str,
    *,
    vqa_dir: str | None = None,
    easy_vqa_dir: str | None = None,
    cache_dir: str | None = None,
    image_size: int = 64,
    generated_images: tuple[int, int] = (4000, 1000),
    generated_seed: int = 0,
    max_questions: int | None = None,
) -> VQASet:
    """The dataset ``name`` (one of :data:`DATASETS`); the arguments of the other sources are
    ignored."""
    if name == "easy_vqa":
        return read_easy_vqa(easy_vqa_dir, cache_dir)
    if name == "sort_of_clevr":
        return generate_sort_of_clevr(*generated_images, seed=generated_seed, image_size=image_size)
    if name == "vqa2":
        return read_vqa_v2(vqa_dir, image_size, max_questions)
    raise UserError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
