"""``torch.utils.data.Dataset`` over a generated MREF / MDIST / MBG ``.npz`` file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = {"train": 0, "val": 1, "validation": 1, "test": 2}
TASKS = ("color", "digit")
_SAMPLE_KEYS = ("image_index", "query", "color", "scale", "box", "instance", "split")


class AttributeDataset(Dataset):
    """(image, query) → attribute samples of one split of a generated dataset file.

    ``dataset[k]`` is ``(image, query, target, sample_index)``: ``image`` a float32 tensor
    (3, 100, 100) in [0, 1]; for ``task="color"`` the query is the digit class (0–9) and the
    target its colour (0–4); for ``task="digit"`` (inverse attribute prediction) the query is a
    colour and the target the digit class. ``sample_index`` indexes the samples of the whole file.

    For ``task="digit"`` a sample whose colour is shared by another digit of the same image is
    ambiguous and is left out unless ``drop_ambiguous=False``.

    Args:
        path: the ``.npz`` written by ``attentionrnn generate``.
        split: ``"train"``, ``"val"`` (or ``"validation"``), ``"test"`` or ``"all"``.
        task: ``"color"`` or ``"digit"``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        task: str = "color",
        drop_ambiguous: bool = True,
    ):
        if split not in SPLITS and split != "all":
            raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.path = os.fspath(path)
        self.split = "val" if split == "validation" else split
        self.task = task
        with np.load(self.path, allow_pickle=False) as z:
            missing = [k for k in ("images", "instances", *_SAMPLE_KEYS) if k not in z.files]
            if missing:
                raise ValueError(f"{self.path}: not a dataset file, missing {missing}")
            # (N, 3, H, W) once, so an item is a cheap contiguous slice; uint8 keeps it small
            self._images = np.ascontiguousarray(z["images"].transpose(0, 3, 1, 2))
            self._instances = z["instances"]
            arrays = {k: z[k] for k in _SAMPLE_KEYS}
            meta = {
                k: z[k]
                for k in z.files
                if k not in _SAMPLE_KEYS and k not in ("images", "instances")
            }
        self._image_index = arrays["image_index"].astype(np.int64)
        self._query_digit = arrays["query"].astype(np.int64)
        self._color = arrays["color"].astype(np.int64)
        self._scale = arrays["scale"]
        self._box = arrays["box"].astype(np.int64)
        self._instance = arrays["instance"].astype(np.int64)
        self._split = arrays["split"]
        self.metadata: dict[str, Any] = {
            k: (v.item() if v.ndim == 0 else v.tolist()) for k, v in meta.items()
        }

        keep = np.ones(len(self._split), dtype=bool)
        if self.split != "all":
            keep &= self._split == SPLITS[self.split]
        if task == "digit" and drop_ambiguous:
            keep &= ~self._shared_color()
        self.indices = np.flatnonzero(keep)
        if task == "color":
            self._queries, self._targets = self._query_digit, self._color
        else:
            self._queries, self._targets = self._color, self._query_digit

    def _shared_color(self) -> np.ndarray:
        """True for samples whose colour appears on another digit of the same image."""
        key = self._image_index * 8 + self._color
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return counts[inverse.reshape(-1)] > 1

    # ---------------------------------------------------------------------------------------
    @property
    def num_queries(self) -> int:
        return 10 if self.task == "color" else 5

    @property
    def num_classes(self) -> int:
        return 5 if self.task == "color" else 10

    @property
    def queries(self) -> np.ndarray:
        """The queries of this split's samples, in dataset order."""
        return self._queries[self.indices]

    @property
    def targets(self) -> np.ndarray:
        """The targets of this split's samples, in dataset order."""
        return self._targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        s = int(self.indices[k])
        image = torch.from_numpy(self._images[self._image_index[s]]).float().div_(255.0)
        return image, int(self._queries[s]), int(self._targets[s]), s

    # per-sample annotations, indexed by the file's sample index --------------------------------
    def box(self, sample_index: int) -> tuple[int, int, int, int]:
        """The queried digit's box (x0, y0, x1, y1), end exclusive, in pixels."""
        x0, y0, x1, y1 = (int(v) for v in self._box[sample_index])
        return x0, y0, x1, y1

    def stroke_mask(self, sample_index: int) -> np.ndarray:
        """Bool (100, 100): the stroke pixels of the queried digit."""
        img = self._image_index[sample_index]
        return self._instances[img] == self._instance[sample_index]

    def scale(self, sample_index: int) -> float:
        return float(self._scale[sample_index])

    def image_index(self, sample_index: int) -> int:
        return int(self._image_index[sample_index])

    def __repr__(self) -> str:
        return (
            f"AttributeDataset({self.path!r}, split={self.split!r}, task={self.task!r}, "
            f"samples={len(self)}, dataset={self.metadata.get('dataset')!r}, "
            f"digits={self.metadata.get('digit_source')!r})"
        )
