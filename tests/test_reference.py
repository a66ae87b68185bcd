"""The fast layers agree with the per-pixel reference for random weights."""

from __future__ import annotations

import itertools

import pytest
import torch

from attentionrnn import (
    AttentionRNN,
    BlockAttentionRNN,
    ReferenceAttentionRNN,
    ReferenceBlockAttentionRNN,
)

SIZES = [(5, 7), (7, 5), (4, 4), (1, 6), (6, 1), (1, 1)]


def _pair(layer_cls, ref_cls, dtype, seed, **kwargs):
    torch.manual_seed(seed)
    fast = layer_cls(3, hidden_channels=4, **kwargs).to(dtype)
    # Random, non-default weights: biases and the feedback path must be exercised too.
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(-0.8, 0.8)
    return fast, ref_cls.from_layer(fast)


@pytest.mark.parametrize(
    "directions,gate,feedback,with_query",
    list(
        itertools.product(
            ["raster", "bi", "quad"], ["sigmoid", "softmax"], [True, False], [True, False]
        )
    ),
)
def test_matches_reference_float64(directions, gate, feedback, with_query):
    kwargs = dict(directions=directions, gate=gate, feedback=feedback)
    if with_query:
        kwargs["query_channels"] = 2
    fast, ref = _pair(AttentionRNN, ReferenceAttentionRNN, torch.float64, 0, **kwargs)
    for k, (h, w) in enumerate(SIZES):
        batch = 1 if k % 2 else 2
        x = torch.randn(batch, 3, h, w, dtype=torch.float64)
        q = torch.randn(batch, 2, dtype=torch.float64) if with_query else None
        y_fast, m_fast = fast(x, q, return_mask=True)
        y_ref, m_ref = ref(x, q, return_mask=True)
        torch.testing.assert_close(m_fast, m_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("directions", ["raster", "bi", "quad"])
@pytest.mark.parametrize("feedback", [True, False])
def test_matches_reference_float32(directions, feedback):
    fast, ref = _pair(
        AttentionRNN,
        ReferenceAttentionRNN,
        torch.float32,
        1,
        directions=directions,
        feedback=feedback,
        query_channels=2,
    )
    for h, w in SIZES:
        x, q = torch.randn(2, 3, h, w), torch.randn(2, 2)
        torch.testing.assert_close(
            fast(x, q, return_mask=True)[1], ref(x, q, return_mask=True)[1], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("block_size", [2, 3])
@pytest.mark.parametrize("size", [(6, 6), (6, 9), (7, 5), (5, 11), (1, 1), (2, 3)])
def test_block_matches_reference(block_size, size):
    fast, ref = _pair(
        BlockAttentionRNN,
        ReferenceBlockAttentionRNN,
        torch.float64,
        2,
        block_size=block_size,
        query_channels=2,
    )
    x, q = torch.randn(2, 3, *size, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    torch.testing.assert_close(fast(x, q), ref(x, q), rtol=0, atol=1e-10)


def test_reference_is_not_trivially_equal():
    """Changing one weight of the fast layer after copying must break the agreement."""
    fast, ref = _pair(AttentionRNN, ReferenceAttentionRNN, torch.float64, 3)
    with torch.no_grad():
        fast.scan.state_to_state[1, 0, 0, 0] += 0.5  # inverse-raster direction, above tap
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    assert (fast(x) - ref(x)).abs().max() > 1e-6
