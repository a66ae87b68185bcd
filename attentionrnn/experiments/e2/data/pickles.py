"""The python-pickle layout of the CIFAR website (``cifar-10-batches-py``, ``cifar-100-python``)
in a folder the user gives (only load pickles you trust: unpickling runs code)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e2.data.base import CIFAR10_CLASSES, DATASETS, ImageSet

_PICKLE_LAYOUT = {
    # dataset: (folder, train files, test files, label key, meta file, names key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "batches.meta",
        b"label_names",
    ),
    "cifar100": (
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        "meta",
        b"fine_label_names",
    ),  # fmt: skip
}


# ------------------------------------------------------------------------------------------
# the python-pickle layout


def _unpickle(path: Path) -> dict:
    # torchvision cannot be imported beside this torch build, so the CIFAR pickles are read here.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CIFAR pickle ({exc})") from exc


def read_cifar_pickles(folder: str | os.PathLike, dataset: str = "cifar10") -> ImageSet:
    """CIFAR-10 or CIFAR-100 from the python-pickle layout.

    ``folder`` is ``cifar-10-batches-py`` / ``cifar-100-python`` itself or the folder holding it.

    Raises:
        UserError: the folder or one of its files is missing or unreadable.
    """
    if dataset not in _PICKLE_LAYOUT:
        raise UserError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    sub, train_files, test_files, label_key, meta_file, names_key = _PICKLE_LAYOUT[dataset]
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--cifar-dir {root}: no such folder")
    if (root / sub).is_dir():
        root = root / sub
    for name in (*train_files, *test_files):
        if not (root / name).is_file():
            raise UserError(
                f"{root} lacks {name}: expected the {dataset} python layout ({sub}/"
                f"{', '.join((*train_files, *test_files))})"
            )

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            d = _unpickle(root / name)
            if b"data" not in d or label_key not in d:
                raise UserError(f"{root / name} lacks b'data' or {label_key!r}")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise UserError(f"{root / name}: b'data' has shape {data.shape}, not (N, 3072)")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    count = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    classes: tuple[str, ...] = tuple(str(i) for i in range(max(count, 10)))
    if dataset == "cifar10":
        classes = CIFAR10_CLASSES
    if (root / meta_file).is_file():
        names = _unpickle(root / meta_file).get(names_key)
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if count > len(classes):
        raise UserError(f"{root}: label {count - 1} but only {len(classes)} class names")
    return ImageSet(train_x, train_y, test_x, test_y, classes, "pickle", str(root))
