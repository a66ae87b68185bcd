"""The one reader of the MREF / MDIST / MBG ``.npz`` files (written by ``attentionrnn.data``).

:class:`E1Data` loads a file once and serves whole batches by sample index (one fancy index per
batch: what training and evaluation use). :class:`AttributeDataset` is the per-item
``torch.utils.data.Dataset`` view of one split of the same reader, for users who want a
``DataLoader``. Both read the schema through :class:`E1Data`, so they cannot diverge.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from attentionrnn.data.regions import box_regions
from attentionrnn.engine.errors import UserError

__all__ = ["SPLITS", "TASKS", "AttributeDataset", "E1Data"]

SPLITS = {"train": 0, "val": 1, "test": 2}
#: task -> (number of query values, number of classes). ``color``: query a digit class, predict its
#: colour; ``digit`` (inverse attribute prediction): query a colour, predict the digit class.
TASKS: dict[str, tuple[int, int]] = {"color": (10, 5), "digit": (5, 10)}
_ARRAYS = ("images", "instances", "image_index", "query", "color", "scale", "box", "instance")
_REQUIRED = (*_ARRAYS, "split")


class E1Data:
    """The arrays of one dataset file, with batched access by sample index.

    Images stay uint8 and are shared by the samples of an image. For the inverse task
    (``task="digit"``) a sample whose colour is shared by another digit of its image has no
    unique answer and is left out of every split.

    Args:
        path: a ``.npz`` written by ``attentionrnn e1 generate``.
        task: ``"color"`` or ``"digit"``.

    Raises:
        UserError: the file is missing, not a zip / ``.npz``, truncated, or lacks the schema's
            arrays (the message names the file and the problem).
    """

    def __init__(self, path: str | os.PathLike, task: str = "color") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such dataset file")
        if not zipfile.is_zipfile(self.path):
            raise UserError(
                f"{self.path}: not a complete .npz (zip) file (truncated, or another format); "
                "make one with 'attentionrnn e1 generate'"
            )
        try:
            with np.load(self.path, allow_pickle=False) as z:
                missing = [k for k in _REQUIRED if k not in z.files]
                if missing:
                    raise UserError(
                        f"{self.path}: not an MREF/MDIST/MBG dataset file (missing arrays "
                        f"{missing}); make one with 'attentionrnn e1 generate'"
                    )
                arrays = {k: z[k] for k in _REQUIRED}
                meta = {k: z[k] for k in z.files if k not in _REQUIRED}
        except UserError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UserError(
                f"{self.path}: not a readable dataset file ({type(exc).__name__}: {exc}); "
                "it may be truncated: generate it again"
            ) from exc
        self.images = arrays["images"]
        self.instances = arrays["instances"]
        self.image_index = arrays["image_index"].astype(np.int64)
        self.digit = arrays["query"].astype(np.int64)
        self.color = arrays["color"].astype(np.int64)
        self.scale = arrays["scale"].astype(np.float64)
        self.box = arrays["box"].astype(np.int64)
        self.instance = arrays["instance"].astype(np.int64)
        self.split = arrays["split"]
        self._check_schema()
        self.metadata: dict[str, Any] = {
            k: (v.item() if v.ndim == 0 else v.tolist()) for k, v in meta.items()
        }
        self.dataset: str | None = self.metadata.get("dataset")
        self.digit_source: str = self.metadata.get("digit_source", "unknown")
        self.task = task
        self.num_queries, self.num_classes = TASKS[task]
        if task == "color":
            self.query, self.target = self.digit, self.color
        else:
            self.query, self.target = self.color, self.digit
        self.keep = np.ones(len(self.split), dtype=bool)
        if task == "digit":
            self.keep &= ~self.shared_color()

    def _check_schema(self) -> None:
        """Raise :class:`UserError` where the arrays do not fit together (a file edited or
        written by something else): per-sample arrays of one length, indices into the images."""
        n, images = len(self.split), len(self.images)
        per_sample = {"image_index": self.image_index, "query": self.digit, "color": self.color,
                      "scale": self.scale, "box": self.box, "instance": self.instance}  # fmt: skip
        checks = [(k, len(v) == n) for k, v in per_sample.items()]
        checks.append(("images", self.images.ndim == 4 and len(self.instances) == images))
        inside = n == 0 or 0 <= self.image_index.min() <= self.image_index.max() < images
        checks.append(("image_index", bool(inside)))
        checks.append(("split", bool(np.isin(self.split, list(SPLITS.values())).all())))
        problem = next((k for k, ok in checks if not ok), None)
        if problem is not None:
            raise UserError(
                f"{self.path}: inconsistent dataset file (array {problem!r} does not fit the "
                "others); make it again with 'attentionrnn e1 generate'"
            )

    def shared_color(self) -> np.ndarray:
        """True for samples whose colour appears on another digit of the same image."""
        key = self.image_index * 5 + self.color
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return counts[inverse.reshape(-1)] > 1

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of ``split`` (``"train"``, ``"val"``, ``"test"`` or ``"all"``)."""
        if split == "all":
            return np.flatnonzero(self.keep)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
        return np.flatnonzero((self.split == SPLITS[split]) & self.keep)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, 100, 100)`` float in [0, 1], queries ``(B,)`` and targets ``(B,)``.

        The stored images are HWC, so the batch comes out in channels_last memory order.
        """
        img = torch.from_numpy(self.images[self.image_index[idx]]).permute(0, 3, 1, 2)
        img = img.float().div_(255)
        return img, torch.from_numpy(self.query[idx]), torch.from_numpy(self.target[idx])

    def regions(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean image regions ``(B, 100, 100)`` of the queried digit: its box and strokes."""
        size = self.images.shape[1:3]
        boxes = box_regions(torch.from_numpy(self.box[idx]), size)
        return boxes, torch.from_numpy(self.stroke_masks(idx))

    def region_labels(self, idx: np.ndarray) -> torch.Tensor:
        """Int ``(B, 100, 100)``: 1 on the queried digit's strokes, 2 on the other digits' strokes,
        0 on the background (:mod:`~attentionrnn.experiments.e1.mask_stats`)."""
        inst = self.instances[self.image_index[idx]]
        labels = np.where(inst == self.instance[idx][:, None, None], 1, np.where(inst > 0, 2, 0))
        return torch.from_numpy(labels.astype(np.int64))

    def stroke_masks(self, idx: np.ndarray) -> np.ndarray:
        """Bool ``(B, 100, 100)``: the stroke pixels of each sample's queried digit."""
        return self.instances[self.image_index[idx]] == self.instance[idx][:, None, None]

    def __len__(self) -> int:
        return len(self.split)

    def __repr__(self) -> str:
        return (
            f"E1Data({self.path!r}, task={self.task!r}, samples={len(self)}, "
            f"dataset={self.dataset!r}, digits={self.digit_source!r})"
        )


class AttributeDataset(Dataset):
    """(image, query) → attribute samples of one split, as a ``torch.utils.data.Dataset``.

    ``dataset[k]`` is ``(image, query, target, sample_index)``: ``image`` a float32 tensor
    (3, 100, 100) in [0, 1]; for ``task="color"`` the query is the digit class (0–9) and the
    target its colour (0–4); for ``task="digit"`` the query is a colour and the target the digit
    class (ambiguous samples left out). ``sample_index`` indexes the samples of the whole file.

    Args:
        path: the ``.npz`` written by ``attentionrnn e1 generate`` (or an :class:`E1Data`).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        task: ``"color"`` or ``"digit"``.
    """

    def __init__(
        self, path: str | os.PathLike | E1Data, split: str = "train", task: str = "color"
    ) -> None:
        self.data = path if isinstance(path, E1Data) else E1Data(path, task)
        self.split = split
        self.indices = self.data.indices(split)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.data.metadata

    @property
    def num_queries(self) -> int:
        return self.data.num_queries

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int, int]:
        s = int(self.indices[k])
        image, query, target = self.data.batch(np.array([s]))
        return image[0].contiguous(), int(query[0]), int(target[0]), s

    def box(self, sample_index: int) -> tuple[int, int, int, int]:
        """The queried digit's box (x0, y0, x1, y1), end exclusive, in pixels."""
        x0, y0, x1, y1 = (int(v) for v in self.data.box[sample_index])
        return x0, y0, x1, y1

    def stroke_mask(self, sample_index: int) -> np.ndarray:
        """Bool (100, 100): the stroke pixels of the queried digit."""
        return self.data.stroke_masks(np.array([sample_index]))[0]

    def scale(self, sample_index: int) -> float:
        return float(self.data.scale[sample_index])

    def image_index(self, sample_index: int) -> int:
        return int(self.data.image_index[sample_index])

    def __repr__(self) -> str:
        return (
            f"AttributeDataset({self.data.path!r}, split={self.split!r}, "
            f"task={self.data.task!r}, samples={len(self)}, "
            f"dataset={self.data.dataset!r}, digits={self.data.digit_source!r})"
        )
