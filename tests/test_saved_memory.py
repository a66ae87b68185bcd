"""What the fused scan keeps for backward (issue 35): by default not the gate activations, which the
backward kernel recomputes with the forward pass's own products (``$ATTENTIONRNN_SCAN_ACTS``
``recompute``), nor a second copy of the encoded map (the ReLU and the scan keep one tensor).

The recomputed activations must be the kept ones exactly, so gradients are checked bit for bit
against the path that keeps them (``keep``), in float64 and float32, on every gate width the
kernels specialise and under bf16 autocast with the pair products; ``bf16`` (activations kept
rounded to bf16 under autocast) within bf16 tolerance of ``keep``. The per-pixel reference tests
(tests/test_reference.py) run the default path.
"""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN, ReferenceAttentionRNN
from attentionrnn.layers import _extension, fused
from attentionrnn.layers.baselines import ContextAttention

pytestmark = pytest.mark.skipif(_extension.load() is None, reason="C++ kernels unavailable")


def _train_step(layer, x, monkeypatch, acts: str, autocast: bool = False, query=None):
    """Output, mask and gradients (input, every parameter) of one forward + backward."""
    monkeypatch.setenv(fused.SCAN_ACTS_ENV, acts)
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, mask = layer(x, query, return_mask=True)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y.float() * weights.float()).sum().backward()
    return [y.detach(), mask.detach(), x.grad, *(p.grad for p in layer.parameters())]


def _layer(channels, hidden, dtype=torch.float32, **kwargs):
    torch.manual_seed(channels + hidden)
    layer = AttentionRNN(channels, hidden_channels=hidden, implementation="fused", **kwargs).to(
        dtype
    )
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.5, 0.5)
    return layer


def test_the_default_keeps_no_gate_activations(monkeypatch):
    monkeypatch.delenv(fused.SCAN_ACTS_ENV, raising=False)
    assert fused.DEFAULT_SCAN_ACTS == "recompute"
    assert fused.keep_acts(torch.zeros(2, 16, 64)) == "none"
    monkeypatch.setenv(fused.SCAN_ACTS_ENV, "bf16")
    assert fused.keep_acts(torch.zeros(2, 16, 64)) == "float"  # outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.keep_acts(torch.zeros(2, 16, 64)) == "bf16"
        assert fused.keep_acts(torch.zeros(2, 16, 64, dtype=torch.float64)) == "float"
    monkeypatch.setenv(fused.SCAN_ACTS_ENV, "half")
    with pytest.raises(ValueError, match="ATTENTIONRNN_SCAN_ACTS"):
        fused.keep_acts(torch.zeros(2, 16, 64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels,hidden", [(3, 3), (3, 4), (5, 8), (16, 16), (3, 32)])
@pytest.mark.parametrize("size,batch", [((5, 7), 21), ((1, 6), 3), ((6, 1), 2)])
def test_recomputed_gate_activations_give_the_kept_gradients(
    monkeypatch, dtype, channels, hidden, size, batch
):
    """Every gate width the kernels specialise (4h = 12 generic, 16, 32, 64, 128), row blocks
    and their tails, one-row and one-column maps: the same bits as keeping the activations."""
    layer = _layer(channels, hidden, dtype, query_channels=2)
    x = torch.randn(batch, channels, *size, dtype=dtype)
    q = torch.randn(batch, 2, dtype=dtype)
    kept = _train_step(layer, x, monkeypatch, "keep", query=q)
    recomputed = _train_step(layer, x, monkeypatch, "recompute", query=q)
    for a, b in zip(kept, recomputed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("feedback", [True, False])
def test_recomputed_gate_activations_under_autocast_give_the_kept_gradients(monkeypatch, feedback):
    """Under bf16 autocast (with the bf16 pair products where the CPU has them, which the
    recomputation must use as the forward pass did)."""
    layer = _layer(16, 16, feedback=feedback)
    x = torch.randn(19, 16, 9, 13)
    kept = _train_step(layer, x, monkeypatch, "keep", autocast=True)
    recomputed = _train_step(layer, x, monkeypatch, "recompute", autocast=True)
    for a, b in zip(kept, recomputed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("acts", ["recompute", "bf16"])
def test_the_recompute_path_matches_the_per_pixel_reference_in_float64(monkeypatch, acts):
    """Through the recomputation (and, outside autocast, ``bf16`` keeps float64 activations)."""
    layer = _layer(3, 4, torch.float64, query_channels=2, directions="quad")
    ref = ReferenceAttentionRNN.from_layer(layer)
    x = torch.randn(3, 3, 5, 6, dtype=torch.float64)
    q = torch.randn(3, 2, dtype=torch.float64)
    fast = _train_step(layer, x, monkeypatch, acts, query=q)
    slow = _train_step(ref, x, monkeypatch, acts, query=q)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_gate_activations_kept_in_bf16_stay_within_bf16_tolerance(monkeypatch):
    """``bf16`` rounds the kept activations under autocast: the forward pass is unchanged, the
    gradients within 5 % (relative norm; the attention bias's gradient, a sum of few terms of
    both signs, moves most, about 2 % here) of keeping them in float32 under the same autocast."""
    layer = _layer(16, 16, query_channels=3)
    x, q = torch.randn(21, 16, 9, 11), torch.randn(21, 3)
    kept = _train_step(layer, x, monkeypatch, "keep", autocast=True, query=q)
    rounded = _train_step(layer, x, monkeypatch, "bf16", autocast=True, query=q)
    assert torch.equal(kept[0], rounded[0]) and torch.equal(kept[1], rounded[1])
    for a, b in zip(rounded[2:], kept[2:], strict=True):
        assert _relative(a, b) < 5e-2
    assert not torch.equal(rounded[2], kept[2])  # the rounded activations were used


def _saved_storages(layer, x, autocast=False):
    """(bytes, dtype) of each distinct storage autograd keeps for a forward of ``layer`` on
    ``x``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
    return storages


@pytest.mark.parametrize("autocast", [False, True])
def test_the_layer_keeps_at_most_2_5_times_the_local_attention(monkeypatch, autocast):
    """The issue's memory target, at a map small enough for a test (batch 8, 32 channels, hidden
    16, 40²): no gate activations and one encoded map among the saved tensors."""
    monkeypatch.delenv(fused.SCAN_ACTS_ENV, raising=False)
    torch.manual_seed(0)
    x = torch.randn(8, 32, 40, 40, requires_grad=True)
    layer = AttentionRNN(32, hidden_channels=16, implementation="fused")
    saved = _saved_storages(layer, x, autocast)
    local = _saved_storages(ContextAttention(32, hidden_channels=16, kernel_size=3), x, autocast)
    acts_bytes = 2 * 40 * 40 * 8 * 64 * 4
    map_bytes = 40 * 40 * 8 * 16 * 4  # the encoded map, float32 (also under autocast)
    assert max(n for n, _ in saved.values()) < acts_bytes
    # the ReLU's output is the scan's e_rows
    assert list(saved.values()).count((map_bytes, torch.float32)) == 1
    total = sum(n for n, _ in saved.values())
    assert total <= 2.5 * sum(n for n, _ in local.values())
