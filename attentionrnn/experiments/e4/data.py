"""Data of experiment E4: editing tasks with a known edit region, and CelebA from a folder.

Every task serves :class:`EditBatch` es: an image, its attribute labels, the target labels of the
edit and, where the task knows it, the exact edited image and the region the edit may touch.

* :class:`DigitEdits` — the CPU-scale task: recolour the queried digit ``k`` of an MREF / MDIST
  image (attribute = colour of digit ``k``, 5 classes; query = the digit class). The generator
  composites a digit as ``pixel = background·(1−α) + α·(palette[c] + noise)``, so recolouring to
  ``c'`` (keeping the digit's noise) is ``pixel + α·(palette[c'] − palette[c])``: exact up to
  rounding to uint8 and clipping of saturated colours. ``α`` is the digit's MNIST intensity
  resized as the generator resized it (its MNIST index and box are in the file), so the
  ground-truth edit and its region (the digit's stroke pixels) are known.
* :class:`CelebAEdits` — ``img_align_celeba/`` and ``list_attr_celeba.txt`` from a user folder
  (optionally ``list_eval_partition.txt``); one binary attribute per transformer module, an edit
  flips one of them. No ground truth, so only edit success and KID are measured there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.draw import PALETTE, scaled_alpha
from attentionrnn.data.generate import generate_arrays, write_npz
from attentionrnn.data.mnist import MnistDigits, load_mnist
from attentionrnn.data.regions import box_regions
from attentionrnn.engine.errors import UserError

logger = logging.getLogger("attentionrnn.e4")

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DATASETS",
    "CelebAEdits",
    "DigitEdits",
    "EditBatch",
    "digit_file",
    "e4_cache",
    "load_task",
    "partner_samples",
    "render_recolour",
]

DATASETS = ("mref", "mdist", "celeba")
#: ModularGAN's CelebA attributes (hair colours, gender, smile), each a binary module here.
CELEBA_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Smiling")
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class EditBatch:
    """One batch of edits.

    Attributes:
        x: source images ``(B, 3, H, W)`` in [0, 1].
        query: float query ``(B, Q)`` (one-hot digit class) or ``None``.
        labels: attribute labels of the source ``(B, M)`` int64.
        targets: attribute labels the edit asks for ``(B, M)``.
        changed: ``(B,)`` the attribute each edit changes (the others keep their label).
        truth: the exact edited images ``(B, 3, H, W)`` or ``None``.
        region: bool ``(B, H, W)`` pixels the edit may change (the digit's strokes) or ``None``.
        box: bool ``(B, H, W)`` the edited digit's box or ``None``.
        others: bool ``(B, H, W)`` the stroke pixels of the image's other digits (the edit must
            leave them; a query-blind mask spreads over them too) or ``None``.
        kept_query, kept_labels, kept_valid: another digit of the same image, whose attribute the
            edit must keep — its query ``(B, Q)``, its labels ``(B, M)`` and ``(B,)`` whether the
            image has another digit at all (``--w-keep``); ``None`` where a task's labels already
            hold every attribute (CelebA).
    """

    x: torch.Tensor
    query: torch.Tensor | None
    labels: torch.Tensor
    targets: torch.Tensor
    changed: torch.Tensor
    truth: torch.Tensor | None = None
    region: torch.Tensor | None = None
    box: torch.Tensor | None = None
    others: torch.Tensor | None = None
    kept_query: torch.Tensor | None = None
    kept_labels: torch.Tensor | None = None
    kept_valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)


def render_recolour(
    image: np.ndarray, alpha: np.ndarray, old: np.ndarray, new: np.ndarray
) -> np.ndarray:
    """The image with a digit of opacity ``alpha`` recoloured from colour ``old`` to ``new``.

    Args:
        image: uint8 ``(..., H, W, 3)``.
        alpha: the digit's opacity ``(..., H, W)`` in [0, 1] (zero off the digit).
        old, new: RGB colours ``(..., 3)`` (palette entries).

    Returns:
        uint8 ``(..., H, W, 3)``: ``image + α·(new − old)``, rounded and clipped.
    """
    delta = (np.asarray(new, np.float64) - np.asarray(old, np.float64))[..., None, None, :]
    out = image.astype(np.float64) + alpha[..., None] * delta
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _one_hot(index: np.ndarray, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(index), n).float()


def partner_samples(image_index: np.ndarray) -> np.ndarray:
    """For each sample, another sample of the same image: the next one of that image in file
    order, the last one wrapping round to the first; ``-1`` where the image has one sample."""
    order = np.argsort(image_index, kind="stable")
    ordered = image_index[order]
    first = np.searchsorted(ordered, ordered, side="left")
    count = np.searchsorted(ordered, ordered, side="right") - first
    position = np.arange(len(order)) - first
    nxt = order[first + (position + 1) % np.maximum(count, 1)]
    partner = np.full(len(order), -1, dtype=np.int64)
    partner[order] = np.where(count > 1, nxt, -1)
    return partner


def _other_class(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn class other than each label."""
    return (labels + 1 + rng.integers(n - 1, size=labels.shape)) % n


class DigitEdits:
    """Recolour the queried digit of an MREF / MDIST image (see the module docstring).

    Args:
        path: a ``.npz`` written by the generator (``attentionrnn e1 generate``, or
            :func:`digit_file`); read with :class:`~attentionrnn.data.attribute.E1Data`.
        digits: the MNIST pool the file was generated from (for the digits' opacity).

    Raises:
        UserError: the file is unreadable, or ``digits`` is not the pool it was made from.
    """

    attributes = ("colour",)
    classes = (5,)
    query_channels = 10
    has_truth = True

    def __init__(self, path: str | os.PathLike, digits: MnistDigits) -> None:
        self.data = E1Data(path, task="color")
        meta = self.data.metadata
        pool = meta.get("digit_pool_size")
        if meta.get("digit_source") != digits.source or (pool is not None and pool != len(digits)):
            raise UserError(
                f"{path}: made from the digits {meta.get('digit_source')!r} ({pool} digits), "
                f"but the digits given are {digits.source!r} ({len(digits)}); pass the MNIST "
                "folder the file was generated from (--mnist)"
            )
        with np.load(self.data.path, allow_pickle=False) as z:  # the one array E1Data leaves out
            if "mnist_index" not in z.files:
                raise UserError(f"{path}: no 'mnist_index' array; generate the file again")
            self.mnist_index = z["mnist_index"].astype(np.int64)
        self.digits = digits
        self.palette = PALETTE.astype(np.float64)
        self.partner = partner_samples(self.data.image_index)
        self.name = self.data.dataset or "mref"
        self.identity = {
            "file": Path(self.data.path).name,
            "samples": len(self.data),
            "digits": digits.source,
        }

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.data.images.shape[1:3])  # type: ignore[return-value]

    def indices(self, split: str) -> np.ndarray:
        return self.data.indices(split)

    def draw_targets(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Target labels ``(B, 1)``: another colour for each queried digit."""
        return _other_class(self.data.color[idx], 5, rng)[:, None]

    def alpha(self, idx: np.ndarray) -> np.ndarray:
        """The queried digits' opacity ``(B, H, W)`` in [0, 1], as the generator composited it."""
        out = np.zeros((len(idx), *self.image_size), dtype=np.float64)
        for b, s in enumerate(idx):
            x0, y0, x1, _ = self.data.box[s]
            a = scaled_alpha(self.digits.images[self.mnist_index[s]], int(x1 - x0))
            out[b, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
        return out * self.data.stroke_masks(idx)  # strokes never overlap: only this digit's

    def batch(self, idx: np.ndarray, targets: np.ndarray) -> EditBatch:
        d = self.data
        images = d.images[d.image_index[idx]]
        truth = render_recolour(
            images, self.alpha(idx), self.palette[d.color[idx]], self.palette[targets[:, 0]]
        )

        def tensor(rgb: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255

        partner = self.partner[idx]
        kept = np.where(partner >= 0, partner, idx)  # where there is none: itself, not counted

        return EditBatch(
            x=tensor(images),
            query=_one_hot(d.digit[idx], 10),
            labels=torch.from_numpy(d.color[idx][:, None]),
            targets=torch.from_numpy(np.asarray(targets, np.int64)),
            changed=torch.zeros(len(idx), dtype=torch.int64),
            truth=tensor(truth),
            region=torch.from_numpy(d.stroke_masks(idx)),
            box=box_regions(torch.from_numpy(d.box[idx]), self.image_size),
            others=d.region_labels(idx) == 2,
            kept_query=_one_hot(d.digit[kept], 10),
            kept_labels=torch.from_numpy(d.color[kept][:, None]),
            kept_valid=torch.from_numpy(partner >= 0),
        )


def e4_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """E4's cache folder: ``cache_dir``, else ``$ATTENTIONRNN_DATA_DIR``, else
    ``~/.cache/attentionrnn``; then ``e4``."""
    root = (
        cache_dir
        or os.environ.get("ATTENTIONRNN_DATA_DIR")
        or (Path.home() / ".cache" / "attentionrnn")
    )
    return Path(root).expanduser() / "e4"


def digit_file(
    dataset: str,
    images: int,
    seed: int,
    canvas: int,
    digits: MnistDigits,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The generated MREF / MDIST file of these arguments, made (deterministically) if missing."""
    name = f"{dataset}_{images}_c{canvas}_seed{seed}_{digits.source}{len(digits)}.npz"
    path = e4_cache(cache_dir) / name
    if not path.is_file():
        logger.info("generating %s (%d images, %d px)", path, images, canvas)
        arrays = generate_arrays(dataset, images, seed, digits, workers=1, canvas=canvas)
        write_npz(path, arrays)
    return path


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


def load_task(
    dataset: str,
    *,
    images: int = 3000,
    seed: int = 0,
    canvas: int = 64,
    mnist: str | None = None,
    data_dir: str | None = None,
    data: str | None = None,
    celeba_dir: str | None = None,
    max_images: int | None = None,
    digits: MnistDigits | None = None,
) -> DigitEdits | CelebAEdits:
    """The editing task ``dataset`` (``mref``, ``mdist`` or ``celeba``).

    For the digit tasks ``data`` names an existing generated file; otherwise one is generated
    into the cache (``images`` images of ``canvas`` px from ``seed``). ``digits`` defaults to
    :func:`~attentionrnn.data.mnist.load_mnist` of ``mnist``.
    """
    if dataset not in DATASETS:
        raise UserError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if dataset == "celeba":
        return CelebAEdits(celeba_dir, image_size=canvas, max_images=max_images)
    digits = digits or load_mnist(mnist)
    path = data or digit_file(dataset, images, seed, canvas, digits, data_dir)
    task = DigitEdits(path, digits)
    if task.name != dataset:
        raise UserError(f"{path} holds {task.name}, not {dataset}")
    return task
