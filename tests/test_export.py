"""TorchScript tracing, ONNX export (checked with onnxruntime) and torch.compile."""

from __future__ import annotations

import warnings

import pytest
import torch

from attentionrnn import AttentionRNN, BlockAttentionRNN


def _example(layer_cls):
    torch.manual_seed(0)
    kwargs = {"block_size": 2} if layer_cls is BlockAttentionRNN else {}
    layer = layer_cls(4, hidden_channels=3, query_channels=2, **kwargs).eval()
    return layer, torch.randn(2, 4, 6, 5), torch.randn(2, 2)


@pytest.mark.parametrize("layer_cls", [AttentionRNN, BlockAttentionRNN])
def test_jit_trace(layer_cls):
    layer, x, q = _example(layer_cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shape checks become constants in a trace
        traced = torch.jit.trace(layer, (x, q))
    torch.testing.assert_close(traced(x, q), layer(x, q))
    # another batch size: the trace's values, not only its shape, match the eager layer
    x2, q2 = torch.randn(3, 4, 6, 5), torch.randn(3, 2)
    torch.testing.assert_close(traced(x2, q2), layer(x2, q2))


@pytest.mark.parametrize("layer_cls", [AttentionRNN, BlockAttentionRNN])
def test_onnx_export_matches_onnxruntime(layer_cls, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layer, x, q = _example(layer_cls)
    path = tmp_path / "layer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            layer, (x, q), str(path), input_names=["x", "query"], output_names=["y"], dynamo=False,
            dynamic_axes={"x": {0: "batch"}, "query": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy(), "query": q.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), layer(x, q), rtol=1e-5, atol=1e-6)
    # another batch size than the export's: the same values as the eager layer
    x3, q3 = torch.randn(5, 4, 6, 5), torch.randn(5, 2)
    (y3,) = session.run(None, {"x": x3.numpy(), "query": q3.numpy()})
    torch.testing.assert_close(torch.from_numpy(y3), layer(x3, q3), rtol=1e-5, atol=1e-6)


def test_torch_compile():
    layer, x, q = _example(AttentionRNN)
    x, q = x[:, :, :3, :4], q  # a short scan keeps compilation quick
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x, q), layer(x, q), rtol=1e-5, atol=1e-6)
