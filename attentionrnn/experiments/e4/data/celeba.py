"""CelebA for E4, read from a folder the user gives (:class:`CelebAEdits`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e4.data.base import EditBatch

__all__ = ["CELEBA_ATTRIBUTES", "CelebAEdits"]

#: ModularGAN's CelebA attributes (hair colours, gender, smile), each a binary module here.
CELEBA_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Smiling")
#: ``list_eval_partition.txt``'s code of each split.
_SPLITS = {"train": 0, "val": 1, "test": 2}


class CelebAEdits:
    """CelebA from a folder: ``img_align_celeba/*.jpg`` and ``list_attr_celeba.txt``.

    Images are centre-cropped to a square and resized to ``image_size`` once, then kept in memory
    as uint8. The split is ``list_eval_partition.txt`` where present, else the official index
    ranges scaled to the images read (the last 10 % test, the 10 % before validation).

    Args:
        folder: the CelebA folder.
        attributes: attribute names of ``list_attr_celeba.txt`` (one binary module each).
        image_size: side of the square images.
        max_images: read only the first images (quick runs).

    Raises:
        UserError: the folder, the image folder, the attribute file, an attribute or an image is
            missing or unreadable (the message names it).
    """

    query_channels = None
    has_truth = False
    data_file = None  # a folder of images: no one file to hash

    def __init__(
        self,
        folder: str | os.PathLike | None,
        attributes: tuple[str, ...] = CELEBA_ATTRIBUTES,
        image_size: int = 64,
        max_images: int | None = None,
    ) -> None:
        folder = folder or os.environ.get("ATTENTIONRNN_CELEBA_DIR")
        if not folder:
            raise UserError("CelebA needs its folder: pass --celeba-dir DIR (or set "
                            "ATTENTIONRNN_CELEBA_DIR)")  # fmt: skip
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise UserError(f"{root}: no such CelebA folder")
        image_dir, attr_file = root / "img_align_celeba", root / "list_attr_celeba.txt"
        for need in (image_dir, attr_file):
            if not need.exists():
                raise UserError(f"{root}: missing {need.name} (CelebA needs img_align_celeba/ "
                                "and list_attr_celeba.txt)")  # fmt: skip
        lines = attr_file.read_text().splitlines()
        try:
            names = lines[1].split()
            rows = [ln.split() for ln in lines[2:] if ln.strip()]
        except IndexError:
            raise UserError(f"{attr_file}: not a CelebA attribute file (too short)") from None
        missing = [a for a in attributes if a not in names]
        if missing:
            raise UserError(f"{attr_file}: no attribute(s) {missing}")
        rows = rows[:max_images]
        if not rows:
            raise UserError(f"{attr_file}: lists no images")
        columns = [names.index(a) + 1 for a in attributes]
        try:
            labels = np.array([[int(r[c]) > 0 for c in columns] for r in rows], dtype=np.int64)
        except (IndexError, ValueError):
            raise UserError(f"{attr_file}: a row does not have one value per attribute") from None
        self.files = [r[0] for r in rows]
        self.labels = labels
        self.images = np.stack([_read_face(image_dir / f, image_size) for f in self.files])
        self.split = self._split(root)
        self.attributes = tuple(attributes)
        self.classes = (2,) * len(attributes)
        self.name = "celeba"
        self.identity = {"images": len(self.files), "attributes": list(attributes),
                         "size": image_size}  # fmt: skip

    def _split(self, root: Path) -> np.ndarray:
        partition = root / "list_eval_partition.txt"
        if partition.is_file():
            table = dict(ln.split()[:2] for ln in partition.read_text().splitlines() if ln.strip())
            return np.array([int(table.get(f, 0)) for f in self.files], dtype=np.int64)
        n = len(self.files)
        split = np.zeros(n, dtype=np.int64)
        split[int(n * 0.8) :] = 1
        split[int(n * 0.9) :] = 2
        return split

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])  # type: ignore[return-value]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == _SPLITS[split])

    def draw_targets(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Target labels ``(B, M)``: one attribute per image flipped."""
        targets = self.labels[idx].copy()
        flip = rng.integers(len(self.attributes), size=len(idx))
        targets[np.arange(len(idx)), flip] ^= 1
        return targets

    def batch(self, idx: np.ndarray, targets: np.ndarray) -> EditBatch:
        labels = self.labels[idx]
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float() / 255
        changed = np.argmax(labels != targets, axis=1)
        return EditBatch(
            x=x.contiguous(), query=None, labels=torch.from_numpy(labels),
            targets=torch.from_numpy(np.asarray(targets, np.int64)),
            changed=torch.from_numpy(changed.astype(np.int64)),
        )  # fmt: skip


def _read_face(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            return np.asarray(img.crop(box).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: image listed in list_attr_celeba.txt is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
