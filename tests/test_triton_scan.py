"""The Triton scan (``implementation="triton"``) against the per-pixel reference, under Triton's
interpreter.

Without a GPU the kernels run under Triton's interpreter on CPU tensors. Triton builds its own
library functions for the interpreter only when ``TRITON_INTERPRET=1`` is in the environment as it
is first imported, so this module imports Triton with it set (unless Triton is already loaded;
nothing in this package imports Triton before a scan runs), and sets it again during each of its
tests; the rest of the session does not see it (``torch.compile`` reads it too). These tests check
the kernels' arithmetic and indexing, not their speed or their compiled form; sizes are tiny, as
the interpreter runs every program one after the other in NumPy. The compiled kernels on a CUDA
device are ``tests/test_triton_cuda.py``'s.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attentionrnn import (
    AttentionRNN,
    BlockAttentionRNN,
    ReferenceAttentionRNN,
    ReferenceBlockAttentionRNN,
)
from attentionrnn.layers import triton_scan
from attentionrnn.layers.scan import DiagonalLSTMScan

if "triton" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        triton_scan.triton_available()  # imports Triton, in interpreter mode
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before

_WHY_NOT = triton_scan.triton_unavailable_reason()
if _WHY_NOT is None and not triton_scan.interpreting():
    _WHY_NOT = "Triton was imported before TRITON_INTERPRET=1 was set: compiled kernels only"
NEEDS_INTERPRETER = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))
NEEDS_TRITON = pytest.mark.skipif(
    not triton_scan.triton_available(), reason=str(triton_scan.triton_unavailable_reason())
)


@pytest.fixture(autouse=True)
def _interpreter_environment(monkeypatch):
    """Triton reads ``TRITON_INTERPRET`` while it runs too: keep it consistent with the mode it
    was imported in, for this module's tests only."""
    if triton_scan.triton_available() and triton_scan.interpreting():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _pair(layer_cls, ref_cls, dtype, seed, **kwargs):
    torch.manual_seed(seed)
    fast = layer_cls(3, implementation="triton", **{"hidden_channels": 4, **kwargs})
    fast = fast.to(dtype)
    with torch.no_grad():  # random, non-default weights: biases and feedback take part
        for p in fast.parameters():
            p.uniform_(-0.8, 0.8)
    ref = ref_cls.from_layer(fast).double()
    return fast, ref


def compare(fast, ref, batch, size, atol, device="cpu", dtype=torch.float64, query=False):
    """Mask and every gradient (input and parameters) of ``fast`` against ``ref`` (float64)."""
    x = torch.randn(batch, 3, *size, dtype=torch.float64)
    q = torch.randn(batch, 2, dtype=torch.float64) if query else None
    x_fast = x.to(device, dtype).requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_fast, m_fast = fast(x_fast, None if q is None else q.to(device, dtype), return_mask=True)
    y_ref, m_ref = ref(x_ref, q, return_mask=True)
    torch.testing.assert_close(m_fast.double().cpu(), m_ref, rtol=0, atol=atol)
    weights = torch.randn_like(y_ref)
    names = ["x", *(n for n, _ in fast.named_parameters())]
    g_fast = torch.autograd.grad(
        (y_fast * weights.to(device, dtype)).sum(), [x_fast, *fast.parameters()], allow_unused=True
    )
    g_ref = torch.autograd.grad(
        (y_ref * weights).sum(), [x_ref, *ref.parameters()], allow_unused=True
    )
    for name, a, b in zip(names, g_fast, g_ref, strict=True):
        if b is None:  # a 1x1 map never reads a predicted attention value
            assert name.startswith("scan.attention"), name
            assert a is None or not a.abs().sum(), name
            continue
        torch.testing.assert_close(a.double().cpu(), b, rtol=0, atol=10 * atol, msg=name)


SIZES = [(5, 4), (1, 5), (4, 1), (3, 3), (1, 1), (2, 5)]
CASES = list(itertools.product(["raster", "bi", "quad"], ["sigmoid", "softmax"], [True, False]))


@NEEDS_INTERPRETER
@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_kernels_match_reference(case):
    """Every direction set, gate and feedback setting, on odd sizes, H or W = 1 and a 1x1 map,
    batch 1 and 3: values and all gradients in float64."""
    directions, gate, feedback = CASES[case]
    fast, ref = _pair(
        AttentionRNN, ReferenceAttentionRNN, torch.float64, case,
        directions=directions, gate=gate, feedback=feedback, query_channels=2,
    )  # fmt: skip
    assert fast.scan.resolved_implementation(torch.empty(1, 4, 2, 2)) == "triton"
    for k in range(2):  # two sizes per case, so that the cases cover all sizes twice
        size = SIZES[(2 * case + k) % len(SIZES)]
        compare(fast, ref, 1 if k else 3, size, atol=1e-11, query=True)


@NEEDS_INTERPRETER
def test_diagonals_in_chunks_and_images_in_groups(monkeypatch):
    """Diagonals longer than a program's rows are done in chunks and the batch is split over
    programs; a hidden width that is not a power of two leaves masked columns."""
    monkeypatch.setattr(triton_scan, "MAX_ROWS", 4)
    monkeypatch.setattr(triton_scan, "IMAGES_PER_PROGRAM", 2)
    assert triton_scan._blocks(triton_scan.DiagonalSchedule.of(5, 4), 3) == (2, 4)
    fast, ref = _pair(
        AttentionRNN, ReferenceAttentionRNN, torch.float64, 11, hidden_channels=3,
        directions="quad",
    )  # fmt: skip
    compare(fast, ref, 3, (5, 4), atol=1e-11)


@NEEDS_INTERPRETER
def test_hidden_maps_and_block_layer():
    """The scan's hidden maps themselves (no head) against the autograd loop, and the block
    layer, whose coarse scan is the Triton one, against its reference."""
    torch.manual_seed(3)
    scans = {
        impl: DiagonalLSTMScan(3, 8, ("top_right", "bottom_left"), implementation=impl).double()
        for impl in ("triton", "autograd")
    }
    scans["autograd"].load_state_dict(scans["triton"].state_dict())
    e = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    results = {}
    for impl, scan in scans.items():
        out = scan(e)
        results[impl] = (out, *torch.autograd.grad((out * weights).sum(), [e, *scan.parameters()]))
    for a, b in zip(results["triton"], results["autograd"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    fast, ref = _pair(BlockAttentionRNN, ReferenceBlockAttentionRNN, torch.float64, 4, block_size=2)
    compare(fast, ref, 2, (5, 3), atol=1e-11)


@NEEDS_INTERPRETER
def test_float32_and_bf16_weights():
    """float32 layers to float32 rounding; a bf16 layer keeps its recurrent state in float32
    (the scan runs in float32 and returns bf16 only at the layer's output)."""
    fast, ref = _pair(AttentionRNN, ReferenceAttentionRNN, torch.float32, 5, directions="quad")
    compare(fast, ref, 2, (4, 3), atol=2e-5, dtype=torch.float32)
    fast, ref = _pair(AttentionRNN, ReferenceAttentionRNN, torch.bfloat16, 6)
    x = torch.randn(2, 3, 4, 5)
    y, mask = fast(x.bfloat16(), return_mask=True)
    assert y.dtype == mask.dtype == torch.bfloat16
    expected = ref(x.double(), return_mask=True)[1]
    torch.testing.assert_close(mask.double(), expected, rtol=0, atol=3e-2)


@NEEDS_INTERPRETER
def test_bf16_autocast_matches_the_pytorch_scan():
    """Under bf16 autocast the input-to-state product runs in bf16 as in the ``bptt`` path, the
    scan in float32: the two agree to float32 rounding, values and gradients."""
    torch.manual_seed(8)
    layers = {
        impl: AttentionRNN(3, hidden_channels=4, query_channels=2, implementation=impl)
        for impl in ("triton", "bptt")
    }
    layers["bptt"].load_state_dict(layers["triton"].state_dict())
    x, q = torch.randn(2, 3, 4, 3), torch.randn(2, 2)
    results = {}
    for impl, layer in layers.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = layer.scan(torch.relu(layer.encoder(x)))
            y = layer(x, q)
        assert hidden.dtype == torch.float32  # the cell state stayed float32
        results[impl] = (hidden, y, *torch.autograd.grad(y.sum(), list(layer.parameters())))
    for a, b in zip(results["triton"], results["bptt"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# A fresh process without TRITON_INTERPRET: Triton's own library must be in its compiled form.
COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from attentionrnn.layers import triton_kernels

common = dict(batch="i32", cells_total="i32", padded_size="i32", steps="i32")
for arch, dtype, hidden, feedback, rows in [(90, "fp32", 16, 1, 32), (80, "fp64", 3, 0, 16)]:
    p = "*" + dtype
    pointers = dict(index_ptr="*i64", sched_ptr="*i32", w_state_ptr=p, w_att_ptr=p)
    hp = 1 << (hidden - 1).bit_length()
    const = dict(HIDDEN=hidden, FEEDBACK=feedback, HP=hp, BLOCK_B=4, BLOCK_R=rows)
    forward = dict(x_ptr=p, **pointers, b_att_ptr=p, states_ptr=p, cells_ptr=p, acts_ptr=p,
                   out_ptr=p, **common)
    backward = dict(grad_ptr=p, **pointers, states_ptr=p, cells_ptr=p, acts_ptr=p,
                    d_states_ptr=p, d_cells_ptr=p, d_x_ptr=p, d_logit_ptr=p, **common)
    for fn, signature, extra in [
        (triton_kernels.scan_forward, forward, {}),
        (triton_kernels.scan_backward, backward, dict(GP=4 * hp)),
    ]:
        constants = {**const, **extra}
        signature = {**signature, **{k: "constexpr" for k in constants}}
        try:
            source = ASTSource(JITFunction(fn), signature, constants)
        except TypeError as error:
            sys.exit(f"SKIP this Triton's compile API differs: {error}")
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert kernel.asm["cubin"], fn.__name__
        print(fn.__name__, arch, dtype, "bar.sync" in kernel.asm["ptx"])
"""


@NEEDS_TRITON
def test_kernels_compile_for_a_gpu_without_one():
    """Triton compiles ahead of time without a device: both kernels down to a cubin for sm_90
    (float32, hidden 16, feedback) and sm_80 (float64, hidden 3, no feedback), with the barriers
    between diagonals in the PTX. (That they then run correctly needs a GPU.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode and "SKIP" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert lines.count("True") == 4, result.stdout


# ------------------------------------------------------------------------------ dispatch, errors


def test_triton_is_an_optional_extra():
    """Triton is the ``gpu`` extra, not a dependency, and the layer on the CPU never imports it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not any("triton" in d for d in project["dependencies"])
    assert [d.split(">")[0] for d in project["optional-dependencies"]["gpu"]] == ["triton"]
    code = (
        "import sys, torch; from attentionrnn import AttentionRNN\n"
        "AttentionRNN(4, hidden_channels=4)(torch.randn(1, 4, 3, 3)).sum().backward()\n"
        "print('triton' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(triton_scan, "_import_error", lambda: "ModuleNotFoundError: triton")
    with pytest.raises(RuntimeError, match=r"'triton'.*not installed.*attentionrnn\[gpu\]"):
        AttentionRNN(6, hidden_channels=4, implementation="triton")
    layer = AttentionRNN(6, hidden_channels=4)  # "auto" goes on without it
    assert layer.scan.resolved_implementation(torch.empty(1, 4, 3, 3, device="meta")) == "bptt"


@NEEDS_TRITON
def test_cpu_without_the_interpreter_is_refused():
    """Compiled kernels and a CPU tensor, or any other device: an error that says what to do."""
    code = (
        "import torch; from attentionrnn import AttentionRNN\n"
        "layer = AttentionRNN(6, hidden_channels=4, implementation='triton')\n"  # may go to a GPU
        "layer(torch.randn(1, 6, 3, 3))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    expected = "RuntimeError: implementation='triton' was asked for, but the input is on the CPU"
    assert expected in result.stderr, result.stderr[-2000:]
    assert "TRITON_INTERPRET=1" in result.stderr
    layer = AttentionRNN(6, hidden_channels=4, implementation="triton")
    with pytest.raises(RuntimeError, match="CUDA devices.*meta"):
        layer.to("meta")(torch.empty(1, 6, 3, 3, device="meta"))


@NEEDS_INTERPRETER
def test_auto_keeps_the_cpu_implementations():
    """``auto`` picks the Triton scan on CUDA devices only, the interpreter notwithstanding."""
    layer = AttentionRNN(6, hidden_channels=4)
    assert layer.scan.resolved_implementation(torch.randn(1, 4, 3, 3)) in ("fused", "bptt")
    assert not triton_scan.suits_auto(torch.device("cpu"))


@NEEDS_TRITON
def test_auto_takes_triton_on_recent_cuda_devices(monkeypatch):
    monkeypatch.setattr(triton_scan, "_capability", lambda index: (9, 0))
    assert triton_scan.suits_auto(torch.device("cuda:0"))
    monkeypatch.setattr(triton_scan, "_capability", lambda index: (7, 5))  # auto: bptt there
    assert not triton_scan.suits_auto(torch.device("cuda:0"))
