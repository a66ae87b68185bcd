"""Experiment E4 (image editing with attention masks): data, exact edits, model, losses, one
training step per mask head, metrics on hand-made cases, training and the CLI end to end.

Everything runs on tiny data made here: a few MREF images of 48 px from the synthetic digit pool
of ``conftest.py``, and a hand-made CelebA folder.
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
from attentionrnn.engine.state import file_sha256
from attentionrnn.experiments.e4.config import E4Config
from attentionrnn.experiments.e4.data import (
    CelebAEdits,
    DigitEdits,
    e4_cache,
    load_task,
    render_recolour,
)
from attentionrnn.experiments.e4.evaluate import evaluate, train_judge
from attentionrnn.experiments.e4.losses import discriminator_loss, generator_loss
from attentionrnn.experiments.e4.metrics import (
    edit_success,
    kid,
    mask_correctness,
    preservation_l1,
)
from attentionrnn.experiments.e4.model import E4_MASKS, AttributeClassifier, Discriminator, Editor
from attentionrnn.experiments.e4.train import _Optimizers, _step, train
from tests.conftest import synthetic_digits
from tests.e4_support import e4_config, edit_batch

pytestmark = pytest.mark.usefixtures("e4_synthetic")


@pytest.fixture(scope="module")
def task(mref48) -> DigitEdits:
    return DigitEdits(mref48, synthetic_digits())


# ------------------------------------------------------------------------------------------
# data and the exact edit


def test_exact_edit_changes_only_the_queried_digit(task):
    b = edit_batch(task, 6)
    assert b.x.shape == b.truth.shape == (6, 3, 48, 48) and b.query.shape == (6, 10)
    assert (b.targets != b.labels).all()  # always another colour
    idx = task.indices("train")[:6]
    alpha = task.alpha(idx)
    assert np.array_equal(alpha > 0, task.data.stroke_masks(idx))  # opacity = the digit's pixels
    outside = ~b.region[:, None].expand_as(b.x)
    assert torch.equal(b.truth[outside], b.x[outside])
    inside = b.region[:, None].expand_as(b.x)
    assert (b.truth[inside] != b.x[inside]).any()
    # the fully opaque pixels take the new palette colour (plus the digit's own noise offset)
    palette = torch.from_numpy(task.palette).float() / 255
    for k in range(6):
        core = torch.from_numpy(alpha[k] == 1)
        if core.any():
            shift = b.truth[k][:, core] - b.x[k][:, core]
            want = palette[b.targets[k, 0]] - palette[b.labels[k, 0]]
            keep = (b.truth[k][:, core] > 0) & (b.truth[k][:, core] < 1)  # not clipped
            assert torch.allclose(shift[keep], want[:, None].expand_as(shift)[keep], atol=1.5 / 255)


def test_render_recolour_same_colour_is_identity():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    alpha = rng.uniform(0, 1, (2, 5, 5))
    colour = np.array([[16, 166, 81], [224, 224, 224]])
    assert np.array_equal(render_recolour(image, alpha, colour, colour), image)


def test_digit_file_of_other_digits_is_refused(mref48):
    other = synthetic_digits(per_class=2)
    with pytest.raises(UserError, match="--mnist"):
        DigitEdits(mref48, other)
    with pytest.raises(UserError, match="dataset must be one of"):
        load_task("mnist")


def _celeba(tmp_path: Path, n: int = 6) -> Path:
    from PIL import Image

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Smiling", "Young"]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(
            root / "img_align_celeba" / name
        )
        rows.append(name + " " + " ".join(str(v) for v in rng.choice([-1, 1], len(names))))
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(names) + "\n"
                                               + "\n".join(rows) + "\n")  # fmt: skip
    return root


def test_celeba_reader_and_its_errors(tmp_path):
    root = _celeba(tmp_path)
    data = CelebAEdits(root, image_size=16)
    assert data.images.shape == (6, 16, 16, 3) and data.labels.shape == (6, 5)
    assert data.classes == (2,) * 5 and set(data.labels.ravel()) <= {0, 1}
    assert sorted(np.concatenate([data.indices(s) for s in ("train", "val", "test")])) == list(
        range(6)
    )
    idx = np.arange(6)
    targets = data.draw_targets(idx, np.random.default_rng(0))
    assert ((targets != data.labels).sum(1) == 1).all()  # one attribute flipped per edit
    b = data.batch(idx, targets)
    assert b.x.shape == (6, 3, 16, 16) and b.query is None and b.truth is None
    assert (b.targets[torch.arange(6), b.changed] != b.labels[torch.arange(6), b.changed]).all()

    with pytest.raises(UserError, match="--celeba-dir"):
        CelebAEdits(None)
    with pytest.raises(UserError, match="no such CelebA folder"):
        CelebAEdits(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no attribute"):
        CelebAEdits(root, attributes=("Bald",))
    (root / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(UserError, match="000002.jpg.*missing"):
        CelebAEdits(root)
    (root / "list_attr_celeba.txt").unlink()
    with pytest.raises(UserError, match="missing list_attr_celeba.txt"):
        CelebAEdits(root)


# ------------------------------------------------------------------------------------------
# model and losses


@pytest.mark.parametrize("mask", E4_MASKS)
def test_editor_and_discriminator_shapes(mask):
    g = Editor((5,), 10, mask, channels=4, mask_hidden=4)
    d = Discriminator((5,), 10, channels=4)
    x, q = torch.rand(2, 3, 48, 40), torch.eye(10)[[3, 7]]
    edited, masks = g(x, torch.tensor([[1], [4]]), q)
    assert edited.shape == x.shape and masks.shape == (2, 1, 12, 10)
    assert 0 <= float(masks.detach().min()) and float(masks.detach().max()) <= 1
    edited = edited.detach()
    assert 0 <= float(edited.min()) and float(edited.max()) <= 1
    score, logits = d(edited, q)
    assert score.shape == (2, 1, 6, 5) and logits.shape == (2, 5)
    assert g.reconstruct(x).shape == x.shape
    with pytest.raises(ValueError, match="targets must be"):
        g(x, torch.tensor([1, 4]), q)
    with pytest.raises(ValueError, match="query must be given"):
        g(x, torch.tensor([[1], [4]]))
    with pytest.raises(ValueError, match="divisible by 4"):
        g(torch.rand(2, 3, 30, 30), torch.tensor([[1], [4]]), q)
    # several attributes, no query (the CelebA layout)
    g2 = Editor((2, 2, 2), None, mask, channels=4, mask_hidden=4)
    edited, masks = g2(x, torch.zeros(2, 3, dtype=torch.long))
    assert masks.shape == (2, 3, 12, 10)


def test_losses_are_finite_and_reach_every_part(task):
    b = edit_batch(task)
    g = Editor((5,), 10, "arnn", channels=4, mask_hidden=4)
    d = Discriminator((5,), 10, channels=4)
    loss, parts, edited, masks = generator_loss(g, d, b.x, b.labels, b.targets, b.query)
    assert set(parts) == {"g_adv", "g_cls", "rec", "cycle", "mask"}
    assert all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    for module in (g.encoder, g.transformers[0].body, g.transformers[0].mask, g.reconstructor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    d_loss, d_parts = discriminator_loss(d, b.x, edited, b.labels, b.query)
    assert set(d_parts) == {"d_adv", "d_cls", "d_accuracy"} and torch.isfinite(d_loss)
    # the hinge: no loss for real scores >= 1 and fake scores <= -1
    d.adversarial.weight.data.zero_()
    d.adversarial.bias.data.fill_(1.0)
    _, parts_real = discriminator_loss(d, b.x, edited, b.labels, b.query)
    assert float(parts_real["d_adv"].detach()) == pytest.approx(2.0)  # real 0 + fake relu(1 + 1)


@pytest.mark.parametrize("mask", E4_MASKS)
def test_one_generator_and_one_discriminator_step(task, mask):
    torch.manual_seed(0)
    g = Editor((5,), 10, mask, channels=4, mask_hidden=4)
    d = Discriminator((5,), 10, channels=4)
    opt = _Optimizers(
        torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    )
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    b = edit_batch(task)
    stats = _step(g, d, opt, b.x, b, E4Config().weights(), "fp32")
    assert {"g_loss", "d_loss", "d_accuracy", "cycle", "mask"} <= set(stats)
    assert all(np.isfinite(v) for v in stats.values())
    mask_params = list(g.transformers[0].mask.parameters())
    changed = [not torch.equal(p, q) for p, q in zip(g.parameters(), before_g, strict=True)]
    assert any(changed) and all(p.grad is None for p in d.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(d.parameters(), before_d, strict=True))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mask_params)
    state = opt.state_dict()
    assert set(state) == {"g", "d"} and len(opt.param_groups) == 2
    opt.load_state_dict(state)


# ------------------------------------------------------------------------------------------
# metrics on hand-made cases


def test_metrics_of_a_perfect_edit_and_an_edit_everywhere():
    source = torch.zeros(2, 3, 8, 8)
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[:, 2:4, 2:4] = True
    perfect = source.clone()
    perfect[:, 0][region] = 1.0  # the region turns red, nothing else moves
    everywhere = torch.ones_like(source)
    assert preservation_l1(perfect, source, region).tolist() == [0.0, 0.0]
    assert preservation_l1(everywhere, source, region).tolist() == [1.0, 1.0]

    on_digit = region.float()[:, None, ::2, ::2]  # a mask on the 4×4 grid covering the region
    assert mask_correctness(region.float()[:, None], region).tolist() == [1.0, 1.0]
    uniform = torch.ones(2, 1, 4, 4)
    assert mask_correctness(uniform, region).tolist() == pytest.approx([4 / 64] * 2)
    assert float(mask_correctness(on_digit, region).min()) > 4 / 64

    logits = torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])
    targets = torch.tensor([[1], [2]])
    assert edit_success(logits, targets, torch.zeros(2, dtype=torch.long), (3,)).tolist() == [1, 0]
    # two attributes: each sample is judged on the attribute its edit changed
    logits2 = torch.tensor([[5.0, 0.0, 0.0, 5.0], [5.0, 0.0, 5.0, 0.0]])
    success = edit_success(logits2, torch.tensor([[0, 1], [1, 0]]), torch.tensor([1, 0]), (2, 2))
    assert success.tolist() == [1.0, 0.0]


def test_kid_is_zero_for_one_distribution_and_large_for_another():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same, near, far = (kid(a, b + shift, subset_size=100) for shift in (0.0, 0.5, 2.0))
    assert abs(same) < 0.1 * near and near < far  # an unbiased estimate: ~0, either sign
    assert np.isnan(kid(a[:1], b[:1]))


def test_judge_is_trained_once_per_data_cache(task, tmp_path, monkeypatch):
    """A second run folder loads the judge from the data cache (the same network, not a second
    training); another setting is another judge."""
    config = e4_config(tmp_path)
    idx = {s: task.indices(s) for s in ("train", "val", "test")}
    first, stats = train_judge(task, idx, config, tmp_path / "run1")
    shared = list((tmp_path / "cache" / "e4" / "classifiers").glob("judge-*.pt"))
    assert len(shared) == 1 and (tmp_path / "run1" / "judge.pt").is_file()
    monkeypatch.setattr(torch.optim, "Adam", None)  # any training would fail here
    second, stats2 = train_judge(task, idx, config, tmp_path / "run2")
    assert stats2 == stats and (tmp_path / "run2" / "judge.pt").is_file()
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters(),
                                                 strict=True))  # fmt: skip
    with pytest.raises(TypeError):  # another width: not in the cache, so it would train
        train_judge(task, idx, dataclasses.replace(config, judge_channels=3), tmp_path / "run3")


def test_evaluate_the_exact_edit_and_the_judge(task, tmp_path):
    config = e4_config(tmp_path)
    idx = {s: task.indices(s) for s in ("train", "val", "test")}
    judge, stats = train_judge(task, idx, config, tmp_path)
    assert (tmp_path / "judge.pt").is_file() and 0 <= stats["val_accuracy"] <= 1
    again, stats2 = train_judge(task, idx, config, tmp_path)  # loaded, not trained again
    assert stats2 == stats
    assert isinstance(judge, AttributeClassifier) and judge.features(
        torch.rand(2, 3, 48, 48), torch.eye(10)[:2]
    ).shape == (2, 4 * config.judge_channels)  # mean and query pooling of 2c channels
    test = idx["test"]
    targets = task.draw_targets(test, np.random.default_rng(0))
    g = Editor((5,), 10, "ctx", channels=4, mask_hidden=4)
    exact = evaluate(g, judge, task, test, targets, 64, truth=True)
    assert exact["preservation_l1"] == 0 and exact["truth_l1"] == 0
    assert exact["mask_correctness"] == pytest.approx(1.0)
    assert abs(exact["kid"]) < 1e-3
    learnt = evaluate(g, judge, task, test, targets, 64)
    assert learnt["preservation_l1"] > 0 and learnt["mask_correctness"] < 1
    # chance level: a uniform mask scores the region's share of the image; the exact edit's
    # mask is the stroke region, so its mean is that share too (old runs' table reads it there)
    assert 0 < learnt["uniform_mask_correctness"] < learnt["uniform_mask_correctness_box"] < 1
    assert exact["mask_mean"] == pytest.approx(learnt["uniform_mask_correctness"])
    # what the query does: the exact edit's mask is the queried digit alone, changes nothing of
    # the other digits; a learnt mask's shares on the three regions sum to 1
    assert exact["mask_query_ratio"] == pytest.approx(1.0) and exact["mask_others"] == 0
    assert exact["leak_l1"] == 0 and exact["mask_background"] == pytest.approx(0.0)
    shares = learnt["mask_correctness"] + learnt["mask_others"] + learnt["mask_background"]
    assert shares == pytest.approx(1.0, abs=1e-6)
    assert 0 < learnt["uniform_query_ratio"] < 1 and 0 < learnt["uniform_mask_others"] < 1
    assert learnt["leak_l1"] >= 0


# ------------------------------------------------------------------------------------------
# training and the command line


def test_train_resume_and_refusal(tmp_path):
    config = e4_config(tmp_path, mask="brnn", epochs=2)
    metrics = train(config)
    out = Path(config.out)
    for name in ("metrics.json", "best.pt", "judge.pt", "samples.png"):
        assert (out / name).is_file()
    assert len(metrics["history"]) == 2 and metrics["epochs"] == 2
    assert metrics["best_epoch"] == 2  # select="last": the last epoch's weights are tested
    assert {"val_edit_success", "val_kid", "d_loss", "cycle"} <= set(metrics["history"][0])
    for key in ("test_edit_success", "test_preservation_l1", "test_mask_correctness"):
        assert 0 <= metrics[key] <= 1
    assert metrics["exact_edit"]["preservation_l1"] == 0
    data_file = e4_cache(config.data_dir) / metrics["data"]["file"]  # the generated task
    assert metrics["provenance"]["data_sha256"] == file_sha256(data_file)
    assert train(config) == json.loads((out / "metrics.json").read_text())  # finished: read back
    with pytest.raises(UserError, match="another configuration"):
        train(e4_config(tmp_path, mask="brnn", epochs=2, lr=1e-3))


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    import attentionrnn.experiments.e4.train as e4train

    reference = train(e4_config(tmp_path / "ref", mask="arnn", epochs=2, samples=0))
    config = e4_config(tmp_path / "cut", mask="arnn", epochs=2, samples=0)
    steps, calls = e4train._step, {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] > reference["steps"] // 2:  # stop inside epoch 2
            raise KeyboardInterrupt
        return steps(*args, **kw)

    monkeypatch.setattr(e4train, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(e4train, "_step", steps)
    resumed = train(config)
    timing = {"training_time_s", "seconds_per_epoch", "wall_time_s", "history", "config"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in reference.items() if k not in timing
    }


def test_a_longer_budget_extends_a_finished_run(tmp_path):
    from attentionrnn.engine.runs import finished
    from attentionrnn.engine.state import atomic_save, load_checkpoint

    reference = train(e4_config(tmp_path / "ref", mask="arnn", epochs=3, samples=0))
    short = e4_config(tmp_path / "ext", mask="arnn", epochs=2, samples=0)
    train(short)
    out, longer = Path(short.out), dataclasses.replace(short, epochs=3)
    assert finished(out, short) and not finished(out, longer)
    extended = train(longer)
    assert finished(out, longer) and extended["epochs"] == 3
    timing = {"training_time_s", "seconds_per_epoch", "wall_time_s", "history", "config"}
    assert {k: v for k, v in extended.items() if k not in timing} == {
        k: v for k, v in reference.items() if k not in timing
    }
    clock = {"seconds", "elapsed"}
    assert [{k: v for k, v in h.items() if k not in clock} for h in extended["history"]] == [
        {k: v for k, v in h.items() if k not in clock} for h in reference["history"]
    ]
    # a run whose tested weights were not its last epoch's cannot go on from them
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["state"]["best_epoch"] = 0
    atomic_save(ckpt, out / "checkpoint.pt")
    with pytest.raises(UserError, match="cannot extend"):
        train(dataclasses.replace(short, epochs=4))
    with pytest.raises(UserError, match="another configuration"):  # fewer epochs: another run
        train(dataclasses.replace(short, epochs=1))


def test_train_on_a_celeba_folder(tmp_path):
    root = _celeba(tmp_path, n=10)
    config = e4_config(tmp_path, dataset="celeba", celeba_dir=str(root), canvas=16, samples=2)
    metrics = train(config)
    assert metrics["dataset"] == "celeba" and metrics["samples"] == {"train": 8, "val": 1,
                                                                      "test": 1}  # fmt: skip
    assert 0 <= metrics["test_edit_success"] <= 1 and metrics["exact_edit"] is None
    assert metrics["test_preservation_l1"] is None  # no known edit region on faces
    assert (Path(config.out) / "samples.png").is_file()


def test_cli_train_reproduce_table(tmp_path, capsys):
    run = tmp_path / "one"
    argv = ["e4", "train", "--out", str(run), "--mask", "arnn", "--epochs", "1", "--images",
            "10", "--canvas", "48", "--batch-size", "8", "--val-samples", "8", "--test-samples",
            "8", "--channels", "4", "--d-channels", "4", "--mask-hidden", "4", "--judge-epochs",
            "1", "--judge-channels", "4", "--threads", "1", "--no-progress", "--precision",
            "bf16"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "bf16" and printed["epochs"] == 1

    out = tmp_path / "e4-tiny"
    assert main(["e4", "reproduce", "--budget", "tiny", "--out", str(out), "--jobs", "1",
                 "--threads", "1", "--no-progress", "--precision", "fp32"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    for label in ("conv mask (CTX)", "ARNN (bi)", "BRNN", "exact edit", "uniform mask (chance)",
                  "Judge accuracy"):  # fmt: skip
        assert label in table
    for name in ("results.md", "results.json", "curves_mref.png", "samples_mref.png"):
        assert (out / name).is_file()
    assert main(["e4", "table", str(out), "--no-figures"]) == 0
    assert "ARNN (bi)" in capsys.readouterr().out


def test_table_tests_every_head_against_ctx(tmp_path):
    """E4's table under the one statistical rule: each head against CTX (Welch, scipy), the 95 %
    interval of edit success, a difference called only at p < 0.05."""
    from scipy import stats

    from attentionrnn.experiments.e4.experiment import assemble

    success = {"ctx": [0.30, 0.32, 0.31], "arnn": [0.50, 0.55, 0.45]}
    for head, values in success.items():
        for seed, value in enumerate(values):
            run = tmp_path / "runs" / "mref" / head / f"seed{seed}"
            run.mkdir(parents=True)
            metrics = {f"test_{k}": 0.2 for k in ("preservation_l1", "truth_l1",
                       "mask_correctness", "mask_correctness_box", "mask_others", "leak_l1",
                       "kid")}  # fmt: skip
            metrics.update(test_edit_success=value, test_mask_query_ratio=0.18 + 0.01 * seed,
                           exact_edit=None, judge={"test_accuracy": 0.99}, precision="fp32",
                           parameters=10, epochs=2, training_time_s=60.0)  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics))
    summary = assemble(tmp_path, "plateau", figure=False)
    tests = summary["comparisons"]["mref"]
    welch = stats.ttest_ind(success["arnn"], success["ctx"], equal_var=False)
    assert set(tests) == {"arnn"} and tests["arnn"]["edit_success"]["p"] == pytest.approx(
        welch.pvalue)
    same = tests["arnn"]["mask_query_ratio"]  # the same values on both sides: nothing called
    assert same["difference"] == pytest.approx(0.0, abs=1e-12) and not same["called"]
    # 0.2 on every seed of both heads: no spread, no test (a float mean of 0.2s is not 0.2)
    assert tests["arnn"]["mask_correctness"]["p"] is None
    text = (tmp_path / "results.md").read_text()
    assert "Against conv mask (CTX): difference of the means (row − CTX" in text
    ci = stats.t.interval(0.95, 2, loc=50.0, scale=stats.sem([50.0, 55.0, 45.0]))
    assert f"| ARNN (bi) | 0,1,2 | [{ci[0]:.1f}, {ci[1]:.1f}] | **+19.0** (p " in text


def test_cli_errors(tmp_path, capsys):
    assert main(["e4", "train", "--out", str(tmp_path / "r"), "--canvas", "50"]) == 2
    assert "divisible by 4" in capsys.readouterr().err
    assert main(["e4", "train", "--out", str(tmp_path / "r"), "--canvas", "40"]) == 2
    assert "canvas must be >= 46" in capsys.readouterr().err
    assert main(["e4", "train", "--out", str(tmp_path / "r"), "--dataset", "celeba",
                 "--celeba-dir", str(tmp_path / "none")]) == 2  # fmt: skip
    assert "no such CelebA folder" in capsys.readouterr().err
    assert main(["e4", "train", "--out", str(tmp_path / "r"), "--lr", "-1"]) == 2
    assert "lr must be a positive number" in capsys.readouterr().err
    assert main(["e4", "table", str(tmp_path / "empty")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err
