"""Behaviour of the public layers: shapes, gates, dtypes, parameters, errors."""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers.scan import skew, unskew

LAYERS = [
    pytest.param(lambda **kw: AttentionRNN(6, hidden_channels=4, **kw), id="arnn"),
    pytest.param(
        lambda **kw: BlockAttentionRNN(6, block_size=2, hidden_channels=4, **kw), id="brnn"
    ),
]


def test_skew_places_cell_on_its_antidiagonal_and_unskew_inverts_it():
    x = torch.arange(3 * 4, dtype=torch.float64).view(1, 3, 4) + 1
    s = skew(x)
    assert s.shape == (1, 3, 6)
    for i in range(3):
        for j in range(4):
            assert s[0, i, i + j] == x[0, i, j]
    assert (s != 0).sum() == 12  # everything else is padding
    torch.testing.assert_close(unskew(s), x)


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("size", [(7, 5), (5, 9), (1, 1), (1, 6), (6, 1)])
def test_shapes_and_mask_range(make, size):
    layer = make(query_channels=3)
    x, q = torch.randn(2, 6, *size), torch.randn(2, 3)
    y, mask = layer(x, query=q, return_mask=True)
    assert y.shape == x.shape and mask.shape == (2, 1, *size)
    assert ((mask > 0) & (mask < 1)).all()
    torch.testing.assert_close(y, x * mask)
    torch.testing.assert_close(layer(x, q), y)


@pytest.mark.parametrize("make", LAYERS)
def test_softmax_gate_sums_to_one_over_positions(make):
    layer = make(gate="softmax")
    _, mask = layer(torch.randn(3, 6, 5, 7), return_mask=True)
    torch.testing.assert_close(mask.sum(dim=(1, 2, 3)), torch.ones(3))


def test_query_changes_the_mask():
    torch.manual_seed(0)
    layer = AttentionRNN(6, hidden_channels=4, query_channels=3)
    x = torch.randn(1, 6, 5, 5)
    _, m1 = layer(x, torch.randn(1, 3), return_mask=True)
    _, m2 = layer(x, torch.randn(1, 3), return_mask=True)
    assert (m1 - m2).abs().max() > 1e-4


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("directions", ["raster", "bi", "quad"])
def test_every_parameter_gets_a_gradient(make, feedback, directions):
    """DDP needs no unused parameters."""
    layer = make(query_channels=2, feedback=feedback, directions=directions)
    layer(torch.randn(2, 6, 4, 5), torch.randn(2, 2)).square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_forward_stores_nothing_on_the_module():
    layer = AttentionRNN(6, hidden_channels=4)
    before = {k: set(vars(m)) for k, m in layer.named_modules()}
    layer(torch.randn(1, 6, 3, 4))
    assert {k: set(vars(m)) for k, m in layer.named_modules()} == before


def test_same_seed_same_layer_and_output():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        layer = AttentionRNN(6, hidden_channels=4)
        outs.append(layer(torch.randn(2, 6, 5, 5)))
    assert torch.equal(outs[0], outs[1])


def test_reset_parameters_reinitialises():
    torch.manual_seed(0)
    layer = BlockAttentionRNN(6, hidden_channels=4)
    before = {n: p.clone() for n, p in layer.named_parameters()}
    layer.reset_parameters()
    unchanged = [n for n, p in layer.named_parameters() if torch.equal(before[n], p)]
    assert unchanged == ["scan.attention_bias"]  # the only deterministic init (zeros)
    forget = layer.scan.input_to_state.bias.view(2, 4, 4)[:, 1]
    assert torch.equal(forget, torch.ones_like(forget))


@pytest.mark.parametrize("layer_cls", [AttentionRNN, BlockAttentionRNN])
def test_query_fusion_is_a_constructor_argument(layer_cls):
    add = layer_cls(6, hidden_channels=4, query_channels=3)
    assert add.query_fusion == "add" and "query_fusion" not in add.extra_repr()
    mul = layer_cls(6, hidden_channels=4, query_channels=3, query_fusion="mul")
    assert "query_fusion='mul'" in mul.extra_repr()
    assert layer_cls(**mul.config()).query_fusion == "mul"
    assert set(mul.state_dict()) == set(add.state_dict())  # the same parameters, used otherwise
    # e = relu(conv(x) * U q): a zero query gives zero evidence everywhere
    x = torch.randn(2, 6, 4, 5)
    e = mul.encode(x, torch.zeros(2, 3))
    assert torch.equal(e, torch.zeros_like(e))
    with pytest.raises(ValueError, match="query_fusion"):
        layer_cls(6, query_channels=3, query_fusion="concat")


def test_extra_repr_names_the_configuration():
    text = repr(
        BlockAttentionRNN(
            6,
            block_size=3,
            hidden_channels=4,
            query_channels=2,
            directions="quad",
            gate="softmax",
            feedback=False,
        )
    )
    for part in [
        "hidden_channels=4",
        "query_channels=2",
        "'quad'",
        "'softmax'",
        "feedback=False",
        "block_size=3",
    ]:
        assert part in text


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_follows_the_input(dtype):
    torch.manual_seed(0)
    layer = AttentionRNN(6, hidden_channels=4).to(dtype)
    x = torch.randn(2, 6, 5, 4, dtype=dtype)
    y, mask = layer(x, return_mask=True)
    assert y.dtype == dtype and mask.dtype == dtype
    ref = AttentionRNN(6, hidden_channels=4).double()
    ref.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    tol = 1e-12 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(
        mask.double(), ref(x.double(), return_mask=True)[1], rtol=0, atol=tol
    )


def test_bf16_autocast_keeps_cell_state_in_float32():
    torch.manual_seed(0)
    layer = AttentionRNN(6, hidden_channels=4, query_channels=2)
    x, q = torch.randn(2, 6, 6, 5), torch.randn(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, mask = layer(x, q, return_mask=True)
        hidden = layer.scan(torch.relu(layer.encoder(x)))
    assert hidden.dtype == torch.float32  # the recurrent state was kept in float32
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(mask, layer(x, q, return_mask=True)[1], rtol=0, atol=3e-2)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_cuda():
    layer = AttentionRNN(6, hidden_channels=4).cuda()
    x = torch.randn(2, 6, 9, 7, device="cuda")
    y = layer(x)
    assert y.device == x.device
    cpu = AttentionRNN(6, hidden_channels=4)
    cpu.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    torch.testing.assert_close(y.cpu(), cpu(x.cpu()), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors
def _layer_with_query():
    return AttentionRNN(6, hidden_channels=4, query_channels=3)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: AttentionRNN(6)(torch.randn(6, 5, 5)), ValueError, "4-D"),
        (lambda: AttentionRNN(6)(torch.randn(1, 4, 5, 5)), ValueError, "channels"),
        (lambda: AttentionRNN(6)(torch.ones(1, 6, 5, 5, dtype=torch.long)), TypeError, "floating"),
        (lambda: AttentionRNN(6)(torch.randn(1, 6, 0, 5)), ValueError, "empty"),
        (lambda: _layer_with_query()(torch.randn(2, 6, 5, 5)), ValueError, "missing query"),
        (
            lambda: AttentionRNN(6)(torch.randn(2, 6, 5, 5), torch.randn(2, 3)),
            ValueError,
            "unexpected query",
        ),
        (
            lambda: _layer_with_query()(torch.randn(2, 6, 5, 5), torch.randn(3, 3)),
            ValueError,
            "batch",
        ),
        (
            lambda: _layer_with_query()(torch.randn(2, 6, 5, 5), torch.randn(2, 4)),
            ValueError,
            "width",
        ),
        (lambda: AttentionRNN(6, directions="diagonal"), ValueError, "directions"),
        (lambda: AttentionRNN(6, gate="relu"), ValueError, "gate"),
        (lambda: AttentionRNN(6, kernel_size=2), ValueError, "odd"),
        (lambda: BlockAttentionRNN(6, block_size=0), ValueError, "block_size"),
        (lambda: AttentionRNN(0), ValueError, "in_channels"),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
