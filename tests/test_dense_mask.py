"""``x * mask`` on a dense copy of the mask (issue 35) changes no bit and no memory format.

The reference is the forward as it was before: ``y = x * mask`` on the gate's output itself (the
scan's logits are a batch-innermost view). Every output, stride and gradient must be equal.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attentionrnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers.attention_rnn import _strides_decide, masked_product
from attentionrnn.layers.validation import apply_gate

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def reference_forward(layer, x, query):
    """The forward before the dense mask: the product on the gate's output as it comes."""
    logits = layer.mask_logits(layer.encode(x, query))
    mask = apply_gate(logits, layer.gate).to(x.dtype)
    return x * mask, mask


def run(layer, pre, x_in, query, grads, reference):
    """Forward and backward through ``pre`` (a conv, so the gradient reaching ``x`` goes on into a
    layer's backward) and the attention layer; what came out and every gradient."""
    layer, pre = copy.deepcopy(layer), copy.deepcopy(pre)
    x_in = x_in.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    x = pre(x_in)
    seen = {}
    x.register_hook(lambda g: seen.setdefault("x", g))
    if reference:
        y, mask = reference_forward(layer, x, query)
    else:
        y, mask = layer(x, query, return_mask=True)
    if grads is None:
        y.sum().backward()  # an expanded (all-zero-stride) gradient reaches the product
    else:
        gy, gm = grads
        ((y * gy).sum() + (mask * gm).sum()).backward()
    named = [*layer.named_parameters(), *(("pre." + n, p) for n, p in pre.named_parameters())]
    return {
        "y": y.detach(),
        "mask": mask.detach(),
        "grad x": seen["x"],
        "grad x_in": x_in.grad,
        **{"grad " + n: p.grad for n, p in named},
    }


def assert_identical(got, want):
    assert got.keys() == want.keys()
    for name in want:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert g.stride() == w.stride(), f"{name}: strides {g.stride()} != {w.stride()}"
        assert torch.equal(g, w), f"{name}: values differ"


def check(layer, x_in, query, dtype, fmt, dense_grads=True):
    torch.manual_seed(1)
    layer = layer.to(dtype)
    channels = layer.in_channels
    pre = nn.Conv2d(channels, channels, 3, padding=1).to(dtype).to(memory_format=fmt)
    x_in = x_in.to(dtype).contiguous(memory_format=fmt)
    query = None if query is None else query.to(dtype)
    b, _, h, w = x_in.shape
    grads = None
    if dense_grads:
        grads = (
            torch.randn(b, channels, h, w, dtype=dtype).contiguous(memory_format=fmt),
            torch.randn(b, 1, h, w, dtype=dtype),
        )
    want = run(layer, pre, x_in, query, grads, reference=True)
    got = run(layer, pre, x_in, query, grads, reference=False)
    assert_identical(got, want)
    return got


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize(
    "dtype, directions, with_query",
    [
        (torch.float32, "raster", False),
        (torch.float32, "bi", False),
        (torch.float32, "bi", True),
        (torch.float32, "quad", True),
        (torch.float64, "bi", True),
    ],
    ids=["fp32-raster", "fp32-bi", "fp32-bi-query", "fp32-quad-query", "fp64-bi-query"],
)
def test_attention_rnn_bit_identical_to_the_product_on_the_view(
    fmt, gate, dtype, directions, with_query
):
    torch.manual_seed(0)
    layer = AttentionRNN(
        6,
        hidden_channels=4,
        query_channels=3 if with_query else None,
        directions=directions,
        gate=gate,
    )
    # batch 5 and 9 x 7: neither the batch nor B*H*W a multiple of a vector's width, so the
    # elementwise loops have scalar tails that a change of element order would move
    x, q = torch.randn(5, 6, 9, 7), torch.randn(5, 3) if with_query else None
    got = check(layer, x, q, dtype, FORMATS[fmt])
    assert got["y"].is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize(
    "dtype, gate, with_query",
    [
        (torch.float32, "sigmoid", True),
        (torch.float32, "softmax", False),
        (torch.float64, "sigmoid", False),
    ],
    ids=["fp32-sigmoid-query", "fp32-softmax", "fp64-sigmoid"],
)
def test_block_attention_rnn_bit_identical(fmt, dtype, gate, with_query):
    torch.manual_seed(0)
    layer = BlockAttentionRNN(
        6, block_size=2, hidden_channels=4, query_channels=3 if with_query else None, gate=gate
    )
    x, q = torch.randn(5, 6, 9, 7), torch.randn(5, 3) if with_query else None
    check(layer, x, q, dtype, FORMATS[fmt])


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("implementation", ["fused", "bptt", "autograd"])
def test_every_implementation_and_an_expanded_gradient(fmt, implementation):
    torch.manual_seed(0)
    layer = AttentionRNN(6, hidden_channels=4, query_channels=3, implementation=implementation)
    x, q = torch.randn(5, 6, 9, 7), torch.randn(5, 3)
    check(layer, x, q, torch.float32, FORMATS[fmt], dense_grads=False)
    check(layer, x, q, torch.float32, FORMATS[fmt])


@pytest.mark.parametrize("size", [(1, 6, 9, 7), (5, 6, 1, 7), (5, 6, 9, 1), (1, 6, 1, 1)], ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
def test_size_one_dimensions(size, fmt):
    torch.manual_seed(0)
    layer = AttentionRNN(6, hidden_channels=4)
    check(layer, torch.randn(*size), None, torch.float32, FORMATS[fmt])
    check(layer, torch.randn(*size), None, torch.float32, FORMATS[fmt], dense_grads=False)


@pytest.mark.parametrize("x_fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_bf16_autocast_channels_last_network(x_fmt, gate):
    """E1's setting: a channels_last network under bf16 autocast; the layer's input channels_last
    (or contiguous), batch 50 as E1 trains."""
    torch.manual_seed(0)
    layer = AttentionRNN(8, hidden_channels=4, query_channels=3, gate=gate)
    x, q = torch.randn(50, 8, 13, 11), torch.randn(50, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = check(layer, x, q, torch.float32, FORMATS[x_fmt])
    # autocast runs the pre conv in bf16: the layer saw (and gave) bf16 channels_last maps
    assert got["y"].dtype == torch.bfloat16
    assert got["y"].is_contiguous(memory_format=FORMATS[x_fmt])


def test_dense_copy_only_where_the_strides_of_the_first_operand_decide():
    assert _strides_decide(torch.zeros(5, 2, 3, 4))
    assert _strides_decide(torch.zeros(5, 2, 3, 4).contiguous(memory_format=torch.channels_last))
    assert _strides_decide(torch.zeros(1, 2, 3, 4))  # size 1 but its own stride
    # tied strides (one channel, W = 1) or an expanded tensor: the mask's strides take part
    assert not _strides_decide(torch.zeros(5, 1, 3, 4))
    assert not _strides_decide(torch.zeros(5, 2, 3, 1))
    assert not _strides_decide(torch.ones(()).expand(5, 2, 3, 4))


def test_without_autograd_the_same_product():
    mask = torch.rand(4 * 3, 5).t().reshape(5, 1, 4, 3)  # batch-innermost, like the scan's
    for fmt in FORMATS.values():
        x = torch.randn(5, 2, 4, 3).contiguous(memory_format=fmt)
        with torch.no_grad():
            y = masked_product(x, mask)
        assert y.stride() == (x * mask).stride() and torch.equal(y, x * mask)
