"""The JPEG tar of CIFAR-10 (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``), read straight
from the tar, decoded once and cached as an ``.npz``; the tar's md5 is checked."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e2.data.base import (
    CIFAR10_CLASSES,
    CIFAR10_TAR_MD5,
    ImageSet,
    _atomic_bytes,
    default_cache_dir,
    md5_of,
)

logger = logging.getLogger("attentionrnn.e2.data")

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
