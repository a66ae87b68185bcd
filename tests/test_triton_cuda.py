"""The Triton scan's compiled kernels on a CUDA GPU (marker ``cuda``; they skip without one).

Run by ``benchmarks/gpu_check.sh`` in a process of their own: Triton must not be in interpreter
mode (``TRITON_INTERPRET`` unset when it is imported), which ``tests/test_triton_scan.py`` sets
for its interpreter tests when it is collected in the same session.
"""

from __future__ import annotations

import pytest
import torch

from attentionrnn import AttentionRNN, ReferenceAttentionRNN
from attentionrnn.layers import triton_scan


def _why_not() -> str | None:
    if not torch.cuda.is_available():  # checked first: without a GPU, Triton is not imported
        return "needs a CUDA GPU"
    why = triton_scan.triton_unavailable_reason()
    if why is None and triton_scan.interpreting():
        why = "Triton runs its interpreter in this process (TRITON_INTERPRET=1): run this alone"
    return why


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


@pytest.mark.parametrize("directions", ["raster", "bi", "quad"])
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernels_match_reference(directions, feedback, dtype):
    """The compiled kernels against the per-pixel reference (run in float64 on the CPU), values
    and gradients; the last size needs several chunks per diagonal and several image groups."""
    from test_triton_scan import compare

    torch.manual_seed(7)
    fast = AttentionRNN(
        3, hidden_channels=8, directions=directions, feedback=feedback, query_channels=2,
        implementation="triton",
    ).to(dtype)  # fmt: skip
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(-0.8, 0.8)
    ref = ReferenceAttentionRNN.from_layer(fast).double()
    fast = fast.cuda()
    atol = 1e-10 if dtype == torch.float64 else 3e-5
    for batch, size in [(3, (5, 4)), (1, (1, 6)), (5, (6, 1)), (2, (1, 1)), (9, (40, 37))]:
        compare(fast, ref, batch, size, atol, "cuda", dtype, query=True)


@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_auto_is_triton_and_agrees_with_bptt(autocast):
    """On a GPU, ``auto`` runs the Triton scan; it agrees with the PyTorch BPTT path on a
    realistic size (28x28, batch 16, hidden 16), in float32 and under bf16 autocast."""
    torch.manual_seed(9)
    layers = {impl: AttentionRNN(32, implementation=impl).cuda() for impl in ("auto", "bptt")}
    layers["bptt"].load_state_dict(layers["auto"].state_dict())
    x = torch.randn(16, 32, 28, 28, device="cuda")
    if not triton_scan.suits_auto(x.device):
        pytest.skip(f"compute capability {torch.cuda.get_device_capability()}: auto runs bptt")
    assert layers["auto"].scan.resolved_implementation(x) == "triton"
    results = {}
    for impl, layer in layers.items():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            _, mask = layer(x, return_mask=True)
            hidden = layer.scan(torch.relu(layer.encoder(x)))
        assert hidden.dtype == torch.float32  # the recurrent state stays float32
        grads = torch.autograd.grad(mask.float().square().sum(), list(layer.parameters()))
        results[impl] = (mask, hidden, *grads)
    for a, b in zip(results["auto"], results["bptt"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
