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
from attentionrnn.layers import _extension

SIZES = [(5, 7), (7, 5), (4, 4), (1, 6), (6, 1), (1, 1)]
IMPLEMENTATIONS = [
    pytest.param(
        "fused",
        marks=pytest.mark.skipif(_extension.load() is None, reason="C++ kernels unavailable"),
    ),
    "bptt",
    "autograd",
]


def _pair(layer_cls, ref_cls, dtype, seed, implementation="auto", **kwargs):
    torch.manual_seed(seed)
    fast = layer_cls(3, hidden_channels=4, implementation=implementation, **kwargs).to(dtype)
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
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_reference_float64(directions, gate, feedback, with_query, implementation):
    kwargs = dict(directions=directions, gate=gate, feedback=feedback)
    if with_query:
        kwargs["query_channels"] = 2
    fast, ref = _pair(
        AttentionRNN, ReferenceAttentionRNN, torch.float64, 0, implementation, **kwargs
    )
    for k, (h, w) in enumerate(SIZES):
        batch = 1 if k % 2 else 2
        x = torch.randn(batch, 3, h, w, dtype=torch.float64, requires_grad=True)
        q = torch.randn(batch, 2, dtype=torch.float64) if with_query else None
        y_fast, m_fast = fast(x, q, return_mask=True)
        y_ref, m_ref = ref(x, q, return_mask=True)
        torch.testing.assert_close(m_fast, m_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-10)
        # Gradients too: the fused and bptt paths have hand-written backward passes.
        weights = torch.randn_like(y_fast)
        params_fast = [p for n, p in fast.named_parameters()]
        grads_fast = torch.autograd.grad(
            (y_fast * weights).sum(), [x, *params_fast], allow_unused=True
        )
        grads_ref = torch.autograd.grad(
            (y_ref * weights).sum(), [x, *ref.parameters()], allow_unused=True
        )
        for name, g_fast, g_ref in zip(
            ["x", *(n for n, _ in fast.named_parameters())], grads_fast, grads_ref, strict=True
        ):
            if g_ref is None:  # a 1x1 map never reads a predicted attention value
                assert name.startswith("scan.attention")
                assert g_fast is None or not g_fast.abs().sum()
                continue
            torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-9, msg=name)


@pytest.mark.parametrize("directions", ["raster", "bi", "quad"])
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_reference_float32(directions, feedback, implementation):
    fast, ref = _pair(
        AttentionRNN,
        ReferenceAttentionRNN,
        torch.float32,
        1,
        implementation,
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


FUSED_ONLY = pytest.mark.skipif(_extension.load() is None, reason="C++ kernels unavailable")


@FUSED_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [3, 4, 8, 16, 32])
@pytest.mark.parametrize("batch", [1, 6, 21])
def test_fused_kernels_every_width_and_batch_block(dtype, hidden, batch):
    """The C++ kernels specialise on gate widths that fill whole SIMD vectors (4h = 16, 32, 64,
    128 floats), process rows in blocks of 4 and work items of 16 batch elements: every path,
    with tails, against the per-pixel reference run in float64."""
    torch.manual_seed(hidden + batch)
    fast = AttentionRNN(3, hidden_channels=hidden, query_channels=2, implementation="fused")
    fast = fast.to(dtype)
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(-0.5, 0.5)
    ref = ReferenceAttentionRNN.from_layer(fast).double()
    x = torch.randn(batch, 3, 5, 7, dtype=torch.float64)
    q = torch.randn(batch, 2, dtype=torch.float64)
    x_fast = x.to(dtype).clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_fast, m_fast = fast(x_fast, q.to(dtype), return_mask=True)
    y_ref, m_ref = ref(x_ref, q, return_mask=True)
    atol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(m_fast.double(), m_ref, rtol=0, atol=atol)
    weights = torch.randn_like(y_ref)
    (y_fast * weights.to(dtype)).sum().backward()
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(x_fast.grad.double(), x_ref.grad, rtol=0, atol=10 * atol)
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(
            p_fast.grad.double(), p_ref.grad, rtol=1e-4 if dtype == torch.float32 else 0,
            atol=10 * atol, msg=name,
        )  # fmt: skip


@FUSED_ONLY
@pytest.mark.parametrize("directions", [("top_left",), ("top_left", "bottom_right", "top_right")])
@pytest.mark.parametrize("feedback", [True, False])
def test_fused_hidden_maps_match_the_autograd_scan(directions, feedback):
    """``DiagonalLSTMScan.forward`` returns the hidden maps themselves (the kernels' output
    without a readout): values and every gradient against the plain autograd loop."""
    from attentionrnn.layers.scan import DiagonalLSTMScan

    torch.manual_seed(5)
    scans = {
        implementation: DiagonalLSTMScan(
            3, 8, directions, feedback, implementation=implementation
        ).double()
        for implementation in ("fused", "autograd")
    }
    with torch.no_grad():
        for p in scans["fused"].parameters():
            p.uniform_(-0.6, 0.6)
    scans["autograd"].load_state_dict(scans["fused"].state_dict())
    e = torch.randn(6, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, len(directions) * 8, 5, 7, dtype=torch.float64)
    results = {}
    for implementation, scan in scans.items():
        out = scan(e)
        grads = torch.autograd.grad((out * weights).sum(), [e, *scan.parameters()])
        results[implementation] = (out, grads)
    torch.testing.assert_close(results["fused"][0], results["autograd"][0], rtol=0, atol=1e-10)
    for g_fused, g_loop in zip(results["fused"][1], results["autograd"][1], strict=True):
        torch.testing.assert_close(g_fused, g_loop, rtol=0, atol=1e-9)


@FUSED_ONLY
def test_fused_results_do_not_depend_on_the_thread_count():
    """Work items have a fixed size, so every sum runs in the same order whatever the threads."""
    from attentionrnn.layers.scan import CORNER_FLIPS, DiagonalLSTMScan

    torch.manual_seed(7)
    scan = DiagonalLSTMScan(5, 16, tuple(CORNER_FLIPS), implementation="fused")
    e = torch.randn(37, 5, 9, 6, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = scan(e)
            grads = torch.autograd.grad(out.square().sum(), [e, *scan.parameters()])
            results.append([out.detach(), *grads])
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results, strict=True):
        assert torch.equal(one, many)


@pytest.mark.parametrize(
    "layer_cls,ref_cls,kwargs",
    [
        (AttentionRNN, ReferenceAttentionRNN, {"directions": "bi"}),
        (AttentionRNN, ReferenceAttentionRNN, {"directions": "quad", "gate": "softmax"}),
        (BlockAttentionRNN, ReferenceBlockAttentionRNN, {"block_size": 2}),
    ],
)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_multiplicative_query_fusion_matches_reference(layer_cls, ref_cls, kwargs, implementation):
    """``query_fusion="mul"``: the fast layer and its reference agree, values and gradients, and
    the reference really multiplies (it differs from the additive layer with the same weights)."""
    fast, ref = _pair(
        layer_cls, ref_cls, torch.float64, 4, implementation, query_channels=2,
        query_fusion="mul", **kwargs,
    )  # fmt: skip
    assert ref.query_fusion == "mul" and "query_fusion='mul'" in repr(ref)
    for h, w in [(5, 6), (1, 4), (3, 1)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        q = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
        y_fast, m_fast = fast(x, q, return_mask=True)
        y_ref, m_ref = ref(x, q, return_mask=True)
        torch.testing.assert_close(m_fast, m_ref, rtol=0, atol=1e-10)
        weights = torch.randn_like(y_fast)
        g_fast = torch.autograd.grad((y_fast * weights).sum(), [x, q, fast.query_proj.weight])
        g_ref = torch.autograd.grad((y_ref * weights).sum(), [x, q, ref.query_proj.weight])
        for a, b in zip(g_fast, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    additive = ref_cls(**{**fast.config(), "query_fusion": "add"}).double()
    additive.load_state_dict(fast.state_dict())
    x, q = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    assert (additive(x, q) - fast(x, q)).abs().max() > 1e-6
