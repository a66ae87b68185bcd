"""E4's screening candidates (issue 34: what makes a mask head pick the queried digit): the
multiplicative query fusion of the mask heads, the frozen teacher classifier of the generator's
extra classification loss, the other digits' kept colours, the screening budgets and the
validation curves they are decided on.

Tiny data as in ``test_e4.py``: a few MREF images of 48 px from the synthetic digit pool.
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
from attentionrnn.engine.runs import row_seeds
from attentionrnn.experiments.e4.config import JUDGE_SEED, TEACHER_SEED, E4Config
from attentionrnn.experiments.e4.data import DigitEdits, partner_samples
from attentionrnn.experiments.e4.evaluate import train_judge, train_teacher
from attentionrnn.experiments.e4.experiment import BUDGETS, EXPERIMENT
from attentionrnn.experiments.e4.locate import locate_parameters, train_locate
from attentionrnn.experiments.e4.losses import (
    LossWeights,
    generator_loss,
    identity_logits,
    locate_loss,
    mask_overlap,
)
from attentionrnn.experiments.e4.model import (
    E4_MASKS,
    AttributeClassifier,
    Discriminator,
    Editor,
    Transformer,
)
from attentionrnn.experiments.e4.train import build_model, split_indices, train
from attentionrnn.layers.baselines import ContextAttention
from tests.conftest import synthetic_digits
from tests.e4_support import e4_config, edit_batch

pytestmark = pytest.mark.usefixtures("e4_synthetic")


@pytest.fixture(scope="module")
def task(mref48) -> DigitEdits:
    return DigitEdits(mref48, synthetic_digits())


def _config(tmp_path: Path, **kw) -> E4Config:
    return e4_config(tmp_path, **{"samples": 0, **kw})


# ------------------------------------------------------------------------------------------
# the query fusion of the mask heads


@pytest.mark.parametrize("mask", E4_MASKS)
def test_mul_fusion_gives_another_mask_from_the_same_weights(mask):
    torch.manual_seed(0)
    add = Transformer(8, 15, mask, mask_hidden=4)
    mul = Transformer(8, 15, mask, mask_hidden=4, query_fusion="mul")
    mul.load_state_dict(add.state_dict())  # the same parameters: only the fusion differs
    assert add.mask.query_fusion == "add" and mul.mask.query_fusion == "mul"
    f = torch.randn(2, 8, 6, 6)
    c1 = torch.cat([torch.eye(5)[[1, 2]], torch.eye(10)[[3, 4]]], 1)
    c2 = torch.cat([torch.eye(5)[[1, 2]], torch.eye(10)[[7, 8]]], 1)  # another queried digit
    _, a_add = add(f, c1)
    _, a_mul = mul(f, c1)
    _, a_mul2 = mul(f, c2)
    assert not torch.allclose(a_add, a_mul)  # the same weights, another mask
    assert not torch.allclose(a_mul, a_mul2)  # the query moves the multiplicative mask


def test_ctx_mul_fusion_is_the_product_of_conv_and_query_term():
    torch.manual_seed(0)
    att = ContextAttention(6, hidden_channels=4, query_channels=3, query_fusion="mul")
    x, q = torch.randn(2, 6, 5, 5), torch.randn(2, 3)
    _, mask = att(x, q, return_mask=True)
    e = torch.relu(att.encoder(x) * att.query_proj(q)[:, :, None, None])
    assert torch.allclose(mask, torch.sigmoid(att.head(e)), atol=1e-6)
    assert "query_fusion='mul'" in repr(att) and "query_fusion" not in repr(
        ContextAttention(6, query_channels=3)
    )
    with pytest.raises(ValueError, match="query_fusion"):
        ContextAttention(6, query_channels=3, query_fusion="concat")


def test_default_model_is_todays():
    """The default config builds the additive heads with the parameters of before the
    candidates existed (no teacher, no new parameter)."""
    config = E4Config()
    assert config.query_fusion == "add" and config.w_teacher == 0 and config.w_keep == 0
    assert config.weights() == LossWeights(1.0, 10.0, 10.0, 0.1)
    assert not {"query_fusion", "w_teacher", "w_keep", "edit_query", "w_apart",
                "w_identify", "locate_steps", "locate_lr"} & set(
        config.fingerprint()
    )
    task = type("T", (), {"classes": (5,), "query_channels": 10})()
    for mask in E4_MASKS:
        net = build_model(dataclasses.replace(config, mask=mask, channels_last=False), task)
        assert all(t.mask.query_fusion == "add" for t in net.editor.transformers)
    mul = dataclasses.replace(config, query_fusion="mul")
    assert mul.fingerprint()["query_fusion"] == "mul"


# ------------------------------------------------------------------------------------------
# the teacher


def test_teacher_term_reaches_the_editor_but_not_the_teacher(task):
    torch.manual_seed(0)
    b = edit_batch(task)
    g = Editor((5,), 10, "arnn", channels=4, mask_hidden=4)
    d = Discriminator((5,), 10, channels=4)
    teacher = AttributeClassifier((5,), 10, channels=4).eval().requires_grad_(False)
    plain = LossWeights()
    base, parts, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, plain, teacher)
    assert "g_teacher" not in parts  # weight 0: the teacher is not even asked
    w = dataclasses.replace(plain, teacher=2.0)
    loss, parts, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, teacher)
    expected = base + 2.0 * parts["g_teacher"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    parts["g_teacher"].backward()
    for module in (g.encoder, g.transformers[0].mask, g.reconstructor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in d.parameters())  # the teacher term does not go through D


def test_teacher_is_its_own_network_never_the_judge(task, tmp_path):
    config = _config(tmp_path, w_teacher=1.0)
    idx = split_indices(task, config)
    judge, _ = train_judge(task, idx, config, tmp_path)
    teacher, stats = train_teacher(task, idx, config, tmp_path)
    assert teacher is not judge and (tmp_path / "teacher.pt").is_file()
    assert (tmp_path / "judge.pt").is_file() and 0 <= stats["test_accuracy"] <= 1
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(teacher.parameters(), judge.parameters(),
                                                     strict=True))  # fmt: skip
    again, _ = train_teacher(task, idx, config, tmp_path)  # loaded from teacher.pt
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), teacher.parameters(),
                                                 strict=True))  # fmt: skip
    # another seed is another teacher (the cache is keyed by the seed)
    other, _ = train_teacher(task, idx, dataclasses.replace(config, teacher_seed=7), tmp_path)
    assert any(not torch.equal(p, q) for p, q in zip(other.parameters(), teacher.parameters(),
                                                     strict=True))  # fmt: skip
    with pytest.raises(UserError, match="judge"):
        train_teacher(task, idx, dataclasses.replace(config, teacher_seed=JUDGE_SEED), tmp_path)
    assert TEACHER_SEED != JUDGE_SEED


def test_tiny_teacher_run_records_its_term_and_the_validation_shares(tmp_path):
    metrics = train(_config(tmp_path, mask="ctx", epochs=2, w_teacher=1.0, query_fusion="mul"))
    assert set(metrics["teacher"]) == {"val_accuracy", "history", "test_accuracy"}
    assert metrics["config"]["query_fusion"] == "mul" and metrics["config"]["w_teacher"] == 1.0
    for epoch in metrics["history"]:
        assert np.isfinite(epoch["g_teacher"])
        # the screening's curves: the validation mask shares of every epoch
        shares = [epoch[f"val_mask_{k}"] for k in ("correctness", "others", "background")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
        assert 0 <= epoch["val_mask_query_ratio"] <= 1
    assert (Path(metrics["config"]["out"]) / "teacher.pt").is_file()


# ------------------------------------------------------------------------------------------
# the other digits' kept colours


def test_partner_is_another_sample_of_the_same_image():
    image_index = np.array([3, 0, 3, 1, 3, 0, 2])
    partner = partner_samples(image_index)
    assert partner.tolist() == [2, 5, 4, -1, 0, 1, -1]  # image 3: 0 -> 2 -> 4 -> 0; 1, 2 alone
    assert partner_samples(np.array([], dtype=np.int64)).tolist() == []


def test_batch_names_another_digit_of_the_same_image(task):
    idx = task.indices("train")
    b = task.batch(idx, task.draw_targets(idx, np.random.default_rng(0)))
    d = task.data
    valid = b.kept_valid.numpy()
    assert valid.any()
    partner = task.partner[idx]
    assert (valid == (partner >= 0)).all()
    ok = idx[valid]
    assert (d.image_index[partner[valid]] == d.image_index[ok]).all()  # the same image
    assert (d.digit[partner[valid]] != d.digit[ok]).all()  # another digit of it
    assert torch.equal(b.kept_query[valid].argmax(1), torch.from_numpy(d.digit[partner[valid]]))
    assert torch.equal(b.kept_labels[valid, 0], torch.from_numpy(d.color[partner[valid]]))


def test_keep_term_classifies_the_other_digit_as_it_was(task):
    torch.manual_seed(0)
    b = edit_batch(task, n=8)
    g = Editor((5,), 10, "arnn", channels=4, mask_hidden=4)
    d = Discriminator((5,), 10, channels=4)
    teacher = AttributeClassifier((5,), 10, channels=4).eval().requires_grad_(False)
    kept = (b.kept_query, b.kept_labels, b.kept_valid)
    w = LossWeights(teacher=1.0)
    base, parts, edited, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, teacher,
                                            kept)  # fmt: skip
    assert "g_keep" not in parts  # weight 0: not computed
    w = dataclasses.replace(w, cls=0.5, teacher=2.0, keep=3.0)
    loss, parts, edited, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, teacher,
                                            kept)  # fmt: skip
    v = b.kept_valid
    _, logits = d(edited[v], b.kept_query[v])
    want = torch.nn.functional.cross_entropy(logits, b.kept_labels[v, 0])
    assert float(parts["g_keep"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    terms = {"g_adv": 1, "g_cls": 0.5, "rec": 10, "cycle": 10, "mask": 0.1, "g_teacher": 2}
    rest = sum(wt * parts[k] for k, wt in terms.items())
    expected = rest + 3.0 * (0.5 * parts["g_keep"] + 2.0 * parts["g_teacher_keep"])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    parts["g_teacher_keep"].backward()  # reaches the editor's mask, never the teacher
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in g.transformers[0].mask.parameters())  # fmt: skip
    assert all(p.grad is None for p in teacher.parameters())
    none = (b.kept_query, b.kept_labels, torch.zeros_like(v))  # no image with another digit
    _, parts, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, teacher, none)
    assert "g_keep" not in parts


def test_tiny_keep_run_records_its_terms(tmp_path):
    metrics = train(_config(tmp_path, mask="arnn", epochs=1, w_teacher=1.0, w_keep=1.0))
    assert metrics["config"]["w_keep"] == 1.0
    assert all(np.isfinite(e["g_keep"]) and np.isfinite(e["g_teacher_keep"])
               for e in metrics["history"])  # fmt: skip


# ------------------------------------------------------------------------------------------
# the query through the mask only


class _FixedMask(torch.nn.Module):
    """A mask head that ignores its input and query: a fixed map."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, f, query=None, return_mask=False):
        return f, self.a.expand(len(f), -1, -1, -1)


@pytest.mark.parametrize("edit_query", ["both", "mask"])
def test_edit_query_mask_leaves_the_query_to_the_mask(edit_query):
    """With the mask fixed, the query still moves the edit when the body reads it, and no
    longer moves it when it reaches the edit through the mask only."""
    torch.manual_seed(0)
    g = Editor((5,), 10, "ctx", channels=4, mask_hidden=4, edit_query=edit_query).eval()
    body_in = g.transformers[0].body[0].in_channels
    assert body_in == 16 + (5 if edit_query == "mask" else 15)
    x, targets = torch.rand(2, 3, 16, 16), torch.tensor([[1], [3]])
    q1, q2 = torch.eye(10)[[2, 4]], torch.eye(10)[[7, 9]]
    with torch.no_grad():
        moved = (g(x, targets, q1)[0] - g(x, targets, q2)[0]).abs().max()
        assert moved > 1e-4  # the trained-from-scratch mask reads the query either way
        g.transformers[0].mask = _FixedMask(torch.rand(1, 1, 4, 4))
        fixed = (g(x, targets, q1)[0] - g(x, targets, q2)[0]).abs().max()
    assert (fixed == 0) if edit_query == "mask" else (fixed > 1e-4)


def test_edit_query_default_is_todays_editor():
    torch.manual_seed(0)
    both = Editor((5,), 10, "arnn", channels=4, mask_hidden=4)
    assert both.edit_query == "both" and E4Config().edit_query == "both"
    assert "edit_query" not in E4Config().fingerprint()
    assert E4Config(edit_query="mask").fingerprint()["edit_query"] == "mask"
    with pytest.raises(ValueError, match="edit_query must be one of"):
        Editor((5,), 10, "ctx", edit_query="body")


def test_tiny_qmask_run_records_its_option(tmp_path):
    metrics = train(_config(tmp_path, mask="arnn", epochs=1, w_teacher=1.0, w_keep=1.0,
                            edit_query="mask"))  # fmt: skip
    assert metrics["config"]["edit_query"] == "mask"
    assert all(np.isfinite(e["val_mask_query_ratio"]) for e in metrics["history"])


# ------------------------------------------------------------------------------------------
# the masks of two queries kept apart


def test_mask_overlap_is_the_cosine_of_the_masks():
    a = torch.zeros(2, 1, 4, 4)
    a[:, :, :2] = 1.0
    b = torch.zeros(2, 1, 4, 4)
    b[:, :, 2:] = 0.5
    assert float(mask_overlap(a, 3 * a)) == pytest.approx(1.0)  # the same shape, any scale
    assert float(mask_overlap(a, b)) == 0.0  # no common support
    half = a.clone()
    half[:, :, :, 2:] = 0
    assert float(mask_overlap(a, half)) == pytest.approx(2**-0.5)


def test_apart_term_asks_the_other_digits_query(task):
    torch.manual_seed(0)
    b = edit_batch(task, n=8)
    g = Editor((5,), 10, "ctx", channels=4, mask_hidden=4, edit_query="mask")
    d = Discriminator((5,), 10, channels=4)
    kept = (b.kept_query, b.kept_labels, b.kept_valid)
    w = LossWeights(apart=2.0)
    base = LossWeights()
    _, parts0, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, base, None, kept)
    assert "g_apart" not in parts0  # weight 0: not computed
    loss, parts, _, masks = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, None,
                                           kept)  # fmt: skip
    v = b.kept_valid
    _, other = g(b.x[v], b.targets[v], b.kept_query[v])
    want = mask_overlap(masks[v], other)
    got = float(parts["g_apart"].detach())
    assert got == pytest.approx(float(want.detach()), rel=1e-5) and 0 < got < 1
    terms = {"g_adv": 1, "g_cls": 1, "rec": 10, "cycle": 10, "mask": 0.1}
    expected = sum(wt * parts[k] for k, wt in terms.items()) + 2.0 * parts["g_apart"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    parts["g_apart"].backward()  # reaches the mask head
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in g.transformers[0].mask.parameters())  # fmt: skip
    # a query-blind mask gives the same mask for both queries: full overlap
    g.transformers[0].mask = _FixedMask(torch.rand(1, 1, 12, 12))
    _, blind, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w, None, kept)
    assert float(blind["g_apart"].detach()) == pytest.approx(1.0, abs=1e-6)


def test_tiny_apart_run_records_its_term(tmp_path):
    metrics = train(_config(tmp_path, mask="arnn", epochs=1, w_teacher=1.0, w_keep=1.0,
                            edit_query="mask", w_apart=1.0))  # fmt: skip
    assert metrics["config"]["w_apart"] == 1.0
    assert all(0 <= e["g_apart"] <= 1 for e in metrics["history"])


# ------------------------------------------------------------------------------------------
# the masked features name the queried digit


def test_identity_logits_pool_the_features_under_the_mask():
    torch.manual_seed(0)
    g = Editor((5,), 10, "ctx", channels=4, mask_hidden=4, identify=True)
    x = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, 1, 2] = 0.7  # one cell: its features alone
    masks[1, 0, :, :2] = 1.0  # half the map: their mean
    f = g.encoder(x)
    want = g.identifier(torch.stack([f[0, :, 1, 2], f[1, :, :, :2].mean((1, 2))]))
    assert torch.allclose(identity_logits(g, x, masks), want, atol=1e-5)
    with pytest.raises(ValueError, match="identify=True"):
        identity_logits(Editor((5,), 10, "ctx", channels=4, mask_hidden=4), x, masks)
    with pytest.raises(ValueError, match="needs a query"):
        Editor((5,), None, "ctx", channels=4, identify=True)


def test_identify_is_built_only_when_asked():
    torch.manual_seed(0)
    plain = Editor((5,), 10, "arnn", channels=4, mask_hidden=4)
    torch.manual_seed(0)
    asked = Editor((5,), 10, "arnn", channels=4, mask_hidden=4, identify=True)
    assert plain.identifier is None and set(asked.state_dict()) - set(plain.state_dict()) == {
        "identifier.weight", "identifier.bias"}
    for k, v in plain.state_dict().items():  # the other parameters start as without it
        assert torch.equal(v, asked.state_dict()[k]), k


def test_identify_term_is_the_query_class_from_the_masked_features(task):
    torch.manual_seed(0)
    b = edit_batch(task, n=8)
    g = Editor((5,), 10, "arnn", channels=4, mask_hidden=4, edit_query="mask", identify=True)
    d = Discriminator((5,), 10, channels=4)
    _, parts0, _, _ = generator_loss(g, d, b.x, b.labels, b.targets, b.query)
    assert "g_identify" not in parts0  # weight 0: not computed
    w = LossWeights(identify=3.0)
    loss, parts, _, masks = generator_loss(g, d, b.x, b.labels, b.targets, b.query, w)
    want = torch.nn.functional.cross_entropy(identity_logits(g, b.x, masks), b.query.argmax(1))
    assert float(parts["g_identify"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    terms = {"g_adv": 1, "g_cls": 1, "rec": 10, "cycle": 10, "mask": 0.1}
    expected = sum(wt * parts[k] for k, wt in terms.items()) + 3.0 * parts["g_identify"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    parts["g_identify"].backward()  # reaches the mask head and the encoder
    for module in (g.transformers[0].mask, g.encoder, g.identifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_tiny_identify_run_records_its_term(tmp_path):
    metrics = train(_config(tmp_path, mask="ctx", epochs=1, w_teacher=1.0, w_keep=1.0,
                            edit_query="mask", w_identify=1.0))  # fmt: skip
    assert metrics["config"]["w_identify"] == 1.0
    assert all(np.isfinite(e["g_identify"]) for e in metrics["history"])


# ------------------------------------------------------------------------------------------
# the locate stage: the masks shown the queried digit before the GAN


def test_locate_loss_is_the_cross_entropy_against_the_pooled_strokes():
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[0, :2, :2] = True  # the top-left cell of a 4x4 grid, fully; the next one half
    region[0, :2, 2] = True
    masks = torch.full((1, 2, 4, 4), 0.25)
    target = torch.zeros(4, 4)
    target[0, 0], target[0, 1] = 1.0, 0.5
    want = -(target * np.log(0.25) + (1 - target) * np.log(0.75)).mean()
    assert float(locate_loss(masks, region)) == pytest.approx(float(want), rel=1e-6)
    right = target.expand(1, 2, 4, 4).clamp(0.01, 0.99)
    assert float(locate_loss(right, region)) < float(locate_loss(masks, region))


def test_locate_stage_trains_the_encoder_and_heads_toward_the_queried_digit(task):
    torch.manual_seed(0)
    g = Editor((5,), 10, "arnn", channels=4, mask_hidden=4, edit_query="mask")
    train_idx = task.indices("train")
    b = edit_batch(task, n=8)
    with torch.no_grad():
        before = float(locate_loss(g.edit_features(b.x, b.targets, b.query)[1], b.region))
    start = {k: v.clone() for k, v in g.state_dict().items()}
    seen = []
    last = train_locate(g, task, train_idx, steps=12, lr=1e-2, batch_size=8, seed=3, every=5,
                        on_every=lambda step, loss: seen.append(step))  # fmt: skip
    assert seen == [5, 10, 12] and np.isfinite(last)
    with torch.no_grad():
        after = float(locate_loss(g.edit_features(b.x, b.targets, b.query)[1], b.region))
    assert after < before
    trained = {n for n, p in g.named_parameters() if not torch.equal(p, start[n])}
    allowed = {n for n, p in g.named_parameters()
               if any(p is q for q in locate_parameters(g))}  # fmt: skip
    assert trained and trained <= allowed  # the edit bodies and the reconstructor stay
    assert all(p.grad is None for p in g.parameters())  # nothing reaches the GAN's first step
    torch.manual_seed(0)
    again = Editor((5,), 10, "arnn", channels=4, mask_hidden=4, edit_query="mask")
    train_locate(again, task, train_idx, steps=12, lr=1e-2, batch_size=8, seed=3)
    for k, v in g.state_dict().items():  # same seed, same weights
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(ValueError, match="steps"):
        train_locate(g, task, train_idx, steps=0, lr=1e-2, batch_size=8, seed=3)


def test_tiny_locate_run_records_its_stage_and_resumes_without_it(tmp_path, monkeypatch):
    config = _config(tmp_path, mask="ctx", epochs=1, edit_query="mask", locate_steps=3)
    metrics = train(config)
    located = metrics["locate"]
    assert located["steps"] == 3 and located["lr"] == 1e-3
    assert 0 <= located["val_mask_query_ratio"] <= 1 and np.isfinite(located["loss"])
    assert metrics["config"]["locate_steps"] == 3
    assert "locate_steps" in E4Config(locate_steps=3).fingerprint()
    record = Path(config.out) / "locate.json"
    assert json.loads(record.read_text()) == located
    (Path(config.out) / "metrics.json").unlink()  # as if stopped after the last epoch

    def refuse(*args, **kwargs):
        raise AssertionError("the stage ran again on a resumed run")

    monkeypatch.setattr("attentionrnn.experiments.e4.train.train_locate", refuse)
    again = train(config)  # resumes from the checkpoint: its weights, the stage's record
    assert again["locate"] == located and len(again["history"]) == 1
    # the folder of another configuration is refused before any stage runs
    monkeypatch.setattr("attentionrnn.experiments.e4.train.train_judge", refuse)
    other = dataclasses.replace(config, locate_steps=4)
    (Path(config.out) / "metrics.json").unlink()
    with pytest.raises(UserError, match="another configuration"):
        train(other)


# ------------------------------------------------------------------------------------------
# the screening budgets and bad values


def test_screening_budgets_are_the_cpu_budget_shortened():
    cpu, screen = BUDGETS["cpu"], BUDGETS["screen"]
    same = {f.name for f in dataclasses.fields(cpu)} - {"epochs", "description"}
    assert screen.epochs == 6 and all(getattr(screen, k) == getattr(cpu, k) for k in same)
    for name, changed in (("screen-mul", {"query_fusion": "mul"}),
                          ("screen-teacher", {"w_teacher": 1.0}),
                          ("screen-keep", {"w_teacher": 1.0, "w_keep": 1.0}),
                          ("screen-qmask", {"w_teacher": 1.0, "w_keep": 1.0,
                                            "edit_query": "mask"}),
                          ("screen-apart", {"w_teacher": 1.0, "w_keep": 1.0,
                                            "edit_query": "mask", "w_apart": 1.0}),
                          ("screen-identify", {"w_teacher": 1.0, "w_keep": 1.0,
                                               "edit_query": "mask",
                                               "w_identify": 1.0}),
                          ("screen-locate", {"w_teacher": 1.0, "w_keep": 1.0,
                                             "edit_query": "mask",
                                             "locate_steps": 3000})):  # fmt: skip
        b = BUDGETS[name]  # screen but for the candidate's option
        undo = {k: getattr(screen, k) for k in changed}
        assert dataclasses.replace(b, **undo, description=screen.description) == screen
        config = EXPERIMENT.budget_config(b, "mref", {})
        assert all(getattr(config, k) == v for k, v in changed.items()) and config.epochs == 6
    plan = EXPERIMENT.budget_config(screen, "mref", {})
    assert plan.query_fusion == "add" and plan.w_teacher == 0


def test_plateau_budget_is_the_cpu_budget_longer_with_seeds_for_the_pair():
    cpu, plateau = BUDGETS["cpu"], BUDGETS["plateau"]
    same = {f.name for f in dataclasses.fields(cpu)} - {"epochs", "description", "spread_seeds"}
    assert all(getattr(plateau, k) == getattr(cpu, k) for k in same)
    assert plateau.epochs == 24 and plateau.spread_seeds == (0, 1, 2) and cpu.spread_seeds == (0,)
    seeds = {m: row_seeds(m, None, plateau, EXPERIMENT.spread) for m in E4_MASKS}
    assert seeds == {"ctx": (0, 1, 2), "arnn": (0, 1, 2), "brnn": (0,)}
    assert {m: row_seeds(m, None, cpu, EXPERIMENT.spread) for m in E4_MASKS} == dict.fromkeys(
        E4_MASKS, (0,)
    )  # the cpu budget plans what it did before
    config = EXPERIMENT.budget_config(plateau, "mref", {})
    assert config.edit_query == "both" and config.w_teacher == 0 and config.query_fusion == "add"


def test_cli_bad_candidate_values(tmp_path, capsys):
    out = ["e4", "train", "--out", str(tmp_path / "r")]
    for flags, message in (
        (["--query-fusion", "concat"], "invalid choice: 'concat'"),
        (["--w-teacher", "-1"], "w_teacher must be"),
        (["--teacher-seed", str(JUDGE_SEED)], "must differ from the judge's seed"),
        (["--mask", "local", "--query-fusion", "mul"], "needs a mask head with a query fusion"),
        (["--w-keep", "-0.5"], "w_keep must be"),
        (["--dataset", "celeba", "--w-keep", "1"], "w_keep applies to the digit tasks"),
        (["--edit-query", "body"], "invalid choice: 'body'"),
        (["--dataset", "celeba", "--edit-query", "mask"], "edit_query applies to the digit"),
        (["--w-apart", "-1"], "w_apart must be"),
        (["--dataset", "celeba", "--w-apart", "1"], "w_apart applies to the digit tasks"),
        (["--w-identify", "-2"], "w_identify must be"),
        (["--dataset", "celeba", "--w-identify", "1"], "w_identify applies to the digit tasks"),
        (["--locate-steps", "-1"], "locate_steps must be"),
        (["--locate-lr", "0"], "locate_lr must be"),
        (["--dataset", "celeba", "--locate-steps", "5"], "locate_steps applies to the digit"),
    ):
        assert main([*out, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(UserError, match="query_fusion must be one of"):
        E4Config(query_fusion="concat").check()
