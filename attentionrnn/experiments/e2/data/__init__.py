"""CIFAR-10 / CIFAR-100 for experiment E2, read without torchvision, and LTPA's augmentation.

Two sources:

* **the JPEG tar** (CIFAR-10 only): ``cifar10-jpeg.tar`` with members ``train/<class>/NNNN.jpg``
  and ``test/<class>/NNNN.jpg``. It is read straight from the tar (``tarfile`` + PIL, nothing is
  unpacked to disk), decoded once into uint8 arrays ``(N, 32, 32, 3)`` and cached as an ``.npz``
  in the cache folder (``--data-dir``, else ``$ATTENTIONRNN_DATA_DIR``, else
  ``~/.cache/attentionrnn/e2``), so later runs load in about a second. The tar's md5 is checked
  against the expected one; it is computed once and remembered in the cache (``md5.json``, keyed
  by the tar's path, size and modification time).
* **the python-pickle layout** of the CIFAR website: ``cifar-10-batches-py/data_batch_1..5`` and
  ``test_batch`` (``b"data"``, ``b"labels"``), or ``cifar-100-python/train`` and ``test``
  (``b"data"``, ``b"fine_labels"``), in a folder the user gives. torchvision's CIFAR classes
  would read these, but its wheels do not import beside this torch build, so the pickles are read
  here with ``pickle.load(f, encoding="bytes")`` (only load pickles you trust: unpickling runs
  code).

Augmentation (LTPA): random 32×32 crop of the 4-pixel zero-padded image and a horizontal flip,
then normalisation by the per-channel mean / std of the training images. It runs on whole uint8
batches (one gather for crop and flip together) and is a function of a ``torch.Generator``, so a
seeded generator gives the same batches every time.

The package has one module per reader (:mod:`.jpeg_tar`, :mod:`.pickles`) on a common
:mod:`.base`; everything is importable from here.
"""

from __future__ import annotations

import numpy as np
import torch

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e2.data.base import (
    CIFAR10_CLASSES,
    CIFAR10_TAR_MD5,
    DATASETS,
    ENV_CIFAR10_TAR,
    ENV_CIFAR_DIR,
    ImageSet,
    default_cache_dir,
    md5_of,
)
from attentionrnn.experiments.e2.data.jpeg_tar import read_cifar10_tar
from attentionrnn.experiments.e2.data.pickles import read_cifar_pickles

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_TAR_MD5",
    "DATASETS",
    "ENV_CIFAR10_TAR",
    "ENV_CIFAR_DIR",
    "ImageSet",
    "augment",
    "default_cache_dir",
    "md5_of",
    "normalize",
    "read_cifar10_tar",
    "read_cifar_pickles",
    "split_indices",
]


# ------------------------------------------------------------------------------------------
# splits


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices in an order whose every prefix holds the classes in their proportions."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels))
    permuted = labels[perm]
    for c in np.unique(labels):
        where = permuted == c
        rank[where] = (np.arange(where.sum()) + 0.5) / where.sum()
    return perm[np.argsort(rank, kind="stable")]


def split_indices(
    train_y: np.ndarray,
    test_y: np.ndarray,
    val_samples: int,
    train_samples: int | None = None,
    test_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` indices: a stratified, fixed validation split of ``val_samples``
    training images (the same for every training seed), then optional stratified limits."""
    if val_samples >= len(train_y):
        raise UserError(
            f"--val-samples {val_samples} leaves no training images ({len(train_y)} in all)"
        )
    order = stratified_order(train_y, seed=0)
    val, train = order[:val_samples], order[val_samples:]
    if train_samples is not None:
        train = train[:train_samples]
    test = stratified_order(test_y, seed=1)
    if test_samples is not None:
        test = test[:test_samples]
    return np.sort(train), np.sort(val), np.sort(test)


# ------------------------------------------------------------------------------------------
# augmentation


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """LTPA's augmentation of a uint8 batch ``(B, H, W, 3)``: a random ``H×W`` crop of the image
    zero-padded by ``pad`` and a horizontal flip with probability 1/2; returns uint8 ``(B, H, W,
    3)``. Crop and flip are one gather; the result is a function of ``generator``'s state."""
    batch, height, width, channels = images.shape
    padded = images.new_zeros((batch, height + 2 * pad, width + 2 * pad, channels))
    padded[:, pad : pad + height, pad : pad + width] = images
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = offsets[:, :1] + torch.arange(height)
    cols = offsets[:, 1:] + torch.arange(width)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` to float ``(B, 3, H, W)`` in channels_last memory order,
    ``(x / 255 - mean) / std`` per channel."""
    x = (images.float() * (1 / 255) - mean) / std
    return x.permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW: channels_last
