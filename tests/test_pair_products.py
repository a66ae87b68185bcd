"""The fused scan's bf16 pair products (under CPU bf16 autocast, on CPUs with AVX-512 BF16).

The products take bf16 operands with float32 accumulation, so they are checked against the same
scan with float32 products (``ATTENTIONRNN_SCAN_PRODUCTS=fp32``): close (bf16 rounding), not
equal (the pair path really ran), and the float32 path itself unchanged by autocast.
"""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN
from attentionrnn.layers import _extension, fused
from attentionrnn.layers.diagonal import pair_weights
from attentionrnn.layers.scan import DiagonalLSTMScan

kernels = _extension.load()
needs_pairs = pytest.mark.skipif(
    kernels is None or not getattr(kernels, "pair_products", False),
    reason="the kernels' bf16 pair products need a CPU with AVX-512 BF16",
)


def test_pair_weights_pack_consecutive_rows_of_each_column_into_one_word():
    torch.manual_seed(0)
    w_cat_t = torch.randn(2, 64, 48)  # (D, 4h, Cin + 2h)
    w_pairs, w_pairs_t = pair_weights(w_cat_t)
    assert w_pairs.dtype == w_pairs_t.dtype == torch.int32
    assert w_pairs.shape == (2, 24, 64) and w_pairs_t.shape == (2, 32, 48)
    rounded = w_cat_t.to(torch.bfloat16)
    # each int32 word holds two bf16 values, the even row in the low half (little-endian)
    halves = w_pairs_t.view(torch.bfloat16).view(2, 32, 48, 2)
    assert torch.equal(halves[..., 0], rounded[:, 0::2])
    assert torch.equal(halves[..., 1], rounded[:, 1::2])
    halves = w_pairs.view(torch.bfloat16).view(2, 24, 64, 2)
    rows = rounded.transpose(1, 2)
    assert torch.equal(halves[..., 0], rows[:, 0::2])
    assert torch.equal(halves[..., 1], rows[:, 1::2])


def _scan_run(scan, e, readout, monkeypatch, products: str | None, autocast: bool = True):
    """Output and gradients (input, every parameter) of the fused scan's readout."""
    if products is None:
        monkeypatch.delenv(fused.SCAN_PRODUCTS_ENV, raising=False)
    else:
        monkeypatch.setenv(fused.SCAN_PRODUCTS_ENV, products)
    x = e.clone().requires_grad_()
    scan.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = scan.hidden_readout(x, readout)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y.float() * weights).sum().backward()
    return [y.detach().float(), x.grad, *(p.grad.clone() for p in scan.parameters())]


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@needs_pairs
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("size,batch", [((9, 13), 21), ((1, 7), 2), ((5, 1), 3)])
def test_pair_products_are_the_float32_scan_to_bf16_precision(monkeypatch, feedback, size, batch):
    torch.manual_seed(0)
    scan = DiagonalLSTMScan(16, 16, feedback=feedback, implementation="fused")
    # bf16-exact input: under autocast the encoder hands the scan a bf16 map
    e = torch.randn(batch, 16, *size).to(torch.bfloat16).float()
    readout = torch.randn(2, 16)
    pairs = _scan_run(scan, e, readout, monkeypatch, products=None)
    exact = _scan_run(scan, e, readout, monkeypatch, products="fp32")
    for name, a, b in zip(
        ["output", "d_e", *dict(scan.named_parameters())], pairs, exact, strict=True
    ):
        assert _relative(a, b) < 1e-2, name
    assert not torch.equal(pairs[0], exact[0])  # the pair products did run


@needs_pairs
@pytest.mark.parametrize(
    "hidden,products",
    [
        (32, "fp32"),  # switched off: the float32 products, as without autocast
        (8, None),  # 32 gates, not whole 64-gate blocks: no pair path, under autocast too
    ],
)
def test_float32_products_under_autocast_are_the_float32_scan(monkeypatch, hidden, products):
    torch.manual_seed(0)
    scan = DiagonalLSTMScan(16, hidden, implementation="fused")
    e = torch.randn(4, 16, 6, 7).to(torch.bfloat16).float()
    readout = torch.randn(2, hidden)
    under_autocast = _scan_run(scan, e, readout, monkeypatch, products=products)
    plain = _scan_run(scan, e, readout, monkeypatch, products=None, autocast=False)
    for a, b in zip(under_autocast, plain, strict=True):
        assert torch.equal(a, b)


@needs_pairs
def test_layer_under_autocast_trains_with_pair_products_close_to_float32(monkeypatch):
    """The whole layer (encoder in bf16, scan with pair products): the mask within bf16 error of
    the float32 layer's and finite gradients."""
    torch.manual_seed(0)
    layer = AttentionRNN(32, hidden_channels=16, query_channels=4, gate="softmax")
    x, q = torch.randn(6, 32, 11, 10), torch.randn(6, 4)
    monkeypatch.delenv(fused.SCAN_PRODUCTS_ENV, raising=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, mask = layer(x, q, return_mask=True)
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    reference = layer(x, q, return_mask=True)[1]
    assert _relative(mask.float(), reference) < 2e-2


@needs_pairs
def test_kernels_refuse_pair_weights_of_the_wrong_shape(monkeypatch):
    monkeypatch.setattr(
        fused, "pair_weights", lambda w_cat_t: (torch.zeros(2, 3, 64, dtype=torch.int32),) * 2
    )
    scan = DiagonalLSTMScan(16, 16, implementation="fused")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="w_pairs"):
        scan.hidden_readout(torch.randn(2, 16, 4, 4), torch.randn(2, 16))
