"""Experiment E3 (VQA with MCB and question-conditioned AttentionRNN): MCB, model, training,
CLI (the data: test_e3_data.py).

Everything runs on tiny data made here: a few generated Sort-of-CLEVR images, a hand-made
easy-VQA folder and a hand-made VQA v2 folder (features and images).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attentionrnn.cli import main
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.trainer import train_one_epoch
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.data import (
    generate_sort_of_clevr,
    vqa_accuracy,
)
from attentionrnn.experiments.e3.evaluate import answer_prior, evaluate
from attentionrnn.experiments.e3.model import (
    E3_ATTENTIONS,
    CompactBilinearPooling,
    VQANet,
    box_masks,
    count_sketch,
)
from attentionrnn.experiments.e3.rundata import E3Data, read_dataset
from attentionrnn.experiments.e3.train import lr_at, train
from attentionrnn.layers.fused import scan_products
from tests.test_e3_data import _easy_vqa_folder, _vqa2_folder


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTENTIONRNN_VQA_DIR", raising=False)
    monkeypatch.setenv("ATTENTIONRNN_DATA_DIR", str(tmp_path / "cache"))


def _tiny_config(tmp_path: Path, **kw) -> E3Config:
    base = dict(
        dataset="sort_of_clevr", out=str(tmp_path / "run"), epochs=1, batch_size=16,
        generated_train_images=12, generated_test_images=4, val_images=3, image_size=32,
        blocks=2, channels=16, embed=8, question_hidden=16, mcb_dim=64, attention_hidden=4,
        progress=False, threads=1, eval_batch_size=64,
    )  # fmt: skip
    return E3Config(**{**base, **kw})


def test_vqa2_evaluation_uses_the_vqa_accuracy(tmp_path):
    config = _tiny_config(tmp_path, dataset="vqa2", vqa_dir=str(_vqa2_folder(tmp_path / "v")),
                          val_images=1, attention="arnn")  # fmt: skip
    data = E3Data(read_dataset(config), config)
    model = VQANet(
        "arnn", len(data.vocab), len(data.answers), in_channels=5, features=True, channels=8,
        question_hidden=8, embed=4, mcb_dim=32, attention_hidden=4,
    )  # fmt: skip
    result = evaluate(model, data, "test", 4)
    few = read_dataset(dataclasses.replace(config, max_questions=4))
    assert len(few.train) == len(few.test) == 4 and len(few.train.images) == 2
    s = data.dataset.test
    x, ids, lengths, _ = data.batch("test", data.test_idx)
    pred = model(x, ids, lengths).argmax(1)
    expected = np.mean([vqa_accuracy(data.answers[p], s.human_answers[i])
                        for p, i in zip(pred.tolist(), data.test_idx, strict=True)])  # fmt: skip
    assert result["accuracy"] == pytest.approx(expected)
    assert set(result["by_type"]) == {"yes/no", "number", "other"}


# ------------------------------------------------------------------------------------------
# MCB


def test_count_sketch_matches_a_loop():
    torch.manual_seed(0)
    x = torch.randn(3, 7)
    index, sign = torch.randint(5, (7,)), torch.randint(2, (7,)).float() * 2 - 1
    expected = torch.zeros(3, 5)
    for i in range(7):
        expected[:, index[i]] += sign[i] * x[:, i]
    torch.testing.assert_close(count_sketch(x, index, sign, 5), expected)


@pytest.mark.parametrize("in1,in2,dim", [(4, 3, 5), (6, 5, 16), (3, 8, 7)])
def test_mcb_is_the_count_sketch_of_the_outer_product(in1, in2, dim):
    """The sketch of x ⊗ y with hash (h1[i] + h2[j]) mod d and sign s1[i] s2[j], computed from
    the outer product directly, equals MCB's FFT of the two sketches (circular convolution)."""
    mcb = CompactBilinearPooling(in1, in2, dim, seed=in1, normalize=False)
    torch.manual_seed(1)
    x, y = torch.randn(2, in1), torch.randn(2, in2)
    outer = x[:, :, None] * y[:, None, :]
    expected = torch.zeros(2, dim)
    for i in range(in1):
        for j in range(in2):
            k = int(mcb.h1[i] + mcb.h2[j]) % dim
            expected[:, k] += mcb.s1[i] * mcb.s2[j] * outer[:, i, j]
    torch.testing.assert_close(mcb(x, y), expected, rtol=1e-5, atol=1e-5)
    normalized = CompactBilinearPooling(in1, in2, dim, seed=in1)(x, y)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(2))


def test_mcb_broadcasts_and_keeps_float32_under_bf16_autocast():
    mcb = CompactBilinearPooling(4, 3, 16)
    x, y = torch.randn(2, 5, 5, 4), torch.randn(2, 1, 1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = mcb(x.bfloat16(), y)
    assert z.shape == (2, 5, 5, 16) and z.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# model and training


def _batch(vocab: int = 12, batch: int = 4):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    ids = torch.randint(2, vocab, (batch, 6))
    lengths = torch.tensor([6, 3, 1, 4][:batch])
    return x, ids, lengths


def _model(attention: str, **kw) -> VQANet:
    torch.manual_seed(0)
    base = dict(blocks=2, channels=16, embed=8, question_hidden=16, mcb_dim=64,
                attention_hidden=4)  # fmt: skip
    return VQANet(attention, 12, 5, **{**base, **kw})


@pytest.mark.parametrize("attention", E3_ATTENTIONS)
def test_model_shapes_and_masks(attention):
    model = _model(attention).eval()
    x, ids, lengths = _batch()
    logits, masks = model(x, ids, lengths, return_masks=True)
    assert logits.shape == (4, 5)
    if attention == "none":
        assert masks is None
        return
    assert masks.shape == (4, 2, 8, 8)
    torch.testing.assert_close(masks.float().sum((2, 3)), torch.ones(4, 2))
    # the masks depend on the question
    other = model(x, ids.flip(0), lengths.flip(0), return_masks=True)[1]
    assert (other - masks).abs().max() > 1e-6


def test_arnn_uses_the_multiplicative_fusion_by_default():
    model = _model("arnn")
    assert all(est.query_fusion == "mul" for est in model.estimators)
    assert _model("brnn", query_fusion="add").estimators[0].query_fusion == "add"


@pytest.mark.parametrize("attention", E3_ATTENTIONS)
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_one_training_step_per_row(attention, rnn):
    model = _model(attention, rnn=rnn)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, ids, lengths = _batch()
    target = torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_fn(net, batch):
        logits = net(*batch[:3]).float()
        return torch.nn.functional.cross_entropy(logits, batch[3]), logits.argmax(1), batch[3]

    stats = train_one_epoch(model, optimizer, [(x, ids, lengths, target)], loss_fn,
                            precision="fp32", clip_norm=10.0, progress=False)  # fmt: skip
    assert stats["steps"] == 1 and np.isfinite(stats["train_loss"])
    # every parameter is trained (none is left out of the graph), except the bias of a
    # softmax-gated ARNN / BRNN head: the softmax over positions cancels it (its gradient is 0
    # up to rounding)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p)]
    assert [n for n in unchanged if not n.endswith("head.bias")] == []
    assert all(p.grad is not None for p in model.parameters())


def test_box_masks_cover_the_cells_the_boxes_overlap():
    boxes = torch.tensor([
        [[8, 0, 16, 8], [-1, -1, -1, -1]],  # exactly one cell: row 0, column 1
        [[4, 4, 12, 12], [56, 56, 64, 64]],  # straddles four cells, plus the corner cell
        [[-1, -1, -1, -1], [-1, -1, -1, -1]],  # no box: uniform
    ])  # fmt: skip
    masks = box_masks(boxes, (8, 8), (64, 64))
    assert masks.shape == (3, 1, 8, 8)
    torch.testing.assert_close(masks.sum((1, 2, 3)), torch.ones(3))
    cells = [sorted(map(tuple, (m[0] > 0).nonzero().tolist())) for m in masks]
    assert cells[0] == [(0, 1)]
    assert cells[1] == [(0, 0), (0, 1), (1, 0), (1, 1), (7, 7)]
    assert len(cells[2]) == 64 and masks[1, 0, 0, 0] == pytest.approx(1 / 5)


def test_oracle_row_puts_the_masks_on_the_boxes(tmp_path):
    model = _model("oracle").eval()
    assert len(list(model.estimators.parameters())) == 0
    x, ids, lengths = _batch()
    boxes = torch.tensor([[[0, 0, 4, 4], [28, 28, 32, 32]]] * 4)  # 32 px image, 8x8 grid
    logits, masks = model(x, ids, lengths, return_masks=True, boxes=boxes)
    assert logits.shape == (4, 5) and masks.shape == (4, 2, 8, 8)
    assert masks[:, :, 0, 0].eq(0.5).all() and masks[:, :, 7, 7].eq(0.5).all()
    with pytest.raises(ValueError, match="boxes"):
        model(x, ids, lengths)
    # trained end to end on the generated set: its attention is on the objects
    metrics = train(_tiny_config(tmp_path, attention="oracle"))
    assert min(metrics["test_attention_correctness"]) > 4 * metrics["test_attention_chance"]
    with pytest.raises(UserError, match="boxes"):
        train(_tiny_config(tmp_path, dataset="easy_vqa",
                           easy_vqa_dir=str(_easy_vqa_folder(tmp_path / "easy")),
                           attention="oracle", out=str(tmp_path / "easy-run")))  # fmt: skip


def test_bf16_training_step():
    model = _model("arnn")
    optimizer = torch.optim.Adam(model.parameters())
    x, ids, lengths = _batch()

    def loss_fn(net, batch):
        logits = net(*batch[:3]).float()
        return torch.nn.functional.cross_entropy(logits, batch[3]), logits.argmax(1), batch[3]

    stats = train_one_epoch(model, optimizer, [(x, ids, lengths, torch.tensor([0, 1, 2, 3]))],
                            loss_fn, precision="bf16", clip_norm=None, progress=False)  # fmt: skip
    assert np.isfinite(stats["train_loss"])


def test_train_writes_metrics_and_resumes(tmp_path):
    config = _tiny_config(tmp_path, attention="arnn", epochs=2)
    metrics = train(config)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert set(saved["test_by_type"]) <= {"number", "other"}
    assert saved["test_relational"] is not None and saved["test_non_relational"] is not None
    assert len(saved["test_attention_correctness"]) == 2
    assert all(0 <= v <= 1 for v in saved["test_attention_correctness"])
    # a uniform mask's score is the boxes' share of the image: 4x4 objects on 32x32, 1 or 2 each
    assert 16 / 1024 <= saved["test_attention_chance"] <= 32 / 1024
    assert len(saved["history"]) == 2 and saved["epochs"] == 2
    assert saved["samples"]["val"] > 0 and saved["precision"] in ("fp32", "bf16")
    assert saved["scan_products"] == scan_products(saved["precision"])
    # the generated set has no file: its content is the run's data hash
    assert saved["provenance"]["data_sha256"] == read_dataset(config).content_sha256()
    assert train(config)["test_accuracy"] == metrics["test_accuracy"]  # finished: read back
    with pytest.raises(UserError, match="another configuration"):
        train(_tiny_config(tmp_path, attention="arnn", epochs=2, lr=0.5))


def test_curriculum_trains_the_non_relational_questions_first(tmp_path):
    config = _tiny_config(tmp_path, attention="arnn", epochs=2, curriculum_epochs=1, lr_step=1)
    data = E3Data(generate_sort_of_clevr(12, 4, image_size=32), config)
    relational = data.dataset.train.relational
    assert not relational[data.curriculum_idx].any()
    assert len(data.curriculum_idx) == (~relational[data.train_idx]).sum() > 0
    metrics = train(config)
    steps = [h["step"] for h in metrics["history"]]
    assert steps == [-(-len(data.curriculum_idx) // 16), steps[0] + -(-len(data.train_idx) // 16)]
    # the lr decays count from the end of the curriculum
    assert [h["lr"] for h in metrics["history"]] == [config.lr, config.lr]
    assert lr_at(config, 2) == config.lr * config.lr_decay
    # runs without a curriculum keep their old fingerprint (they resume)
    assert "curriculum_epochs" not in _tiny_config(tmp_path).fingerprint()
    assert config.fingerprint()["curriculum_epochs"] == 1
    with pytest.raises(UserError, match="relational"):
        train(_tiny_config(tmp_path, dataset="easy_vqa", curriculum_epochs=1,
                           easy_vqa_dir=str(_easy_vqa_folder(tmp_path / "easy")),
                           out=str(tmp_path / "easy-run")))  # fmt: skip


def test_answer_prior_answers_from_the_question_alone(tmp_path):
    data = E3Data(generate_sort_of_clevr(30, 10, image_size=32), _tiny_config(tmp_path))
    train_split, test = data.dataset.train, data.dataset.test
    # by hand: the most frequent training answer of each question text (ties: first by name)
    counts: dict[str, dict[str, int]] = {}
    for i in data.train_idx:
        per = counts.setdefault(train_split.questions[i], {})
        per[train_split.answers[i]] = per.get(train_split.answers[i], 0) + 1
    everything: dict[str, int] = {}
    for per in counts.values():
        for a, n in per.items():
            everything[a] = everything.get(a, 0) + n

    def top(c):
        return sorted(c, key=lambda a: (-c[a], a))[0]

    hits = [top(counts.get(test.questions[i]) or everything) == test.answers[i]
            for i in data.test_idx]  # fmt: skip
    prior = answer_prior(data)
    assert prior["accuracy"] == pytest.approx(np.mean(hits))
    relational = test.relational[data.test_idx]
    assert prior["relational"] == pytest.approx(np.mean(np.array(hits)[relational]))
    assert set(prior["by_type"]) <= {"number", "other"}
    # scored on training questions: every question is seen, its own majority answer is guessed
    data.dataset.test = train_split
    data.test_idx = data.train_idx[:20]
    assert answer_prior(data)["accuracy"] == pytest.approx(
        np.mean(
            [top(counts[train_split.questions[i]]) == train_split.answers[i] for i in data.test_idx]
        )
    )


def test_reproduce_with_a_curriculum_budget_runs_the_relational_set(tmp_path):
    import dataclasses

    from attentionrnn.experiments.e3.experiment import BUDGETS, reproduce

    budget = dataclasses.replace(BUDGETS["tiny"], curriculum_epochs=1, epochs=2,
                                 dataset_epochs=())  # fmt: skip
    summary = reproduce(tmp_path, budget, methods=("none",), jobs=1, threads=1,
                        progress=False, figure=False)  # fmt: skip
    assert list(summary["results"]) == ["sort_of_clevr"]
    metrics = json.loads((tmp_path / "runs/sort_of_clevr/none/seed0/metrics.json").read_text())
    assert metrics["config"]["curriculum_epochs"] == 1 and metrics["epochs"] == 2
    with pytest.raises(UserError, match="curriculum.*--datasets sort_of_clevr"):
        reproduce(tmp_path, budget, datasets=("easy_vqa",), methods=("none",))
    assert BUDGETS["cpu-curriculum"].curriculum_epochs < BUDGETS["cpu-curriculum"].epochs


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match="query_fusion"):
        _tiny_config(tmp_path, query_fusion="concat").check()
    with pytest.raises(UserError, match="batch_size"):
        _tiny_config(tmp_path, batch_size=1).check()
    with pytest.raises(UserError, match="val_images"):
        train(_tiny_config(tmp_path, val_images=12))


# ------------------------------------------------------------------------------------------
# command line


def test_cli_train_reproduce_table(tmp_path, capsys):
    run = tmp_path / "one"
    assert main(["e3", "train", "--dataset", "sort_of_clevr", "--attention", "mcb", "--out",
                 str(run), "--epochs", "1", "--generated-train-images", "10",
                 "--generated-test-images", "3", "--val-images", "2", "--image-size", "32",
                 "--blocks", "2", "--channels", "8", "--mcb-dim", "32", "--no-progress",
                 "--threads", "1", "--precision", "fp32"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert 0 <= printed["test_accuracy"] <= 1 and printed["precision"] == "fp32"

    out = tmp_path / "e3-tiny"
    assert main(["e3", "reproduce", "--budget", "tiny", "--out", str(out), "--datasets",
                 "sort_of_clevr", "--methods", "none", "arnn", "oracle", "--jobs", "1",
                 "--threads", "1", "--no-progress", "--precision", "fp32"]) == 0  # fmt: skip
    text = (out / "results.md").read_text()
    assert "| ARNN (bi) | 0 |" in text and "relational" in text and "uniform mask" in text
    assert "| question only (prior) | – |" in text
    assert text.index("| ARNN (bi) |") < text.index("| oracle mask (named objects) |")
    assert (out / "curves_sort_of_clevr.png").is_file()
    assert (out / "masks_sort_of_clevr.png").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]["sort_of_clevr"]) == {"none", "arnn", "oracle"}
    # the budget's per-dataset length: tiny trains 2 epochs, but 1 on the generated set
    assert summary["results"]["sort_of_clevr"]["arnn"]["epochs"] == [1]
    recorded = summary["answer_prior"]["sort_of_clevr"]
    assert 0 <= recorded["accuracy"] <= 1
    # runs recorded before the prior was: the table computes it from their data
    for metrics_file in out.glob("runs/*/*/*/metrics.json"):
        m = json.loads(metrics_file.read_text())
        del m["test_answer_prior"]
        metrics_file.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["e3", "table", str(out), "--no-figures"]) == 0
    assert "ARNN (bi)" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["answer_prior"]["sort_of_clevr"] == recorded


def test_table_tests_every_row_against_mcb_per_glimpse(tmp_path):
    """The table's one statistical rule: per glimpse and overall, each row against MCB with
    Welch's test (scipy), the 95 % interval, a difference called only at p < 0.05."""
    from scipy import stats

    from attentionrnn.experiments.e3.experiment import assemble

    values = {"mcb": ([0.60, 0.62, 0.61], [0.05, 0.06, 0.04]),
              "arnn": ([0.80, 0.84, 0.82], [0.15, 0.12, 0.09])}  # fmt: skip
    for row, (accuracies, glimpse2) in values.items():
        for seed, (acc, g2) in enumerate(zip(accuracies, glimpse2, strict=True)):
            run = tmp_path / "runs" / "sort_of_clevr" / row / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({
                "test_accuracy": acc, "val_accuracy": acc, "test_by_type": {"other": acc},
                "test_relational": acc - 0.1, "test_non_relational": acc + 0.1,
                "test_attention_correctness": [0.03, g2], "test_attention_chance": 0.021,
                "test_answer_prior": {"accuracy": 0.5, "by_type": {"other": 0.5}},
                "precision": "fp32", "parameters": 10, "epochs": 3, "training_time_s": 60.0,
            }))  # fmt: skip
    summary = assemble(tmp_path, "curriculum", figure=False)
    arnn = summary["results"]["sort_of_clevr"]["arnn"]
    assert arnn["correctness_by_glimpse"]["glimpse2"]["values"] == [0.15, 0.12, 0.09]
    assert arnn["test_accuracy"]["ci95"] == pytest.approx(
        stats.t.interval(0.95, 2, loc=0.82, scale=stats.sem([0.80, 0.84, 0.82])))
    tests = summary["comparisons"]["sort_of_clevr"]
    assert set(tests) == {"arnn"}  # MCB is the reference
    welch = stats.ttest_ind([0.15, 0.12, 0.09], [0.05, 0.06, 0.04], equal_var=False)
    assert tests["arnn"]["glimpse2"]["p"] == pytest.approx(welch.pvalue)
    assert tests["arnn"]["glimpse2"]["called"] == (welch.pvalue < 0.05)
    assert tests["arnn"]["glimpse1"]["p"] is None  # both sides without spread: no test
    text = (tmp_path / "results.md").read_text()
    assert "Against MCB attention (conv): difference of the means (row − MCB, percentage" in text
    assert "| MCB attention (conv) | 0,1,2 | [58.5, 63.5] |" in text
    assert "**+21.0** (p " in text and "+0.0 (n/a)" in text  # percentage points


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["e3", "train", "--dataset", "vqa2", "--out", str(tmp_path / "r")]) == 2
    assert "VQA v2 needs a folder" in capsys.readouterr().err
    assert main(["e3", "table", str(tmp_path)]) == 2
    assert "no runs/ folder" in capsys.readouterr().err
