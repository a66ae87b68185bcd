"""Baseline attention modules, the shared input checks and the build_attention factory."""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN, BlockAttentionRNN, build_attention
from attentionrnn.experiments.e1.model import PAN
from attentionrnn.layers.baselines import (
    ContextAttention,
    GlobalAttention,
    IndependentAttention,
    LocalAttention,
    NoAttention,
)
from attentionrnn.layers.factory import ATTENTION_NAMES
from attentionrnn.layers.validation import check_attention_input

BASELINES = {
    "local": LocalAttention,
    "ctx": ContextAttention,
    "san": GlobalAttention,
    "arnn_ind": IndependentAttention,
}


def _inputs(b=2, c=6, h=5, w=7, q=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, q, generator=g)


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_factory_builds_every_name_with_shared_options(name):
    torch.manual_seed(0)
    att = build_attention(name, 6, query_channels=4, hidden_channels=5, block_size=2)
    x, q = _inputs()
    y, mask = att(x, q, return_mask=True)
    assert y.shape == x.shape
    assert mask.shape == (2, 1, 5, 7)
    assert torch.allclose(y, x * mask)
    assert torch.equal(att(x, q), y)


def test_factory_maps_names_to_classes_and_directions():
    assert ATTENTION_NAMES == (
        "none", "san", "local", "ctx", "arnn_ind", "arnn", "arnn_quad", "brnn"
    )  # fmt: skip
    assert isinstance(build_attention("none", 3), NoAttention)
    for name, cls in BASELINES.items():
        assert type(build_attention(name, 3)) is cls
    arnn = build_attention("arnn", 3)
    quad = build_attention("arnn_quad", 3)
    assert type(arnn) is AttentionRNN and type(quad) is AttentionRNN
    assert "bi" in repr(arnn) or "bottom_right" in repr(arnn)
    assert len(quad.scan.directions) == 4 and len(arnn.scan.directions) == 2
    assert isinstance(build_attention("brnn", 3, block_size=3), BlockAttentionRNN)


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown attention 'pan'.*none, san, local, ctx"):
        build_attention("pan", 3)
    with pytest.raises(TypeError, match="hiden_channels"):
        build_attention("ctx", 3, hiden_channels=4)
    with pytest.raises(ValueError, match="directions='bi'"):
        build_attention("arnn", 3, directions="quad")
    # an option of another module is dropped, not an error
    assert build_attention("local", 3, kernel_size=5).kernel_size == 1


@pytest.mark.parametrize("name", ["local", "ctx", "arnn_ind"])
def test_sigmoid_masks_in_unit_interval(name):
    att = build_attention(name, 6, query_channels=4)
    x, q = _inputs()
    _, mask = att(x, q, return_mask=True)
    assert ((mask > 0) & (mask < 1)).all()


@pytest.mark.parametrize("name", ["local", "ctx", "san", "arnn_ind"])
def test_softmax_gate_sums_to_one(name):
    att = build_attention(name, 6, query_channels=4, gate="softmax")
    x, q = _inputs(h=3, w=11)
    _, mask = att(x, q, return_mask=True)
    assert (mask >= 0).all()
    assert torch.allclose(mask.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-6)


def test_san_defaults_to_softmax_and_none_is_identity():
    assert GlobalAttention(4).gate == "softmax"
    x, _ = _inputs(c=4)
    y, mask = NoAttention(4)(x, return_mask=True)
    assert torch.equal(y, x) and torch.equal(mask, torch.ones(2, 1, 5, 7))


@pytest.mark.parametrize("name", list(BASELINES))
def test_query_changes_the_mask(name):
    torch.manual_seed(1)
    att = build_attention(name, 6, query_channels=4)
    x, q = _inputs()
    _, m1 = att(x, q, return_mask=True)
    _, m2 = att(x, q + 1.0, return_mask=True)
    assert not torch.allclose(m1, m2)


def test_context_sees_neighbours_local_does_not():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    for cls, kwargs, expected in [
        (LocalAttention, {}, {(2, 2)}),
        (ContextAttention, {"kernel_size": 3}, {(i, j) for i in (1, 2, 3) for j in (1, 2, 3)}),
        (IndependentAttention, {"kernel_size": 3}, {(i, j) for i in (1, 2, 3) for j in (1, 2, 3)}),
    ]:
        torch.manual_seed(0)
        att = cls(3, **kwargs)
        _, mask = att(x, return_mask=True)
        (grad,) = torch.autograd.grad(mask[0, 0, 2, 2], x)
        seen = {tuple(p) for p in grad.abs().sum(1)[0].nonzero().tolist()}
        assert seen == expected, cls.__name__


def test_global_softmax_couples_all_positions():
    x = torch.randn(1, 3, 4, 5, requires_grad=True)
    _, mask = GlobalAttention(3)(x, return_mask=True)
    (grad,) = torch.autograd.grad(mask[0, 0, 0, 0], x)
    assert (grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    att = build_attention(name, 6, query_channels=4, hidden_channels=5)
    x, q = _inputs()
    x.requires_grad_(True)
    y, mask = att(x, q, return_mask=True)
    (y.square().sum() + mask.sum()).backward()
    missing = [n for n, p in att.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_pan_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = PAN(name, attention_hidden=4)
    logits, masks = model(torch.rand(2, 3, 100, 100), torch.tensor([0, 9]), return_masks=True)
    assert logits.shape == (2, 5)
    assert [tuple(m.shape) for m in masks] == [(2, 1, s, s) for s in (49, 23, 10, 4)]
    logits.sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_pan_ctx_layer4_and_inverse_task():
    model = PAN("ctx")
    gates = [a.gate for a in model.attentions]
    assert gates == ["sigmoid", "sigmoid", "sigmoid", "softmax"]
    assert model.attentions[3].kernel_size == 1 and model.attentions[0].kernel_size == 3
    # every estimator ends in PAN's layer-4 softmax unless told otherwise
    assert PAN("arnn").layer4_gate == PAN("brnn").layer4_gate == PAN("local").layer4_gate
    assert PAN("arnn").layer4_gate == "softmax" and PAN("none").layer4_gate is None
    assert [a.gate for a in PAN("arnn", layer4_gate="sigmoid").attentions] == ["sigmoid"] * 4
    inverse = PAN("arnn_ind", task="digit")
    assert inverse.num_queries == 5 and inverse.num_classes == 10
    assert inverse(torch.rand(2, 3, 100, 100), torch.tensor([0, 4])).shape == (2, 10)
    with pytest.raises(ValueError, match="task"):
        PAN("ctx", task="size")
    with pytest.raises(ValueError, match="unknown attention"):
        PAN("pan")


def test_pan_san_attends_at_the_last_layer_only():
    """SAN attends once, over the last map: its softmax at layers 1-3 broke eval-mode BN."""
    torch.manual_seed(0)
    model = PAN("san", attention_hidden=4).eval()
    assert model.attention_layers == (4,)
    kinds = [type(a).__name__ for a in model.attentions]
    assert kinds == ["NoAttention"] * 3 + ["GlobalAttention"]
    _, masks = model(torch.rand(2, 3, 100, 100), torch.tensor([1, 2]), return_masks=True)
    assert all(bool((m == 1).all()) for m in masks[:3])
    torch.testing.assert_close(masks[3].sum(dim=(1, 2, 3)), torch.ones(2))
    assert model.layer4_gate == "softmax"
    every = PAN("san", attention_layers=(1, 2, 3, 4))
    assert [type(a).__name__ for a in every.attentions] == ["GlobalAttention"] * 4
    assert PAN("ctx").attention_layers == (1, 2, 3, 4)
    assert [type(a).__name__ for a in PAN("ctx", attention_layers=(2,)).attentions] == [
        "NoAttention",
        "ContextAttention",
        "NoAttention",
        "NoAttention",
    ]
    assert PAN("arnn", attention_layers=(1, 2)).layer4_gate is None
    for bad in [(), (0, 4), (5,)]:
        with pytest.raises(ValueError, match="attention_layers"):
            PAN("ctx", attention_layers=bad)


def test_pan_block_pools_before_its_relu_with_the_same_values_and_gradients():
    """PAN's blocks apply the ReLU after the max-pool (cheaper); the result and every gradient
    must equal PAN's conv → BN → ReLU → pool order."""
    torch.manual_seed(0)
    block = PAN("ctx").blocks[1].double().train()
    conv, bn = block[0], block[1]
    x = torch.randn(3, 32, 21, 21, dtype=torch.float64, requires_grad=True)
    grads = []
    for forward in (block, lambda t: torch.nn.functional.max_pool2d(torch.relu(bn(conv(t))), 2)):
        y = forward(x)
        (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append([y.detach(), x.grad.clone(), conv.weight.grad.clone(), bn.weight.grad.clone()])
        x.grad = None
        block.zero_grad()
    assert (grads[0][0] == 0).any() and (grads[0][0] > 0).any()
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_float64_follows_input():
    att = ContextAttention(3, query_channels=2).double()
    y, mask = att(torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 2).double(), True)
    assert y.dtype == mask.dtype == torch.float64


@pytest.mark.parametrize(
    "x, query, exc, message",
    [
        ("not a tensor", None, TypeError, "torch.Tensor"),
        (torch.zeros(6, 5, 5), None, ValueError, "4-D tensor.*3-D"),
        (torch.zeros(1, 6, 5, 5, dtype=torch.long), None, TypeError, "floating-point.*int64"),
        (torch.zeros(1, 5, 5, 5), None, ValueError, "5 channels.*in_channels=6"),
        (torch.zeros(1, 6, 0, 5), None, ValueError, "empty spatial map"),
        (torch.zeros(1, 6, 5, 5), None, ValueError, "missing query"),
        (torch.zeros(2, 6, 5, 5), torch.zeros(3, 4), ValueError, "batch size 3.*batch size 2"),
        (torch.zeros(2, 6, 5, 5), torch.zeros(2, 3), ValueError, "width 3.*query_channels=4"),
        (torch.zeros(2, 6, 5, 5), torch.zeros(2, 4, 1), ValueError, "2-D tensor"),
        (torch.zeros(2, 6, 5, 5), torch.zeros(2, 4, dtype=torch.long), TypeError, "floating"),
    ],
)
@pytest.mark.parametrize("name", ["none", "local", "ctx", "san", "arnn_ind"])
def test_validation_errors(name, x, query, exc, message):
    att = build_attention(name, 6, query_channels=4)
    with pytest.raises(exc, match=message):
        att(x, query)


def test_unexpected_query_and_constructor_errors():
    with pytest.raises(ValueError, match="unexpected query"):
        check_attention_input(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4), 2, None)
    with pytest.raises(ValueError, match="gate"):
        ContextAttention(3, gate="relu")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ContextAttention(3, kernel_size=2)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        LocalAttention(0)
    with pytest.raises(ValueError, match="directions"):
        IndependentAttention(3, directions="diag")


def test_reprs_name_the_options():
    assert "hidden_channels=7" in repr(ContextAttention(3, hidden_channels=7, query_channels=2))
    assert "gate='softmax'" in repr(GlobalAttention(3))
    assert "directions='quad'" in repr(IndependentAttention(3, directions="quad"))
    assert IndependentAttention(3, 4, directions="quad").head.in_channels == 16
