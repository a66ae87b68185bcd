"""Receptive fields of the mask through autograd, and gradcheck."""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN, BlockAttentionRNN


def expected_field(directions: str, height: int, width: int, i: int, j: int) -> torch.Tensor:
    """raster sees p<=i, q<=j; bi adds p>=i, q>=j; quad sees everything."""
    p = torch.arange(height)[:, None]
    q = torch.arange(width)[None, :]
    raster = (p <= i) & (q <= j)
    if directions == "raster":
        return raster
    inverse = (p >= i) & (q >= j)
    if directions == "bi":
        return raster | inverse
    return torch.ones(height, width, dtype=torch.bool)


@pytest.mark.parametrize("directions", ["raster", "bi", "quad"])
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("size", [(5, 6), (6, 4), (1, 5)])
@pytest.mark.parametrize("implementation", ["auto", "bptt", "autograd"])
def test_receptive_field_is_exactly_the_scan_region(directions, feedback, size, implementation):
    torch.manual_seed(0)
    height, width = size
    layer = AttentionRNN(
        2,
        hidden_channels=3,
        kernel_size=1,
        directions=directions,
        feedback=feedback,
        implementation=implementation,
    ).double()
    with torch.no_grad():  # keep the encoder's ReLU active so no pixel's gradient is cut there
        layer.encoder.bias.fill_(10.0)
    x = torch.randn(1, 2, height, width, dtype=torch.float64, requires_grad=True)
    _, mask = layer(x, return_mask=True)
    for i, j in {
        (0, 0),
        (height - 1, width - 1),
        (height // 2, width // 2),
        (0, width - 1),
        (height - 1, 0),
    }:
        (grad,) = torch.autograd.grad(mask[0, 0, i, j], x, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 1)) != 0
        expected = expected_field(directions, height, width, i, j)
        assert torch.equal(seen, expected), f"position {(i, j)}:\n{seen.int()}\n{expected.int()}"


def test_feedback_carries_predicted_attention_into_the_recurrence():
    """The attention head of each direction only matters through the feedback path."""
    torch.manual_seed(0)
    layer = AttentionRNN(2, hidden_channels=3).double()
    _, mask = layer(torch.randn(1, 2, 4, 5, dtype=torch.float64), return_mask=True)
    grad = torch.autograd.grad(mask.sum(), layer.scan.attention_bias)[0]
    assert (grad.abs() > 0).all()
    assert AttentionRNN(2, hidden_channels=3, feedback=False).scan.attention_bias is None


@pytest.mark.parametrize("layer_cls", [AttentionRNN, BlockAttentionRNN])
@pytest.mark.parametrize("implementation", ["auto", "bptt", "autograd"])
def test_gradcheck(layer_cls, implementation):
    torch.manual_seed(0)
    layer = layer_cls(2, hidden_channels=2, query_channels=2, implementation=implementation)
    layer = layer.double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, q))
    params = tuple(layer.parameters())

    def by_params(*ps):
        return torch.func.functional_call(
            layer,
            dict(zip([n for n, _ in layer.named_parameters()], ps, strict=True)),
            (x.detach(), q.detach()),
        )

    assert torch.autograd.gradcheck(by_params, tuple(p.detach().requires_grad_() for p in params))
