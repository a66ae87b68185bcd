"""Behaviour of the public layers: shapes, gates, dtypes, parameters, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from attentionrnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers import _extension
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


def test_auto_implementation_prefers_fused_kernels_and_falls_back(monkeypatch):
    layer = AttentionRNN(6, hidden_channels=4)
    x = torch.randn(2, 6, 5, 4)
    expected = "fused" if _extension.load() is not None else "bptt"
    assert layer.scan.resolved_implementation(x) == expected
    y_auto = layer(x)
    monkeypatch.setenv("ATTENTIONRNN_NO_EXTENSION", "1")
    _extension.load.cache_clear()
    try:
        assert _extension.load() is None
        assert layer.scan.resolved_implementation(x) == "bptt"
        torch.testing.assert_close(layer(x), y_auto, rtol=0, atol=1e-6)
        with pytest.raises(RuntimeError, match="unavailable here: ATTENTIONRNN_NO_EXTENSION"):
            AttentionRNN(6, hidden_channels=4, implementation="fused")
        with pytest.raises(RuntimeError, match="unavailable"):
            layer.scan.implementation = "fused"
    finally:
        monkeypatch.delenv("ATTENTIONRNN_NO_EXTENSION")
        _extension.load.cache_clear()


@pytest.mark.skipif(
    os.environ.get("ATTENTIONRNN_REQUIRE_EXTENSION", "") in ("", "0"),
    reason="ATTENTIONRNN_REQUIRE_EXTENSION not set (CI sets it)",
)
def test_fused_kernels_build_where_required():
    """Without this, a kernel that no longer compiles would only skip the fused tests."""
    _extension.load.cache_clear()
    assert _extension.load() is not None


def test_kernel_builds_are_cached_per_cpu_and_flags(monkeypatch):
    """-march=native binaries must not be shared between different CPUs through one cache."""
    monkeypatch.delenv("ATTENTIONRNN_EXTENSION_CFLAGS", raising=False)
    here = _extension.build_name()
    assert here == _extension.build_name()
    monkeypatch.setenv("ATTENTIONRNN_EXTENSION_CFLAGS", "-mno-avx512f")
    assert _extension.build_name() != here
    monkeypatch.delenv("ATTENTIONRNN_EXTENSION_CFLAGS")
    monkeypatch.setattr(_extension, "_cpu_description", lambda: "model name: another CPU")
    assert _extension.build_name() != here


def test_kernel_builds_are_keyed_on_every_source_and_header(monkeypatch, tmp_path):
    """An edited kernel (a .cpp or a header it includes) never loads an older build."""
    for path in _extension.CSRC.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert {p.name for p in _extension.SOURCES} <= {p.name for p in tmp_path.iterdir()}
    monkeypatch.setattr(_extension, "CSRC", tmp_path)
    here = _extension.build_name()
    header = tmp_path / "simd.h"
    header.write_text(header.read_text() + "\n// edited\n")
    assert _extension.build_name() != here


def _cpu_has_avx512() -> bool:
    return "avx512f" in _extension._cpu_description().split()


_AVX2_CHECK = """
import torch
from attentionrnn import AttentionRNN
from attentionrnn.layers import _extension
assert _extension.load() is not None, "the kernels did not build without AVX-512"
torch.manual_seed(0)
for hidden in (8, 16, 32):  # AVX2 float: 4, 8 and 16 vectors of gates
    x = torch.randn(5, 8, 6, 7, requires_grad=True)
    grads = []
    for implementation in ("fused", "bptt"):
        torch.manual_seed(1)
        layer = AttentionRNN(8, hidden_channels=hidden, implementation=implementation)
        x.grad = None
        y = layer(x)
        y.square().sum().backward()
        grads.append((y.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
"""


@pytest.mark.skipif(
    os.environ.get("ATTENTIONRNN_REQUIRE_EXTENSION", "") in ("", "0") or not _cpu_has_avx512(),
    reason="needs ATTENTIONRNN_REQUIRE_EXTENSION (CI sets it) and an AVX-512 CPU",
)
def test_fused_kernels_build_and_agree_without_avx512():
    """The kernels are specialised for AVX-512, AVX2 and plain 64-byte vectors; on an AVX-512
    machine only the first would otherwise be compiled. Builds the AVX2 variant (a separate cache
    entry, about 40 s the first time) and checks it against the PyTorch implementation."""
    env = dict(os.environ, ATTENTIONRNN_EXTENSION_CFLAGS="-mno-avx512f")
    done = subprocess.run(
        [sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_double_backward_is_refused_not_wrong():
    layer = AttentionRNN(6, hidden_channels=4).double()
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def test_unknown_implementation_is_named():
    from attentionrnn.layers.scan import DiagonalLSTMScan

    with pytest.raises(ValueError, match="implementation"):
        DiagonalLSTMScan(4, 4, implementation="cuda-magic")


@pytest.mark.parametrize("layer_cls", [AttentionRNN, BlockAttentionRNN])
def test_implementation_is_a_constructor_argument(layer_cls):
    from attentionrnn import ReferenceAttentionRNN, ReferenceBlockAttentionRNN

    choices = ["auto", "bptt", "autograd"] + (["fused"] if _extension.load() else [])
    reference_cls = {
        AttentionRNN: ReferenceAttentionRNN,
        BlockAttentionRNN: ReferenceBlockAttentionRNN,
    }[layer_cls]
    x = torch.randn(2, 6, 5, 4)
    torch.manual_seed(0)
    outputs = {}
    for implementation in choices:
        torch.manual_seed(0)
        layer = layer_cls(6, hidden_channels=4, implementation=implementation)
        assert layer.implementation == layer.scan.implementation == implementation
        assert layer.config()["implementation"] == implementation
        assert layer_cls(**layer.config()).implementation == implementation
        assert (f"implementation='{implementation}'" in layer.extra_repr()) == (
            implementation != "auto"
        )
        ref = reference_cls.from_layer(layer)
        assert ref.implementation == implementation
        outputs[implementation] = layer(x)
        torch.testing.assert_close(ref(x), outputs[implementation], rtol=0, atol=1e-5)
    if "fused" in choices:
        assert layer_cls(6, hidden_channels=4).scan.resolved_implementation(x) == "fused"
    bptt = layer_cls(6, hidden_channels=4, implementation="bptt")
    assert bptt.scan.resolved_implementation(x) == "bptt"
    with pytest.raises(ValueError, match="implementation"):
        layer_cls(6, hidden_channels=4, implementation="cuda-magic")


@pytest.mark.skipif(_extension.load() is None, reason="C++ kernels unavailable")
def test_fused_is_refused_off_the_cpu_and_once_the_kernels_are_gone(monkeypatch):
    """Asking for the fused kernels where they cannot run is an error naming why, not a silent
    fall-back to another implementation."""
    layer = AttentionRNN(6, hidden_channels=4, implementation="fused")
    with pytest.raises(RuntimeError, match="CPU only.*meta"):
        layer.to("meta")(torch.empty(2, 6, 5, 4, device="meta"))
    layer = AttentionRNN(6, hidden_channels=4, implementation="fused")
    x = torch.randn(2, 6, 5, 4)
    layer(x)
    monkeypatch.setenv("ATTENTIONRNN_NO_EXTENSION", "1")
    _extension.load.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="'fused'.*unavailable here: ATTENTIONRNN_NO_EXT"):
            layer(x)
    finally:
        monkeypatch.delenv("ATTENTIONRNN_NO_EXTENSION")
        _extension.load.cache_clear()


@pytest.mark.skipif(_extension.load() is None, reason="C++ kernels unavailable")
def test_kernel_arguments_are_matched_by_name():
    """The kernels take a ScanArgs whose fields are set by name: a misspelt name and a missing
    field are errors that name the field."""
    kernels = _extension.load()
    args = kernels.ScanArgs()
    with pytest.raises(AttributeError):
        args.w_in = torch.zeros(1)  # not a field: the kernels read the packed w_cat
    with pytest.raises(RuntimeError, match="ScanArgs.e_rows is not set"):
        kernels.forward(args)
    assert kernels.vector_bytes in (16, 32, 64)


def test_diagonal_schedule_and_packing_index_agree():
    """Packed cell k of diagonal t is (i, t - i) with i from first_row[t] on; the packing index of
    each direction is a permutation of the map's positions in that order."""
    from attentionrnn.layers.diagonal import CORNER_FLIPS, DiagonalSchedule, packing_index

    height, width = 4, 6
    sched = DiagonalSchedule.of(height, width)
    index = packing_index(sched, tuple(CORNER_FLIPS), torch.device("cpu"))
    top_left = index[0].tolist()
    for t in range(sched.steps):
        for k in range(sched.length[t]):
            i = sched.first_row[t] + k
            assert top_left[sched.packed_start[t] + k] == i * width + (t - i)
    for row in index:
        assert sorted(row.tolist()) == list(range(height * width))
    layout = sched.kernel_layout
    assert layout["neighbour_start"][1:] == [sched.neighbour_start(t) for t in range(1, 9)]
    assert len(sched.pad_rows(torch.device("cpu"))) == 2 * sched.steps


def test_kernel_weight_packing_round_trips():
    from attentionrnn.layers.diagonal import (
        TAP_ABOVE,
        TAP_LEFT,
        kernel_weights,
        split_kernel_weights,
        state_taps,
    )

    dirs, cin, hidden, feedback = 2, 5, 3, True
    w_in = torch.randn(dirs, cin, 4 * hidden)
    w_state = state_taps(torch.randn(dirs, 4 * hidden, hidden + feedback, 2)).contiguous()
    w_cat, w_cat_t = kernel_weights(w_in, w_state, vector_bytes=64)
    s = hidden + feedback
    assert w_cat.shape == (dirs, cin + 2 * s, 4 * hidden)
    torch.testing.assert_close(w_cat[:, cin : cin + s], w_state[:, TAP_ABOVE])
    torch.testing.assert_close(w_cat[:, cin + s :], w_state[:, TAP_LEFT])
    assert w_cat_t.shape[-1] % 16 == 0 and w_cat_t.shape[-1] >= cin + 2 * hidden
    main = torch.cat([w_in, w_state[:, 0, :hidden], w_state[:, 1, :hidden]], 1)
    torch.testing.assert_close(w_cat_t[..., : cin + 2 * hidden], main.transpose(1, 2))
    assert not w_cat_t[..., cin + 2 * hidden :].any()
    d_w_in, d_w_state = split_kernel_weights(w_cat, cin)
    assert torch.equal(d_w_in, w_in) and torch.equal(d_w_state, w_state)


def test_one_module_owns_the_layout():
    """The implementations take the layout and the weight packing from layers/diagonal.py; the
    fused wrapper does not reach into the PyTorch BPTT module for it."""
    import ast
    import inspect

    from attentionrnn.layers import bptt, fused, reference, scan

    def imports(module):
        tree = ast.parse(inspect.getsource(module))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    for module in (bptt, fused, reference, scan):
        assert "attentionrnn.layers.diagonal" in imports(module), module.__name__
    assert "attentionrnn.layers.bptt" not in imports(fused)
    assert not hasattr(bptt, "DiagonalSchedule") or bptt.DiagonalSchedule.__module__.endswith(
        "diagonal"
    )
