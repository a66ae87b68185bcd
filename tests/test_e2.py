"""Experiment E2 (CIFAR classification with LTPA's VGG-att3): data readers, model, training, CLI.

Everything runs on tiny data made here (a tar of a few JPEGs, a few pickled images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attentionrnn.cli import main
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e2.data import (
    CIFAR10_CLASSES,
    augment,
    md5_of,
    normalize,
    read_cifar10_tar,
    read_cifar_pickles,
    split_indices,
)
from attentionrnn.experiments.e2.model import E2_ATTENTIONS, E2_ROWS, AttnVGG, brnn_block_size
from attentionrnn.experiments.e2.train import E2Config, read_images
from attentionrnn.layers.fused import scan_products

TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("ATTENTIONRNN_CIFAR_DIR", "ATTENTIONRNN_CIFAR10_TAR", "ATTENTIONRNN_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)


def _image(rng: np.random.Generator, c: int) -> np.ndarray:
    img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
    img[4 + c : 14 + c, 6:26, c % 3] = 230  # a class-dependent bar
    return img


@pytest.fixture(scope="module")
def tiny_tar(tmp_path_factory) -> tuple[Path, str]:
    """A tar in the cifar10-jpeg layout: 4 train and 2 test JPEGs per class; and its md5."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tar")
    rng = np.random.default_rng(0)
    path = root / "tiny.tar"
    with tarfile.open(path, "w") as tar:
        for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            for c, name in enumerate(CIFAR10_CLASSES):
                for i in range(n):
                    f = root / f"{split}_{name}_{i}.jpg"
                    Image.fromarray(_image(rng, c)).save(f, quality=95)
                    tar.add(f, arcname=f"{split}/{name}/{i:04d}.jpg")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _tiny_model(attention: str, width: float = 0.125) -> AttnVGG:
    return AttnVGG(attention, width=width, depth=1, attention_hidden=4)


# ------------------------------------------------------------------------------------------
# model


@pytest.mark.parametrize("attention", E2_ATTENTIONS)
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_model_shapes_and_masks(attention, width):
    torch.manual_seed(0)
    model = _tiny_model(attention, width).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, masks = model(x, return_masks=True)
    assert logits.shape == (3, 10)
    assert model(x).shape == (3, 10)
    if attention == "none":
        assert masks == ()
        return
    assert [tuple(m.shape) for m in masks] == [(3, 1, 32, 32), (3, 1, 16, 16), (3, 1, 8, 8)]
    for m in masks:  # softmax over the positions
        assert torch.allclose(m.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-4)
        assert (m >= 0).all()


def test_model_vgg16_widths_and_brnn_grid():
    model = AttnVGG("brnn", num_classes=100, width=1.0)
    assert model.channels == (64, 128, 256, 512, 512, 512)
    assert model.g_dim == 512 and model.classify.in_features == 3 * 512
    assert [e.block_size for e in model.estimators] == [4, 2, 1]
    assert all(-(-s // brnn_block_size(s)) <= 8 for s in (32, 16, 8))
    assert isinstance(model.projectors[0], torch.nn.Conv2d)  # 256 -> 512
    with pytest.raises(ValueError):
        AttnVGG("pan")  # not a registered attention method
    # a general method of the registry is an E2 estimator too (one registration, every experiment)
    assert "san" in E2_ROWS and AttnVGG("san", width=0.125, depth=1).estimators


@pytest.mark.parametrize("attention", E2_ATTENTIONS)
def test_one_training_step(attention):
    torch.manual_seed(0)
    model = _tiny_model(attention).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)  # every parameter (estimators included) gets a gradient


# ------------------------------------------------------------------------------------------
# data


def test_tar_reader_cache_and_md5(tiny_tar, tmp_path):
    path, md5 = tiny_tar
    cache = tmp_path / "cache"
    s = read_cifar10_tar(path, md5=md5, cache_dir=cache)
    assert s.train_x.shape == (10 * TRAIN_PER_CLASS, 32, 32, 3) and s.train_x.dtype == np.uint8
    assert s.test_x.shape == (10 * TEST_PER_CLASS, 32, 32, 3)
    assert s.classes == CIFAR10_CLASSES
    assert np.array_equal(s.train_y, np.repeat(np.arange(10), TRAIN_PER_CLASS))
    assert s.source == "jpeg-tar" and s.md5 == md5
    assert (cache / f"cifar10-jpeg-{md5}.npz").is_file()
    assert json.loads((cache / "md5.json").read_text())[str(path.resolve())]["md5"] == md5
    # the second read comes from the cache: the same arrays
    again = read_cifar10_tar(path, md5=md5, cache_dir=cache)
    assert np.array_equal(again.train_x, s.train_x) and np.array_equal(again.test_y, s.test_y)
    # a JPEG stays close to what was written (class bar visible)
    assert s.train_x[0, 8, 10, 0] > 180
    with pytest.raises(UserError, match="md5"):
        read_cifar10_tar(path, md5="0" * 32, cache_dir=cache)
    with pytest.raises(UserError, match="no such file"):
        read_cifar10_tar(tmp_path / "missing.tar", cache_dir=cache)
    with pytest.raises(UserError, match="--cifar10-tar"):
        read_images(E2Config(dataset="cifar10", data_dir=str(cache)))
    with pytest.raises(UserError, match="--cifar-dir"):
        read_images(E2Config(dataset="cifar100"))
    with pytest.raises(UserError, match="dataset must be one of"):
        read_images(E2Config(dataset="svhn"))


def test_md5_is_remembered(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert md5_of(f, tmp_path) == hashlib.md5(b"abc").hexdigest()
    memo = json.loads((tmp_path / "md5.json").read_text())
    memo[str(f.resolve())]["md5"] = "remembered"
    (tmp_path / "md5.json").write_text(json.dumps(memo))
    assert md5_of(f, tmp_path) == "remembered"  # not recomputed while size and mtime match


def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_pickle_reader(tmp_path, dataset):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(12, -1)  # CIFAR rows: R plane, G, B
    if dataset == "cifar10":
        folder = tmp_path / "cifar-10-batches-py"
        for i in range(1, 6):
            _write_pickle(folder / f"data_batch_{i}", {b"data": flat[:2], b"labels": [i, 9]})
        _write_pickle(folder / "test_batch", {b"data": flat[10:], b"labels": [3, 4]})
        _write_pickle(
            folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES]}
        )
    else:
        folder = tmp_path / "cifar-100-python"
        _write_pickle(folder / "train", {b"data": flat[:10], b"fine_labels": list(range(10))})
        _write_pickle(folder / "test", {b"data": flat[10:], b"fine_labels": [99, 0]})
    s = read_cifar_pickles(tmp_path, dataset)  # the parent folder works too
    assert s.source == "pickle"
    assert s.train_x.shape == (10, 32, 32, 3) and s.test_x.shape == (2, 32, 32, 3)
    assert np.array_equal(s.train_x[:2], images[:2]) and np.array_equal(s.test_x, images[10:])
    if dataset == "cifar10":
        assert s.train_y.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
        assert s.classes == CIFAR10_CLASSES
    else:
        assert s.test_y.tolist() == [99, 0] and s.num_classes == 100
    read = read_images(E2Config(dataset=dataset, cifar_dir=str(folder)))
    assert read.train_x.shape == (10, 32, 32, 3)
    (folder / ("data_batch_1" if dataset == "cifar10" else "test")).unlink()
    with pytest.raises(UserError, match="lacks"):
        read_cifar_pickles(folder, dataset)
    with pytest.raises(UserError, match="no such folder"):
        read_cifar_pickles(tmp_path / "nope", dataset)


def test_augmentation_is_deterministic_and_correct():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8))
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each output is a shifted (and maybe flipped) window of the zero-padded input
    padded = F.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4))
    for i in range(16):
        out = a[i].permute(2, 0, 1)
        hits = [
            (dy, dx, fl)
            for dy in range(9)
            for dx in range(9)
            for fl in (False, True)
            if torch.equal(
                out, padded[i, :, dy : dy + 32, dx : dx + 32].flip(-1) if fl else
                padded[i, :, dy : dy + 32, dx : dx + 32],
            )
        ]  # fmt: skip
        assert hits
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.2, 0.2])
    z = normalize(x, mean, std)
    assert z.shape == (16, 3, 32, 32) and z.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(z[:, 1], (x[..., 1].float() / 255 - 0.4) / 0.2, atol=1e-5)


def test_split_is_stratified_and_fixed():
    labels = np.repeat(np.arange(10), 50)
    train, val, test = split_indices(labels, labels[:100], 100, train_samples=200, test_samples=20)
    assert len(val) == 100 and len(train) == 200 and len(test) == 20
    assert np.bincount(labels[val]).tolist() == [10] * 10
    assert np.bincount(labels[train]).tolist() == [20] * 10
    assert not set(train) & set(val)
    again = split_indices(labels, labels[:100], 100, train_samples=200, test_samples=20)
    assert all(np.array_equal(p, q) for p, q in zip((train, val, test), again, strict=True))
    with pytest.raises(UserError):
        split_indices(labels, labels, 500)


# ------------------------------------------------------------------------------------------
# training end to end


def _train_args(tiny_tar, out: Path, cache: Path, attention: str = "arnn") -> list[str]:
    path, md5 = tiny_tar
    return [
        "e2", "train", "--out", str(out), "--attention", attention, "--cifar10-tar", str(path),
        "--cifar10-md5", md5, "--data-dir", str(cache), "--epochs", "1", "--width", "0.125",
        "--depth", "1", "--attention-hidden", "4", "--val-samples", "10", "--batch-size", "10",
        "--train-samples", "20", "--test-samples", "10", "--threads", "1", "--no-progress",
    ]  # fmt: skip


def test_cli_train_end_to_end_and_resume(tiny_tar, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(_train_args(tiny_tar, out, cache)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attention"] == "arnn" and metrics["epochs"] == 1
    assert metrics["scan_products"] == scan_products(metrics["precision"])
    assert re.fullmatch(r"[0-9a-f]{64}", metrics["provenance"]["data_sha256"])
    assert 0.0 <= metrics["test_error"] <= 1.0
    assert metrics["samples"] == {"train": 20, "val": 10, "test": 10}
    assert set(metrics["per_class_accuracy"]) == set(CIFAR10_CLASSES)
    assert len(metrics["history"]) == 1 and "val_error" in metrics["history"][0]
    assert metrics["precision"] in ("fp32", "bf16")
    assert (out / "best.pt").is_file()
    printed = json.loads(capsys.readouterr().out)
    assert printed["test_error"] == metrics["test_error"]
    # rerunning the finished run returns the same metrics without training again
    assert main(_train_args(tiny_tar, out, cache)) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads(capsys.readouterr().out)["test_error"] == metrics["test_error"]


def test_cli_user_errors(tiny_tar, tmp_path, capsys):
    args = _train_args(tiny_tar, tmp_path / "run", tmp_path / "cache")
    bad_md5 = args[:]
    bad_md5[bad_md5.index("--cifar10-md5") + 1] = "1" * 32
    assert main(bad_md5) == 2
    assert "md5" in capsys.readouterr().err
    no_tar = [a for a in args if a != str(tiny_tar[0]) and a != "--cifar10-tar"]
    assert main(no_tar) == 2
    assert "--cifar10-tar" in capsys.readouterr().err


def test_reproduce_and_table(tiny_tar, tmp_path):
    from attentionrnn.experiments.e2.experiment import Budget, reproduce

    path, md5 = tiny_tar
    budget = Budget(
        width=0.125, depth=1, epochs=1, lr_step=1, batch_size=10, val_samples=10,
        train_samples=20, test_samples=10, description="test",
    )  # fmt: skip
    out = tmp_path / "res"
    summary = reproduce(
        out, budget, methods=("ltpa", "arnn"), seeds=(0,), cifar10_tar=str(path),
        cifar10_md5=md5, data_dir=str(tmp_path / "cache"), jobs=1, threads=1, progress=False,
    )  # fmt: skip
    rows = summary["results"]["cifar10"]
    assert list(rows) == ["ltpa", "arnn"]
    assert (out / "runs/cifar10/arnn/seed0/metrics.json").is_file()
    assert "| LTPA + ARNN |" in (out / "results.md").read_text()
    assert (out / "curves_cifar10.png").is_file() and (out / "masks_cifar10.png").is_file()
    assert main(["e2", "table", str(out), "--no-figures"]) == 0
    # without --seeds: the budget's seeds, and its spread seeds for LTPA (seed 0 is done)
    summary = reproduce(
        out, dataclasses.replace(budget, spread_seeds=(0, 1)), methods=("none", "ltpa"),
        cifar10_tar=str(path), cifar10_md5=md5, data_dir=str(tmp_path / "cache"), jobs=1,
        threads=1, progress=False, figure=False,
    )  # fmt: skip
    rows = summary["results"]["cifar10"]
    assert rows["ltpa"]["seeds"] == [0, 1] and rows["none"]["seeds"] == [0]


def test_table_tests_every_row_against_ltpa(tmp_path):
    """E2's table under the one statistical rule: test error against LTPA (Welch, scipy)."""
    from scipy import stats

    from attentionrnn.experiments.e2.experiment import assemble

    errors = {"ltpa": [0.20, 0.22, 0.21], "arnn": [0.15, 0.16, 0.14]}
    for row, values in errors.items():
        for seed, error in enumerate(values):
            run = tmp_path / "runs" / "cifar10" / row / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({
                "test_error": error, "val_error": error, "per_class_accuracy": {"cat": 0.8},
                "best_epoch": 3, "precision": "fp32", "parameters": 10, "epochs": 3,
                "training_time_s": 60.0,
            }))  # fmt: skip
    summary = assemble(tmp_path, "cpu", figure=False)
    welch = stats.ttest_ind(errors["arnn"], errors["ltpa"], equal_var=False)
    assert summary["comparisons"]["cifar10"]["arnn"]["test_error"]["p"] == pytest.approx(
        welch.pvalue)
    assert "Against LTPA (concat-pc): difference" in (tmp_path / "results.md").read_text()
