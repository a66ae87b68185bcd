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
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attentionrnn.engine.errors import UserError

logger = logging.getLogger("attentionrnn.e2.data")

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_TAR_MD5",
    "DATASETS",
    "ImageSet",
    "augment",
    "default_cache_dir",
    "load_dataset",
    "md5_of",
    "normalize",
    "read_cifar10_tar",
    "read_cifar_pickles",
    "split_indices",
]

DATASETS = ("cifar10", "cifar100")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: md5 of the offline ``cifar10-jpeg.tar`` (60,000 JPEGs).
CIFAR10_TAR_MD5 = "64611e3b28a78f451cbe39adc3e6df43"
ENV_CIFAR10_TAR = "ATTENTIONRNN_CIFAR10_TAR"
ENV_CIFAR_DIR = "ATTENTIONRNN_CIFAR_DIR"
ENV_DATA_DIR = "ATTENTIONRNN_DATA_DIR"
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


@dataclass
class ImageSet:
    """The images of one dataset as uint8 ``(N, 32, 32, 3)`` arrays with int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str  # "jpeg-tar" or "pickle"
    origin: str  # the file or folder read
    md5: str | None = None  # of the tar

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the training images, in [0, 1] units."""
        total = np.zeros(3)
        squares = np.zeros(3)
        for start in range(0, len(self.train_x), 5000):
            chunk = self.train_x[start : start + 5000].reshape(-1, 3).astype(np.float64)
            total += chunk.sum(0)
            squares += (chunk**2).sum(0)
        n = max(len(self.train_x) * self.train_x.shape[1] * self.train_x.shape[2], 1)
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 1e-12))
        return (mean / 255).astype(np.float32), (std / 255).astype(np.float32)


# ------------------------------------------------------------------------------------------
# cache folder and md5


def default_cache_dir() -> Path:
    """``$ATTENTIONRNN_DATA_DIR``, else ``$XDG_CACHE_HOME/attentionrnn/e2`` (``~/.cache``)."""
    root = os.environ.get(ENV_DATA_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attentionrnn" / "e2"


def _atomic_bytes(path: Path, write) -> None:
    from attentionrnn.engine.state import clean_stale_temporaries

    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)  # what a writer killed mid-write left
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def md5_of(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """md5 of a file, remembered in ``cache_dir/md5.json`` (keyed by path, size and mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = str(path)
    memo_path = Path(cache_dir) / "md5.json" if cache_dir is not None else None
    memo: dict[str, dict] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    entry = memo.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["md5"])
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    md5 = digest.hexdigest()
    if memo_path is not None:
        memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
        text = json.dumps(memo, indent=1).encode()
        _atomic_bytes(memo_path, lambda f: f.write(text))
    return md5


# ------------------------------------------------------------------------------------------
# the JPEG tar


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises several kinds for a broken image
        raise UserError(f"{name}: not a readable image ({exc})") from exc
    if arr.shape != (32, 32, 3):
        raise UserError(f"{name}: expected a 32x32 image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def _decode_members(
    tar_path: Path, tar: tarfile.TarFile, found: dict[str, list], progress: bool
) -> None:
    """Decode the tar's ``SPLIT/CLASS/NAME.jpg`` members into ``found[SPLIT]``; a member cut
    short is a :class:`UserError`."""
    from tqdm import tqdm

    try:
        for member in tqdm(tar, desc="decode", unit="img", disable=not progress, leave=False):
            if not member.isfile():
                continue
            parts = member.name.replace("\\", "/").split("/")
            if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            split, label = parts[-3], parts[-2]
            if split not in found:
                continue
            f = tar.extractfile(member)
            if f is not None:
                found[split].append((label, parts[-1], _decode(f.read(), member.name)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{tar_path}: truncated or corrupt tar ({exc}); download it again") from exc


def _check_tar_end(tar_path: Path, tar: tarfile.TarFile) -> None:
    """Raise :class:`UserError` unless the tar read to its end-of-archive marker (zero blocks):
    ``tarfile`` stops quietly at a header cut short, so a truncated tar would otherwise give a
    part of its images, md5 check or not."""
    size = tar_path.stat().st_size
    with open(tar_path, "rb") as f:
        if f.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
            return  # compressed: the decompressor reports a cut stream itself
        f.seek(tar.offset)
        end = f.read(tarfile.BLOCKSIZE)
    if tar.offset + tarfile.BLOCKSIZE > size or end.strip(b"\0"):
        raise UserError(
            f"{tar_path}: truncated tar (no end-of-archive after {tar.offset:,} of {size:,} "
            "bytes); download it again"
        )


def read_cifar10_tar(
    tar_path: str | os.PathLike,
    *,
    md5: str | None = CIFAR10_TAR_MD5,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> ImageSet:
    """CIFAR-10 from the JPEG tar, decoded once and then loaded from the cache.

    Args:
        tar_path: the tar (members ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``).
        md5: the expected md5 of the tar; ``None`` or ``""`` skips the check.
        cache_dir: where the decoded ``.npz`` and ``md5.json`` live (default
            :func:`default_cache_dir`).
        progress: a progress bar while decoding.

    Raises:
        UserError: no such file, not a tar, md5 mismatch, no ``train/`` or ``test/`` images, or an
            image that is not a readable 32×32 picture.
    """
    tar_path = Path(tar_path).expanduser()
    if not tar_path.is_file():
        raise UserError(f"CIFAR-10 tar {tar_path}: no such file")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    actual = md5_of(tar_path, cache)
    if md5 and actual != md5.lower():
        raise UserError(
            f"{tar_path}: md5 {actual} does not match the expected {md5} (a truncated or another "
            "file?); pass the right tar, or --cifar10-md5 '' to skip the check"
        )
    cached = cache / f"cifar10-jpeg-{actual}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return ImageSet(
                arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                tuple(str(c) for c in arrays["classes"]), "jpeg-tar", str(tar_path), actual,
            )  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("cache %s unreadable (%s); decoding the tar again", cached, exc)

    logger.info("decoding %s (once; cached in %s)", tar_path, cached)
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{tar_path}: not a readable tar file ({exc})") from exc
    with tar:
        _decode_members(tar_path, tar, found, progress)
        _check_tar_end(tar_path, tar)
    for split, items in found.items():
        if not items:
            raise UserError(f"{tar_path}: no {split}/<class>/*.jpg images in the tar")
    names = sorted({label for items in found.values() for label, _, _ in items})
    classes = CIFAR10_CLASSES if set(names) <= set(CIFAR10_CLASSES) else tuple(names)
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, np.ndarray] = {}
    for split, items in found.items():
        items.sort(key=lambda t: (index[t[0]], t[1]))
        arrays[f"{split}_x"] = np.stack([img for _, _, img in items])
        arrays[f"{split}_y"] = np.array([index[label] for label, _, _ in items], dtype=np.int64)
    arrays["classes"] = np.array(classes)
    _atomic_bytes(cached, lambda f: np.savez(f, **arrays))
    return ImageSet(
        arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], classes,
        "jpeg-tar", str(tar_path), actual,
    )  # fmt: skip


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


def load_dataset(
    dataset: str,
    *,
    cifar10_tar: str | None = None,
    cifar_dir: str | None = None,
    md5: str | None = CIFAR10_TAR_MD5,
    cache_dir: str | None = None,
    progress: bool = False,
) -> ImageSet:
    """The run's images: the pickle folder if given, else (CIFAR-10) the JPEG tar.

    Order: ``cifar_dir`` (or ``$ATTENTIONRNN_CIFAR_DIR``), then for CIFAR-10 ``cifar10_tar``
    (or ``$ATTENTIONRNN_CIFAR10_TAR``).
    """
    if dataset not in DATASETS:
        raise UserError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    folder = cifar_dir or os.environ.get(ENV_CIFAR_DIR)
    if folder:
        return read_cifar_pickles(folder, dataset)
    if dataset == "cifar100":
        raise UserError(
            "CIFAR-100 needs --cifar-dir DIR (or $ATTENTIONRNN_CIFAR_DIR): a folder in the "
            "cifar-100-python layout (train, test)"
        )
    tar = cifar10_tar or os.environ.get(ENV_CIFAR10_TAR)
    if not tar:
        raise UserError(
            "CIFAR-10 needs its data: --cifar10-tar PATH (or $ATTENTIONRNN_CIFAR10_TAR) for the "
            "JPEG tar, or --cifar-dir DIR for the cifar-10-batches-py pickles"
        )
    return read_cifar10_tar(tar, md5=md5, cache_dir=cache_dir, progress=progress)


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
