"""Behaviour check across a refactor: short fixed-seed fp32 runs of E1–E4, numbers only.

    python scripts/equality_check.py /tmp/eq_before.json            # record
    python scripts/equality_check.py /tmp/eq_after.json --compare /tmp/eq_before.json

Each experiment trains the tiny runs its tests use (synthetic digits from ``tests/conftest.py``, a
tar of a few generated JPEGs for E2, generated Sort-of-CLEVR for E3) through ``attentionrnn eN
train`` and keeps every number of its ``metrics.json`` except times, paths, provenance and the CPU.
``--compare`` exits 1 unless every number is exactly equal. Not part of the test suite (minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attentionrnn.cli import main  # noqa: E402
from attentionrnn.data.generate import generate_arrays, write_npz  # noqa: E402
from tests.conftest import synthetic_digits  # noqa: E402

#: keys dropped at any depth: wall-clock, paths, machine and code identity
DROP = {
    "training_time_s", "seconds_per_epoch", "seconds", "elapsed", "config", "threads", "out",
    "provenance", "git", "git_commit", "cpu", "cpu_name", "data", "data_sha256", "path",
    "hostname", "torch", "python", "time", "started", "finished", "wall_s", "judge_time_s",
}  # fmt: skip
COMMON = ["--threads", "1", "--no-progress", "--precision", "fp32"]


def numbers(value):
    """The numeric (and string-label) content of ``value``, without the DROP keys."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in sorted(value.items()) if k not in DROP
                and not k.endswith("_time_s") and not k.endswith("_s")}  # fmt: skip
    if isinstance(value, list):
        return [numbers(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _run(args: list[str], out: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    if rc != 0:
        raise SystemExit(f"{' '.join(args)}: exit {rc}")
    return numbers(json.loads((out / "metrics.json").read_text()))


def e1(tmp: Path) -> dict:
    data = write_npz(tmp / "tiny.npz", generate_arrays("mref", 8, seed=0, digits=synthetic_digits(),
                                                        workers=1))  # fmt: skip
    result = {}
    for attention, epochs in (("arnn_ind", 2), ("ctx", 1)):
        out = tmp / f"e1_{attention}"
        result[attention] = _run(["e1", "train", "--dataset", "mref", "--attention", attention,
                                  "--data", str(data), "--out", str(out), "--epochs", str(epochs),
                                  "--seed", "3", "--batch-size", "8", *COMMON], out)  # fmt: skip
    return result


def _tiny_tar(root: Path) -> tuple[Path, str]:
    from PIL import Image

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
    rng = np.random.default_rng(0)
    path = root / "tiny.tar"
    with tarfile.open(path, "w") as tar:
        for split, n in (("train", 4), ("test", 2)):
            for c, name in enumerate(classes):
                for i in range(n):
                    img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                    img[4 + c : 14 + c, 6:26, c % 3] = 230
                    f = root / f"{split}_{name}_{i}.jpg"
                    Image.fromarray(img).save(f, quality=95)
                    tar.add(f, arcname=f"{split}/{name}/{i:04d}.jpg")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def e2(tmp: Path) -> dict:
    path, md5 = _tiny_tar(tmp)
    result = {}
    for attention in ("arnn", "ltpa"):
        out = tmp / f"e2_{attention}"
        result[attention] = _run([
            "e2", "train", "--out", str(out), "--attention", attention, "--cifar10-tar", str(path),
            "--cifar10-md5", md5, "--data-dir", str(tmp / "cache"), "--epochs", "1", "--width",
            "0.125", "--depth", "1", "--attention-hidden", "4", "--val-samples", "10",
            "--batch-size", "10", "--train-samples", "20", "--test-samples", "10", "--seed", "1",
            *COMMON], out)  # fmt: skip
    return result


def e3(tmp: Path) -> dict:
    os.environ["ATTENTIONRNN_DATA_DIR"] = str(tmp / "cache3")
    result = {}
    for attention in ("arnn", "mcb", "oracle"):
        out = tmp / f"e3_{attention}"
        result[attention] = _run([
            "e3", "train", "--dataset", "sort_of_clevr", "--attention", attention, "--out",
            str(out), "--epochs", "2", "--generated-train-images", "10",
            "--generated-test-images", "3", "--val-images", "2", "--image-size", "32",
            "--blocks", "2", "--channels", "8", "--mcb-dim", "32", "--attention-hidden", "4",
            "--seed", "2", *COMMON], out)  # fmt: skip
    return result


def e4(tmp: Path) -> dict:
    import attentionrnn.data.mnist as mnist

    os.environ["ATTENTIONRNN_DATA_DIR"] = str(tmp / "cache4")
    original, pool = mnist.load_mnist, synthetic_digits()
    import attentionrnn.experiments.e4.train  # noqa: F401  (loads every module that reads MNIST)

    for module in list(sys.modules.values()):  # every module that imported load_mnist by name
        if getattr(module, "load_mnist", None) is original:
            module.load_mnist = lambda folder=None: pool
    data = write_npz(tmp / "mref48.npz", generate_arrays("mref", 10, seed=0, digits=pool,
                                                          workers=1, canvas=48))  # fmt: skip
    result = {}
    for mask in ("arnn", "ctx"):
        out = tmp / f"e4_{mask}"
        result[mask] = _run([
            "e4", "train", "--dataset", "mref", "--mask", mask, "--data", str(data), "--out",
            str(out), "--epochs", "1", "--images", "10", "--canvas", "48", "--batch-size", "8",
            "--val-samples", "8", "--test-samples", "8", "--channels", "4", "--d-channels", "4",
            "--mask-hidden", "4", "--judge-epochs", "1", "--judge-channels", "4", "--samples",
            "2", "--eval-batch-size", "64", "--seed", "4", *COMMON], out)  # fmt: skip
    return result


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path)
    p.add_argument("--compare", type=Path, help="an earlier output: exit 1 unless equal")
    p.add_argument("--only", nargs="+", choices=["e1", "e2", "e3", "e4"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("e1", e1), ("e2", e2), ("e3", e3), ("e4", e4)):
            if args.only and name not in args.only:
                continue
            folder = Path(tmp) / name
            folder.mkdir()
            result[name] = fn(folder)
            print(name, "done", flush=True)
    args.output.write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    status = 0
    for name, runs in result.items():
        for row, metrics in runs.items():
            same = before.get(name, {}).get(row) == metrics
            status |= not same
            print(f"{name} {row}: {'equal' if same else 'DIFFERENT'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main_())
