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

One module per reader (:mod:`.digits`, :mod:`.celeba`) on :mod:`.base`; everything is importable
from here.
"""

from __future__ import annotations

from attentionrnn.data.mnist import MnistDigits, load_mnist
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e4.data.base import EditBatch
from attentionrnn.experiments.e4.data.celeba import CELEBA_ATTRIBUTES, CelebAEdits
from attentionrnn.experiments.e4.data.digits import (
    DigitEdits,
    digit_file,
    e4_cache,
    partner_samples,
    render_recolour,
)

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
