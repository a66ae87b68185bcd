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

The package has one module per reader (:mod:`.easy_vqa`, :mod:`.sort_of_clevr`, :mod:`.vqa2`) on
a common :mod:`.base`; everything is importable from here.
"""

from __future__ import annotations

from attentionrnn.data.cache import ENV_DATA_DIR
from attentionrnn.experiments.e3.data.base import (
    DATASETS,
    ENV_VQA_DIR,
    QUESTION_TYPES,
    Vocabulary,
    VQASet,
    VQASplit,
    answer_type,
    default_cache_dir,
    normalize_answer,
    tokenize,
    vqa_accuracy,
)
from attentionrnn.experiments.e3.data.easy_vqa import easy_vqa_root, read_easy_vqa
from attentionrnn.experiments.e3.data.sort_of_clevr import (
    CLEVR_COLOURS,
    CLEVR_KINDS,
    generate_sort_of_clevr,
)
from attentionrnn.experiments.e3.data.vqa2 import VQA2_SPLITS, read_vqa_v2

__all__ = [
    "CLEVR_COLOURS",
    "CLEVR_KINDS",
    "DATASETS",
    "ENV_DATA_DIR",
    "ENV_VQA_DIR",
    "QUESTION_TYPES",
    "VQA2_SPLITS",
    "VQASet",
    "VQASplit",
    "Vocabulary",
    "answer_type",
    "default_cache_dir",
    "easy_vqa_root",
    "generate_sort_of_clevr",
    "normalize_answer",
    "read_easy_vqa",
    "read_vqa_v2",
    "tokenize",
    "vqa_accuracy",
]
