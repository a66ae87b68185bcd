"""The common base of E2's readers: the names, the :class:`ImageSet` every reader returns, the
cache folder and the remembered md5 of a file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attentionrnn.data.cache import cache_dir
from attentionrnn.engine.state import content_sha256

DATASETS = ("cifar10", "cifar100")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: md5 of the offline ``cifar10-jpeg.tar`` (60,000 JPEGs).
CIFAR10_TAR_MD5 = "64611e3b28a78f451cbe39adc3e6df43"
ENV_CIFAR10_TAR = "ATTENTIONRNN_CIFAR10_TAR"
ENV_CIFAR_DIR = "ATTENTIONRNN_CIFAR_DIR"


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

    def content_sha256(self) -> str:
        """sha256 of the images and labels of both splits, as decoded (the run's data hash,
        whichever files they came from)."""
        return content_sha256(self.train_x, self.train_y, self.test_x, self.test_y,
                              list(self.classes))  # fmt: skip

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
    return cache_dir("e2")


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
