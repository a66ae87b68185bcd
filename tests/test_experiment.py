"""Experiment E1: metrics on hand-made masks, training end to end, determinism, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attentionrnn.cli import main
from attentionrnn.experiments.metrics import (
    accuracy,
    accuracy_by_scale,
    attention_correctness,
    box_regions,
    mask_to_image,
    scale_bin_labels,
)
from attentionrnn.experiments.train import E1Data, TrainConfig, images_for_samples, lr_at, train
from attentionrnn.models.pan import MASK_GEOMETRY

PALETTE = np.array(
    [[146, 16, 16], [16, 166, 81], [16, 98, 192], [255, 241, 78], [224, 224, 224]], np.uint8
)
REPO = Path(__file__).resolve().parents[1]


def make_npz(path: Path, images: int = 10, seed: int = 0) -> Path:
    """A tiny dataset in the ``.npz`` schema of ``attentionrnn.data``; squares stand in for
    digits (side 10 + 3 * class), three per image in distinct classes, splits 3:1:1 by image."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((images, 100, 100, 3), np.uint8)
    inst = np.zeros((images, 100, 100), np.uint8)
    rows = []
    for i in range(images):
        for k, d in enumerate(rng.choice(10, size=3, replace=False)):
            s = 10 + 3 * int(d)
            x0, y0 = 5 + 33 * k, int(rng.integers(0, 100 - s))
            color = int(rng.integers(0, 5)) if k else 0
            imgs[i, y0 : y0 + s, x0 : x0 + s] = PALETTE[color]
            inst[i, y0 + 1 : y0 + s - 1, x0 + 1 : x0 + s - 1] = k + 1
            rows.append((i, d, color, s / 28 * 1.5, (x0, y0, x0 + s, y0 + s), k + 1))
    split = np.array([0, 0, 0, 1, 2] * images)[:images]
    image_index = np.array([r[0] for r in rows])
    np.savez(
        path,
        images=imgs,
        instances=inst,
        image_index=image_index,
        query=np.array([r[1] for r in rows]),
        color=np.array([r[2] for r in rows]),
        scale=np.array([r[3] for r in rows], np.float32),
        box=np.array([r[4] for r in rows]),
        instance=np.array([r[5] for r in rows]),
        split=split[image_index],
        dataset=np.array("mref"),
        digit_source=np.array("test squares"),
    )
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def _cmd(data: Path, out: Path, epochs: int, attention: str = "ctx") -> list[str]:
    return [
        "train",
        "--dataset", "mref", "--attention", attention, "--data", str(data), "--out", str(out),
        "--epochs", str(epochs), "--seed", "3", "--batch-size", "8", "--threads", "1",
        "--no-progress",
    ]  # fmt: skip


def _config(data: Path, out: Path, **kwargs) -> TrainConfig:
    """The config that ``_cmd`` gives on the command line, with ``kwargs`` changed."""
    base = dict(attention="ctx", data=str(data), out=str(out), seed=3, batch_size=8, threads=1)
    return TrainConfig(**{**base, "progress": False, **kwargs})


def _comparable(metrics: dict) -> dict:
    """The metrics without wall-clock times and the run folder."""
    drop = {"training_time_s", "seconds_per_epoch", "config", "threads"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return out


# ---------------------------------------------------------------------------------- metrics


def test_correctness_of_a_mask_inside_the_box_is_one():
    boxes = torch.tensor([[10, 20, 40, 60]])
    mask = box_regions(boxes, (100, 100)).float()[:, None] * torch.rand(1, 1, 100, 100)
    region = box_regions(boxes, (100, 100))
    assert torch.allclose(attention_correctness(mask, region), torch.ones(1))


def test_correctness_of_a_uniform_mask_is_the_area_share():
    boxes = torch.tensor([[10, 20, 40, 60], [0, 0, 100, 50], [5, 5, 6, 6]])
    region = box_regions(boxes, (100, 100))
    expected = torch.tensor([30 * 40, 100 * 50, 1]) / 1e4
    for shape, geometry in [((100, 100), (None, 0.0)), ((49, 49), MASK_GEOMETRY[0])]:
        for stride, offset in [geometry, *MASK_GEOMETRY]:
            uniform = torch.full((3, 1, *shape), 0.3)
            got = attention_correctness(uniform, region, stride, offset)
            assert torch.allclose(got, expected.float(), atol=1e-6)


def test_correctness_of_a_mask_outside_is_zero_and_half_is_half():
    region = box_regions(torch.tensor([[0, 0, 50, 100]]), (100, 100))
    mask = torch.zeros(1, 1, 100, 100)
    mask[..., 50:] = 1
    assert float(attention_correctness(mask, region)) == 0.0
    mask[..., 0] = 1  # one column of 100 of 51 now inside
    assert abs(float(attention_correctness(mask, region)) - 100 / 5100) < 1e-6
    assert torch.isnan(attention_correctness(torch.zeros(1, 1, 4, 4), region))[0]


def test_mask_geometry_places_cells_on_their_receptive_field_centres():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 1
    image = mask_to_image(mask, (100, 100), *MASK_GEOMETRY[3])
    peak = divmod(int(image.flatten().argmax()), 100)
    assert abs(peak[0] - 38.5) <= 0.5 and abs(peak[1] - 54.5) <= 0.5
    assert torch.allclose(mask_to_image(mask, (4, 4), 1, 0)[0], mask[0, 0])  # identity
    stroke = torch.zeros(1, 100, 100, dtype=torch.bool)
    stroke[0, 22:56, 38:72] = True  # the cell's support: centre ± one stride
    assert float(attention_correctness(mask, stroke, *MASK_GEOMETRY[3])) == pytest.approx(1)
    assert float(attention_correctness(mask, ~stroke, *MASK_GEOMETRY[3])) == pytest.approx(0)


def test_accuracy_and_scale_bins():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert scale_bin_labels() == ["0.5-1.0", "1.0-1.5", "1.5-2.0", "2.0-2.5", "2.5-3.0"]
    bins = accuracy_by_scale([True, False, True, True, False], [0.5, 0.99, 1.0, 3.0, 2.6])
    assert bins["0.5-1.0"] == {"accuracy": 0.5, "count": 2}
    assert bins["1.0-1.5"] == {"accuracy": 1.0, "count": 1}
    assert bins["2.5-3.0"] == {"accuracy": 0.5, "count": 2}
    assert bins["1.5-2.0"]["count"] == 0 and np.isnan(bins["1.5-2.0"]["accuracy"])


def test_schedule_and_sizes():
    c = TrainConfig()
    assert [lr_at(c, e) for e in (0, 29)] == [0.003, 0.003]
    assert lr_at(c, 30) == pytest.approx(0.002) and lr_at(c, 39) == pytest.approx(0.002)
    assert lr_at(c, 40) == pytest.approx(0.003 / 1.5**2)
    assert images_for_samples(50000) == 8850 and images_for_samples(3) == 1
    with pytest.raises(ValueError, match="unknown attention"):
        TrainConfig(attention="pan").check()


def test_data_regions_and_inverse_task(tiny):
    data = E1Data(tiny)
    idx = data.indices("test")
    img, query, target = data.batch(idx)
    assert img.shape == (len(idx), 3, 100, 100) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    boxes, strokes = data.regions(idx)
    assert (strokes & ~boxes).sum() == 0 and strokes.any(dim=(1, 2)).all()
    inverse = E1Data(tiny, task="digit")
    kept = inverse.indices("train")
    assert len(kept) < len(data.indices("train"))  # repeated colours dropped
    _, q, t = inverse.batch(kept)
    assert int(q.max()) < 5 and torch.equal(t, torch.from_numpy(data.digit[kept]))


# ---------------------------------------------------------------------------------- training


def test_train_end_to_end_via_cli(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cmd(tiny, out, 2, attention="arnn")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["seed"] == 3 and metrics["attention"] == "arnn"
    assert 0 <= metrics["test_accuracy"] <= 1
    assert set(metrics["accuracy_by_scale"]) == set(scale_bin_labels())
    layers = metrics["attention_correctness"]
    assert list(layers) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(0 <= v[k] <= 1 for v in layers.values() for k in ("box", "stroke"))
    assert metrics["parameters"] > metrics["attention_parameters"] > 0
    assert metrics["training_time_s"] > 0 and metrics["data"]["how"] == "given"
    assert (out / "best.pt").is_file() and (out / "checkpoint.pt").is_file()
    assert "test_accuracy" in capsys.readouterr().out
    # rerunning a finished run returns its metrics without training again
    again = train(_config(tiny, out, attention="arnn", epochs=2))
    assert again == metrics


def test_same_seed_same_metrics(tiny, tmp_path):
    runs = [train(_config(tiny, tmp_path / f"r{i}", attention="arnn_ind", epochs=2, seed=5))
            for i in range(2)]  # fmt: skip
    assert _comparable(runs[0]) == _comparable(runs[1])


def test_other_config_in_the_same_folder_is_refused(tiny, tmp_path):
    config = _config(tiny, tmp_path, attention="local", epochs=1)
    train(config)
    config.lr = 0.01
    with pytest.raises(ValueError, match="another configuration"):
        train(config)
    with pytest.raises(ValueError, match="holds 'mref' data.*--dataset mref"):
        train(_config(tiny, tmp_path / "other", dataset="mdist", epochs=1))


def test_kill_9_mid_run_then_resume_gives_the_same_metrics(tiny, tmp_path):
    epochs = 6
    reference = train(_config(tiny, tmp_path / "ref", epochs=epochs))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "attentionrnn", *_cmd(tiny, out, epochs)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "run finished before it could be killed"
    done = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["epoch"]
    assert 1 <= done < epochs
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from epoch {done}" in resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert _comparable(metrics) == _comparable(reference)


def test_torchrun_two_processes_gloo(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "attentionrnn", *_cmd(tiny, out, 2, attention="arnn"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
    assert metrics["samples"]["test"] == len(E1Data(tiny).indices("test"))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers  # temporary files were all renamed


def test_reproduce_writes_table_json_and_mask_figure(tiny, tmp_path):
    from attentionrnn.experiments.reproduce import Budget, reproduce

    budget = Budget(samples=30, epochs=1, batch_size=8, patience=5, description="test budget")
    summary = reproduce(
        tmp_path, budget, datasets=("mref",), methods=("none", "ctx"),
        data={"mref": tiny}, jobs=1, threads=1, progress=False,
    )  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["results"]["mref"]) == {"none", "ctx"}
    assert saved["results"]["mref"]["ctx"] == summary["results"]["mref"]["ctx"]
    table = (tmp_path / "results.md").read_text()
    for label in ("no attention", "CTX (PAN)", "MREF acc", "layer 4", "0.5-1.0", "masks_mref"):
        assert label in table
    figure = tmp_path / "masks_mref.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    # a second call reuses the finished runs
    again = reproduce(
        tmp_path, budget, datasets=("mref",), methods=("ctx",), data={"mref": tiny}, jobs=1,
        threads=1, progress=False, figure=False,
    )  # fmt: skip
    assert again["results"]["mref"]["ctx"] == summary["results"]["mref"]["ctx"]


def test_training_data_agrees_with_attribute_dataset(tiny):
    from attentionrnn.data import AttributeDataset

    for task in ("color", "digit"):
        fast = E1Data(tiny, task)
        for split in ("train", "val", "test"):
            reference = AttributeDataset(tiny, split=split, task=task)
            assert np.array_equal(fast.indices(split), reference.indices)
            k = len(reference) - 1
            image, query, target, sample = reference[k]
            img, q, t = fast.batch(np.array([sample]))
            assert torch.equal(img[0], torch.as_tensor(image))
            assert (int(q), int(t)) == (int(query), int(target))
            boxes, strokes = fast.regions(np.array([sample]))
            assert np.array_equal(strokes[0].numpy(), reference.stroke_mask(sample))
            assert tuple(reference.box(sample)) == tuple(fast.box[sample])
