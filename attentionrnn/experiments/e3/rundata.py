"""The data of one E3 run: :class:`E3Data` (a :class:`~.data.VQASet` with the run's splits,
question vocabulary and answer classes, serving batches) and :func:`load_data`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from attentionrnn.engine.distributed import DistContext
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.data import (
    Vocabulary,
    VQASet,
    generate_sort_of_clevr,
    read_easy_vqa,
    read_vqa_v2,
)

__all__ = ["E3Data", "load_data", "read_dataset"]


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


def read_dataset(config: E3Config) -> VQASet:
    """The questions and images of ``config.dataset`` from the source the config names: the
    easy-vqa package's files (``easy_vqa_dir``, else the installed package), the generated
    Sort-of-CLEVR set (``generated_*``, ``image_size``) or the VQA v2 folder (``vqa_dir``)."""
    config.check()
    if config.dataset == "easy_vqa":
        return read_easy_vqa(config.easy_vqa_dir, config.data_dir)
    if config.dataset == "sort_of_clevr":
        return generate_sort_of_clevr(
            config.generated_train_images, config.generated_test_images,
            seed=config.generated_seed, image_size=config.image_size,
        )  # fmt: skip
    return read_vqa_v2(config.vqa_dir, config.image_size, config.max_questions)


def load_data(config: E3Config, ctx: DistContext | None = None) -> E3Data:
    """Read the dataset (rank 0 first, so that only one process fills the cache)."""
    ctx = ctx or DistContext()
    return E3Data(ctx.main_first(read_dataset, config), config)
