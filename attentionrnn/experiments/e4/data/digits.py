"""The CPU-scale E4 task: recolour the queried digit of an MREF / MDIST image (:class:`DigitEdits`),
with the exact edit and its region rendered from the generator's own record of each digit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.draw import PALETTE, scaled_alpha
from attentionrnn.data.generate import generate_arrays, write_npz
from attentionrnn.data.mnist import MnistDigits
from attentionrnn.data.regions import box_regions
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e4.data.base import EditBatch

logger = logging.getLogger("attentionrnn.e4")

__all__ = ["DigitEdits", "digit_file", "e4_cache", "partner_samples", "render_recolour"]


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
        self.data_file = self.data.path  # its sha256 is the run's data hash
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
