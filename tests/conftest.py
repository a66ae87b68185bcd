"""Shared fixtures: a synthetic digit pool and small datasets made by the real generator."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from attentionrnn.data import mnist as mnist_mod
from attentionrnn.data.generate import generate_arrays, write_npz
from attentionrnn.data.mnist import MnistDigits


def synthetic_digits(per_class: int = 3) -> MnistDigits:
    """28×28 'digits': a class-specific bar pattern with a 255 core and softer edges."""
    rng = np.random.default_rng(123)
    images, labels = [], []
    for c in range(10):
        for _ in range(per_class):
            img = np.zeros((28, 28), dtype=np.float64)
            y0 = 4 + int(rng.integers(0, 3))
            img[y0 : y0 + 20, 10:18] = 120.0  # soft body
            img[y0 + 2 : y0 + 18, 12:16] = 255.0  # opaque core, >= 2 px after 0.5x scaling
            if c % 2:
                img[6 + c : 10 + c, 6:22] = 255.0  # class-specific cross-bar
            images.append(img.astype(np.uint8))
            labels.append(c)
    return MnistDigits(np.stack(images), np.array(labels, dtype=np.int64), "synthetic")


@pytest.fixture(scope="session")
def digits() -> MnistDigits:
    return synthetic_digits()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, digits) -> Path:
    """A small MREF file (8 images, ~45 samples) written by the generator itself."""
    arrays = generate_arrays("mref", 8, seed=0, digits=digits, workers=1)
    return write_npz(tmp_path_factory.mktemp("data") / "tiny.npz", arrays)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture()
def idx_folder(tmp_path, monkeypatch, digits) -> Path:
    """A folder with the four IDX files of a synthetic pool; checksums patched to match."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    contents = {
        "train-images-idx3-ubyte": _idx_bytes(digits.images[:20]),
        "train-labels-idx1-ubyte": _idx_bytes(digits.labels[:20]),
        "t10k-images-idx3-ubyte": _idx_bytes(digits.images[20:]),
        "t10k-labels-idx1-ubyte": _idx_bytes(digits.labels[20:]),
    }
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}
    monkeypatch.setattr(mnist_mod, "MNIST_FILES", md5)
    for i, (name, data) in enumerate(contents.items()):
        if i % 2:  # mix raw and gzipped files
            (folder / name).write_bytes(data)
        else:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
    return folder


@pytest.fixture()
def e4_synthetic(monkeypatch, tmp_path):
    """E4 in one thread, its data cache under ``tmp_path`` and the synthetic pool where it would
    read MNIST (the CLI reads it: no MNIST files needed)."""
    import torch

    from attentionrnn.experiments.e4 import data as e4data

    torch.set_num_threads(1)
    monkeypatch.setenv("ATTENTIONRNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(e4data, "load_mnist", lambda folder=None: synthetic_digits())


@pytest.fixture(scope="session")
def mref48(tmp_path_factory) -> Path:
    """An MREF file of 10 images of 48 px from the synthetic pool (E4's tests)."""
    arrays = generate_arrays("mref", 10, seed=0, digits=synthetic_digits(), workers=1, canvas=48)
    return write_npz(tmp_path_factory.mktemp("e4") / "mref48.npz", arrays)
