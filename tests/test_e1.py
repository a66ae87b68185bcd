"""Experiment E1: training end to end, determinism, resume, DDP.

The engine's own tests (one-line CLI errors, the declared-experiment contract) are in
``tests/test_engine.py``; those of E1's metrics in ``tests/test_e1_metrics.py``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from e1_cli import train_args as _cmd

from attentionrnn.cli import main
from attentionrnn.data.attribute import AttributeDataset, E1Data
from attentionrnn.engine.precision import cpu_name, resolve_precision
from attentionrnn.experiments.e1.config import E1Config
from attentionrnn.experiments.e1.metrics import scale_bin_labels
from attentionrnn.experiments.e1.train import images_for_samples, train
from attentionrnn.layers.fused import scan_products

REPO = Path(__file__).resolve().parents[1]


def _config(data: Path, out: Path, **kwargs) -> E1Config:
    """The config that ``_cmd`` gives on the command line, with ``kwargs`` changed."""
    base = dict(attention="ctx", data=str(data), out=str(out), seed=3, batch_size=8, threads=1)
    return E1Config(**{**base, "progress": False, **kwargs})


def _comparable(metrics: dict) -> dict:
    """The metrics without wall-clock times and the run folder."""
    drop = {"training_time_s", "seconds_per_epoch", "config", "threads"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    clock = {"seconds", "elapsed"}
    out["history"] = [{k: v for k, v in h.items() if k not in clock} for h in metrics["history"]]
    return out


# ---------------------------------------------------------------------------------- training


def test_patience_from_reaches_the_fit(tiny, tmp_path, monkeypatch):
    """Early stopping waits for ``patience_from`` (the inverse task's budget sets 30): the
    config's value is what the engine's fit receives, and the budget sets it."""
    import attentionrnn.experiments.e1.train as e1_train
    from attentionrnn.experiments.e1.experiment import BUDGETS

    seen = {}
    real = e1_train.fit_run

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(e1_train, "fit_run", spy)
    train(_config(tiny, tmp_path / "run", epochs=1, patience_from=5))
    assert seen["patience_from"] == 5
    assert BUDGETS["plateau-digit"].patience_from == 30 and BUDGETS["plateau"].patience_from == 0


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
    assert metrics["cpu"] == cpu_name() and metrics["cpu"]  # what the time was measured on
    assert metrics["scan_products"] == scan_products(metrics["precision"])  # the recipe's record
    prov = metrics["provenance"]  # which code, data and CPU features made the numbers
    assert prov["data_sha256"] == hashlib.sha256(Path(tiny).read_bytes()).hexdigest()
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40
    # what the masks cover and how consistent they are, per layer, on the test split
    masks = metrics["masks"]
    assert set(masks) == {f"layer{k}" for k in (1, 2, 3, 4)} | {"layer1-2", "layer2-3", "layer3-4"}
    for k in (1, 2, 3, 4):
        m = masks[f"layer{k}"]
        assert m["queried"] + m["others"] + m["background"] == pytest.approx(1.0, abs=1e-6)
        assert 0 < m["entropy"] <= 1 + 1e-9 and m["tv"] >= 0 and 0 < m["peak_region"] <= 1
    assert "val_masks" in metrics["history"][-1]
    assert (out / "best.pt").is_file() and (out / "checkpoint.pt").is_file()
    assert "test_accuracy" in capsys.readouterr().out
    # rerunning a finished run returns its metrics without training again
    again = train(_config(tiny, out, attention="arnn", epochs=2))
    assert again == metrics


def test_load_run_rebuilds_the_gate_the_run_trained_with(tiny, tmp_path):
    """Runs recorded before layer 4's default became a softmax have no gate in their config;
    the figures must rebuild the sigmoid they trained with, not today's default."""
    from attentionrnn.experiments.e1.figures import load_run

    train(_config(tiny, tmp_path, attention="arnn_ind", epochs=1, layer4_gate="sigmoid"))
    path = tmp_path / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["config"]["layer4_gate"] = None
    path.write_text(json.dumps(metrics))
    assert load_run(tmp_path).layer4_gate == "sigmoid"


def test_evaluation_does_not_depend_on_its_batch_size(tiny):
    """``--eval-batch-size`` is a runtime flag (runs resume with another value): the numbers
    must not move with it."""
    from attentionrnn.experiments.e1.evaluate import evaluate
    from attentionrnn.experiments.e1.model import PAN

    torch.manual_seed(0)
    data = E1Data(tiny)
    model = PAN("arnn", attention_hidden=4)
    image, query, _ = data.batch(data.indices("train")[:8])
    model.train()(image, query)  # BN's running statistics move away from their initial values
    idx = data.indices("val")
    results = [evaluate(model, data, idx, bs, full=True, precision="bf16") for bs in (3, 50)]
    np.testing.assert_equal(results[0], results[1])  # NaN (an empty scale bin) equals NaN


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


def test_reproduce_adds_runs_and_assembles_the_table(tiny, tmp_path, capsys, caplog):
    from attentionrnn.experiments.e1.experiment import Budget, reproduce

    budget = Budget(samples=30, epochs=2, batch_size=8, patience=5, description="test budget")
    kwargs = dict(data={"mref": tiny}, jobs=1, threads=1, progress=False, datasets=("mref",))
    summary = reproduce(tmp_path, budget, methods=("none", "ctx"), **kwargs)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["results"]["mref"]) == {"none", "ctx"}
    assert saved["results"]["mref"]["ctx"] == summary["results"]["mref"]["ctx"]
    table = (tmp_path / "results.md").read_text()
    for label in ("no attention", "CTX (PAN)", "## MREF", "layer 4", "0.5-1.0", "masks_mref"):
        assert label in table
    for figure in ("masks_mref.png", "curves_mref.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    # a later call adds a seed and a layer-4 gate variant; finished runs are kept, not retrained
    first = (tmp_path / "runs/mref/ctx/seed0/metrics.json").read_text()
    again = reproduce(tmp_path, budget, methods=("ctx",), seeds=(1,), **kwargs, figure=False)
    reproduce(tmp_path, budget, methods=("ctx",), layer4_gate="sigmoid", **kwargs, figure=False)
    assert (tmp_path / "runs/mref/ctx/seed0/metrics.json").read_text() == first
    ctx = again["results"]["mref"]["ctx"]
    assert ctx["seeds"] == [0, 1] and ctx["test_accuracy"]["std"] is not None
    accs = [json.loads((tmp_path / f"runs/mref/ctx/seed{s}/metrics.json").read_text())
            ["test_accuracy"] for s in (0, 1)]  # fmt: skip
    assert ctx["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    # the table is rebuilt from the finished runs alone
    (tmp_path / "results.md").unlink()
    assert main(["e1", "table", str(tmp_path), "--budget", "test"]) == 0
    table = (tmp_path / "results.md").read_text()
    precision = resolve_precision("auto")  # what the runs above trained in on this machine
    assert f"| CTX (PAN) | softmax | 0,1 | {precision} |" in table and " ± " in table
    assert f"| CTX (PAN), L4 sigmoid | sigmoid | 0 | {precision} |" in table
    history = json.loads(first)["history"]
    n = len(E1Data(tiny).indices("train"))
    per_epoch = -(-n // 8) - (n % 8 == 1)  # a last batch of one sample is dropped
    assert [h["step"] for h in history] == [per_epoch, 2 * per_epoch]
    assert set(history[0]["val_attention_correctness"]) == {f"layer{k}" for k in range(1, 5)}
    # runs that recorded a data path relative to where they ran (as the demo does): the masks
    # come from a file of that name in OUT/data/, and without it the table says why none
    for path in (tmp_path / "runs").glob("mref/*/seed*/metrics.json"):
        m = json.loads(path.read_text())
        m["data"]["path"] = f"elsewhere/{tiny.name}"
        path.write_text(json.dumps(m))
    (tmp_path / "masks_mref.png").unlink()
    with caplog.at_level(logging.WARNING, logger="attentionrnn.e1"):
        assert main(["e1", "table", str(tmp_path), "--budget", "test"]) == 0
    assert not (tmp_path / "masks_mref.png").exists()
    assert any(
        f"masks_mref.png not drawn: the runs' data file elsewhere/{tiny.name}" in r.getMessage()
        for r in caplog.records
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / tiny.name).write_bytes(tiny.read_bytes())
    assert main(["e1", "table", str(tmp_path), "--budget", "test"]) == 0
    assert (tmp_path / "masks_mref.png").stat().st_size > 10_000
    assert "masks_mref" in (tmp_path / "results.md").read_text()


def test_table_averages_correctness_over_the_layers_that_attend():
    from attentionrnn.experiments.e1.table import _precisions, summarize

    def run(attention, box4, recorded=None):
        m = {
            "attention": attention, "test_accuracy": 0.5, "training_time_s": 60.0, "epochs": 1,
            "accuracy_by_scale": {"0.5-1.0": {"accuracy": 0.5}},
            "attention_correctness": {
                f"layer{k}": {"box": 0.1 if k < 4 else box4, "stroke": 0.0} for k in range(1, 5)
            },
        }  # fmt: skip
        if recorded is not None:
            m["attention_layers"] = recorded
        return m

    # SAN's layers 1-3 pass their features on: only layer 4 counts, recorded or not (older runs)
    for recorded in (None, [4]):
        san = summarize("san", {0: run("san", 0.5, recorded)})
        assert san["attention_layers"] == [4] and san["box"]["mean"] == pytest.approx(0.5)
    ctx = summarize("ctx", {0: run("ctx", 0.5), 1: run("ctx", 0.9) | {"precision": "bf16"}})
    assert ctx["attention_layers"] == [1, 2, 3, 4]
    assert _precisions(ctx) == "fp32 (0), bf16 (1)" and _precisions(san) == "fp32"
    mixed = {"seeds": [0, 1, 2], "precisions": ["bf16", "fp32", "bf16"]}
    assert _precisions(mixed) == "bf16 (0, 2), fp32 (1)"  # seeds grouped by precision
    assert ctx["box"]["mean"] == pytest.approx(np.mean([(0.3 + 0.5) / 4, (0.3 + 0.9) / 4]))


def test_overview_puts_every_row_on_every_dataset_in_one_table():
    from attentionrnn.experiments.e1.table import _overview, summarize

    def run(attention, acc, box4):
        return {
            "attention": attention, "test_accuracy": acc, "training_time_s": 60.0, "epochs": 1,
            "layer4_gate": "softmax", "accuracy_by_scale": {"0.5-1.0": {"accuracy": acc}},
            "attention_correctness": {
                f"layer{k}": {"box": 0.1 if k < 4 else box4, "stroke": 0.0} for k in range(1, 5)
            },
        }  # fmt: skip

    results = {
        "mref": {
            "ctx": summarize("ctx", {0: run("ctx", 0.9, 0.4), 1: run("ctx", 0.8, 0.6)}),
            "arnn": summarize("arnn", {0: run("arnn", 0.95, 0.3)}),
        },
        "mdist": {"ctx": summarize("ctx", {2: run("ctx", 0.7, 0.2)})},
    }
    lines = _overview(results)
    assert "| method | L4 | MREF | MDIST |" in lines
    # rows in the order of the paper's tables (baselines first), each dataset's own seeds
    ctx = next(i for i, ln in enumerate(lines) if ln.startswith("| CTX (PAN) |"))
    arnn = next(i for i, ln in enumerate(lines) if ln.startswith("| ARNN (bi) |"))
    assert ctx < arnn
    assert lines[ctx] == (
        "| CTX (PAN) | softmax | 0.850 ± 0.071 / 0.500 ± 0.141 [0,1] | 0.700 / 0.200 [2] |"
    )
    assert lines[arnn] == "| ARNN (bi) | softmax | 0.950 / 0.300 [0] | – |"
    assert _overview({}) == []


def test_attribute_dataset_is_a_view_of_the_same_reader(tiny):
    for task in ("color", "digit"):
        fast = E1Data(tiny, task)
        for split in ("train", "val", "test"):
            view = AttributeDataset(fast, split=split)
            assert np.array_equal(fast.indices(split), view.indices)
            image, query, target, sample = view[len(view) - 1]
            img, q, t = fast.batch(np.array([sample]))
            assert torch.equal(img[0], image) and image.is_contiguous()
            assert (int(q), int(t)) == (query, target)


# ------------------------------------------------------------------ command-line user errors


# ---------------------------------------------------------------------------------- canvas


def test_small_canvas_trains_and_names_its_data(tmp_path, monkeypatch, digits):
    """--canvas: the generated file's name says its size, the run trains on it and measures
    attention correctness on its own image size; a file of another size is refused."""
    import attentionrnn.data.generate as gen_mod
    from attentionrnn.engine.errors import UserError
    from attentionrnn.experiments.e1 import train as train_mod

    monkeypatch.setattr(gen_mod, "load_mnist", lambda mnist=None: digits)
    monkeypatch.delenv("ATTENTIONRNN_MNIST", raising=False)  # the file name says the source
    config = E1Config(
        attention="ctx", samples=60, canvas=64, epochs=1, batch_size=8, threads=1,
        data_dir=str(tmp_path / "data"), out=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    path, how = train_mod.resolve_data(config)
    assert how == "generated" and path.name == "mref_11img_64px_seed0_default.npz"
    assert E1Data(path).images.shape[1:] == (64, 64, 3)
    metrics = train(config)
    for layer in metrics["attention_correctness"].values():
        assert 0.0 <= layer["box"] <= 1.0
    # the default canvas keeps the old name and fingerprint (runs from before still resume)
    old = E1Config(samples=60, data_dir=str(tmp_path / "data"), progress=False)
    assert train_mod.resolve_data(old)[0].name == "mref_11img_seed0_default.npz"
    assert "canvas" not in old.fingerprint() and config.fingerprint()["canvas"] == 64
    with pytest.raises(UserError, match="64-pixel images but the run asks for --canvas 80"):
        train(E1Config(data=str(path), canvas=80, out=str(tmp_path / "r2"), progress=False))


def test_row_names_drop_a_gate_override_that_is_the_methods_own():
    from attentionrnn.experiments.e1.experiment import row_name

    assert row_name("ctx", "softmax") == "ctx"
    assert row_name("ctx", "sigmoid") == "ctx-l4sigmoid"
    assert row_name("arnn", "sigmoid") == "arnn-l4sigmoid"
    assert row_name("arnn", "softmax") == "arnn" and row_name("arnn", None) == "arnn"


def test_demo_trains_ctx_and_arnn(tmp_path, monkeypatch, digits):
    """The demo's path on a tiny budget: the data file it generates (here made beforehand from
    synthetic digits, under the name it looks for), both rows, the uniform level, the report."""
    from attentionrnn.data.generate import generate_arrays, write_npz
    from attentionrnn.experiments.e1.demo import demo, demo_report
    from attentionrnn.experiments.e1.experiment import Budget

    monkeypatch.delenv("ATTENTIONRNN_MNIST", raising=False)
    monkeypatch.delenv("ATTENTIONRNN_OFFLINE", raising=False)
    budget = Budget(samples=60, epochs=1, batch_size=8, patience=1, canvas=64, description="t",
                    lr=0.0007, lr_warmup_epochs=3)  # fmt: skip
    arrays = generate_arrays("mref", images_for_samples(60), seed=0, digits=digits, workers=1,
                             canvas=64)  # fmt: skip
    write_npz(tmp_path / "data" / "mref_11img_64px_seed0_default.npz", arrays)
    summary = demo(tmp_path, budget=budget, progress=False)
    assert os.environ["ATTENTIONRNN_OFFLINE"] == "1"  # the demo never downloads
    rows = summary["results"]["mref"]
    assert set(rows) == {"ctx", "arnn"}
    assert rows["arnn"]["layer4_gate"] == "softmax"
    assert rows["ctx"]["layer4_gate"] == "softmax"
    for method in ("ctx", "arnn"):  # the budget's learning rate is the one the runs trained with
        metrics = tmp_path / "runs" / "mref" / method / "seed0" / "metrics.json"
        run = json.loads(metrics.read_text())
        assert run["config"]["lr"] == 0.0007 and run["config"]["lr_warmup_epochs"] == 3
        assert run["history"][0]["lr"] == pytest.approx(0.0007 / 4)  # the first warm-up epoch
    box = arrays["box"][arrays["split"] == 2]
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / 64**2
    assert summary["uniform"]["box"] == pytest.approx(area.mean())
    test = np.flatnonzero(arrays["split"] == 2)
    strokes = [
        (arrays["instances"][arrays["image_index"][s]] == arrays["instance"][s]).mean()
        for s in test
    ]
    assert summary["uniform"]["stroke"] == pytest.approx(np.mean(strokes))
    text = demo_report(summary, tmp_path)
    assert "CTX (PAN)" in text and "ARNN (bi) " in text and "uniform mask" in text
    assert (tmp_path / "results.md").is_file() and (tmp_path / "masks_mref.png").is_file()


def test_reproduce_dry_run_lists_the_budgets_runs_and_prepares_nothing(tmp_path, capsys):
    out = tmp_path / "cpu"
    assert main(["e1", "reproduce", "--budget", "cpu", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # no data generated, no folder made
    # CTX and ARNN with three seeds, the six other methods with one, on each dataset
    assert "36 run(s) to train" in text
    for dataset in ("mref", "mdist", "mbg"):
        for seed in (0, 1, 2):
            assert f"{dataset}/arnn/seed{seed}" in text and f"{dataset}/ctx/seed{seed}" in text
        assert f"{dataset}/san/seed0" in text and f"{dataset}/san/seed1" not in text
