"""The diagonal-LSTM scan as one autograd node running Triton kernels (``implementation="triton"``).

The kernels (:mod:`attentionrnn.layers.triton_kernels`) run the sequential part of the scan,
the forward and the backward pass through time, with one program per (direction, group of images)
walking the diagonals; everything that is one large parallel operation stays in PyTorch: the
input-to-state product before the scan (the 1x1 convolution, under autocast in bf16/fp16 like the
``bptt`` path; the scan itself runs in float32), and in the backward pass the weight gradients of
the state-to-state taps and of the attention estimate (a batched matrix product each, over all
cells). The head and the gate are the layer's, as for every implementation.

Triton is an optional dependency (``pip install 'attentionrnn[gpu]'``); this module imports it
only when a scan runs. Compiled kernels need a CUDA device. Under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment) the same kernels run on CPU tensors, which is how the
tests check them against the per-pixel reference on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attentionrnn.layers.diagonal import (
    DiagonalSchedule,
    input_weights,
    packing_index,
    state_dtype_for,
    state_slices,
)

#: Images each program scans (a power of two); more programs run side by side with fewer.
IMAGES_PER_PROGRAM = 4
#: Upper bound of the rows (cells x images) a program processes at once per diagonal.
MAX_ROWS = 128
#: Bytes of one row tile spanning the whole gate axis (``BLOCK_R x 4h``, padded to a power of two):
#: the rows per chunk are capped by it. Compiled for sm_90 (ptxas -v), 8 KiB keeps both kernels
#: free of spills at the default 4 warps for hidden widths 3 to 128, float32 and float64, most
#: within 128 registers a thread; 32 KiB (128 rows at hidden 16) made the backward kernel spill.
TILE_BYTES = 8192


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        return f"{type(error).__name__}: {error}"
    return None


def triton_available() -> bool:
    """Whether Triton imports here."""
    return _import_error() is None


def interpreting() -> bool:
    """Whether Triton runs its interpreter in this process: it was imported with
    ``TRITON_INTERPRET=1`` in the environment (Triton's own library functions are built for one
    mode or the other at import, so the variable must be set before Triton is imported)."""
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sum, InterpretedFunction)


#: The oldest CUDA compute capability ``implementation="auto"`` runs the Triton scan on (Triton
#: supports compute capability 8.0 and newer; ``"triton"`` may still be asked for on older GPUs).
AUTO_MIN_CAPABILITY = (8, 0)


def suits_auto(device: torch.device) -> bool:
    """Whether ``implementation="auto"`` runs the Triton scan for an input on ``device``: a CUDA
    device (or a ROCm one, which PyTorch also calls ``cuda``) recent enough, and Triton imports."""
    device = torch.device(device)
    if device.type != "cuda" or not triton_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index) >= AUTO_MIN_CAPABILITY


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why ``implementation="triton"`` cannot run (on ``device``), or ``None`` where it can."""
    why = _import_error()
    if why is not None:
        return (
            "Triton is not installed or does not import "
            f"({why}; install it with pip install 'attentionrnn[gpu]')"
        )
    if device is None:
        return None
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and interpreting()):
        return None
    if kind == "cpu":
        return (
            "the input is on the CPU: the Triton kernels run on CUDA devices, or on CPU tensors "
            "under Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment "
            "before Triton is imported (e.g. TRITON_INTERPRET=1 python ...)"
        )
    return f"the Triton kernels run on CUDA devices, and the input is on {device}"


def check_triton(device: torch.device | str | None = None) -> None:
    """Raise ``RuntimeError`` naming why the Triton scan cannot run (on ``device``)."""
    why = triton_unavailable_reason(device)
    if why is not None:
        raise RuntimeError(
            f"implementation='triton' was asked for, but {why} "
            "(implementation='auto' uses the Triton scan on CUDA devices where Triton imports, "
            "else the other implementations)"
        )


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The forward and backward kernels, compiled (``interpret=False``) or interpreted (the
    mode Triton was imported in, :func:`interpreting`)."""
    from attentionrnn.layers import triton_kernels

    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:
        from triton.runtime.jit import JITFunction as wrap
    return wrap(triton_kernels.scan_forward), wrap(triton_kernels.scan_backward)


@functools.lru_cache(maxsize=128)
def _schedule_table(schedule: DiagonalSchedule, device: torch.device) -> Tensor:
    """``(4, T)`` int32: length, packed_start, padded_start and neighbour_start per diagonal."""
    layout = schedule.kernel_layout
    rows = [layout[k] for k in ("length", "packed_start", "padded_start", "neighbour_start")]
    return torch.tensor(rows, dtype=torch.int32, device=device).contiguous()


@functools.lru_cache(maxsize=128)
def _packed_neighbour_rows(schedule: DiagonalSchedule) -> Tensor:
    """``(H*W,)``: the padded row of the cell above each packed cell (row 0, a zero pad row, for
    the first cell, which has no neighbours); the cell to the left is one row further."""
    above = torch.zeros(schedule.height * schedule.width, dtype=torch.long)
    for t in range(1, schedule.steps):
        p0, n = schedule.packed_start[t], schedule.length[t]
        above[p0 : p0 + n] = torch.arange(n) + schedule.neighbour_start(t)
    return above


def _neighbour_rows(schedule: DiagonalSchedule, index: Tensor) -> tuple[Tensor, Tensor]:
    """``(D, H*W)`` each: the padded row of the cell above and of the cell to the left of every
    raster position, per direction."""
    above = _packed_neighbour_rows(schedule).to(index.device)
    left = above + 1
    left[0] = 0
    return (
        torch.empty_like(index).scatter_(1, index, above.expand_as(index)),
        torch.empty_like(index).scatter_(1, index, left.expand_as(index)),
    )


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on ``device``: Triton launches on the current CUDA device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _blocks(
    schedule: DiagonalSchedule, batch: int, hidden: int = 1, element_size: int = 4
) -> tuple[int, int]:
    """``BLOCK_B`` (images per program) and ``BLOCK_R`` (rows per chunk of a diagonal): the
    rows a whole diagonal needs, at most ``MAX_ROWS`` and ``TILE_BYTES`` worth of gate rows."""
    block_b = min(_next_pow2(batch), IMAGES_PER_PROGRAM)
    rows = min(_next_pow2(max(schedule.length) * block_b), MAX_ROWS)
    rows = min(rows, max(1, TILE_BYTES // (element_size * _next_pow2(4 * hidden))))
    return block_b, max(rows, block_b)


class TritonDiagonalLSTM(torch.autograd.Function):
    """Inputs: ``x`` (D, H*W, B, 4h) the input-to-state terms in raster order (the scan's dtype);
    ``w_state`` (D, 2, S, 4h) the taps; ``w_att`` (D, h) and ``b_att`` (D) or ``None`` without
    feedback; ``index`` (D, H*W) the packing index; the schedule. Output: the hidden states
    (D, H*W, B, h) in raster order."""

    @staticmethod
    def forward(ctx, x, w_state, w_att, b_att, index, schedule):  # type: ignore[override]
        num_dirs, cells_total, batch, gates = x.shape
        hidden = gates // 4
        feedback = w_att is not None
        width = state_slices(hidden, feedback).attention.stop
        padded = schedule.padded_size
        states = x.new_zeros(num_dirs, padded, batch, width)
        cells = x.new_zeros(num_dirs, padded, batch, hidden)
        acts = torch.empty_like(x)
        out = x.new_empty(num_dirs, cells_total, batch, hidden)
        table = _schedule_table(schedule, x.device)
        block_b, block_r = _blocks(schedule, batch, hidden, x.element_size())
        forward_kernel, _ = _kernels(interpreting())
        dummy = x.new_zeros(1)
        with _on(x.device):
            forward_kernel[(num_dirs, -(-batch // block_b))](
                x, index, table, w_state,
                w_att if feedback else dummy, b_att if feedback else dummy,
                states, cells, acts, out,
                batch, cells_total, padded, schedule.steps,
                HIDDEN=hidden, FEEDBACK=int(feedback), HP=_next_pow2(hidden),
                BLOCK_B=block_b, BLOCK_R=block_r,
            )  # fmt: skip
        ctx.schedule, ctx.feedback = schedule, feedback
        ctx.save_for_backward(index, w_state, w_att, states, cells, acts)
        return out

    @staticmethod
    @once_differentiable  # the backward pass is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        index, w_state, w_att, states, cells, acts = ctx.saved_tensors
        schedule, feedback = ctx.schedule, ctx.feedback
        num_dirs, cells_total, batch, gates = acts.shape
        hidden = gates // 4
        grad_out = grad_out.to(acts.dtype).contiguous()
        d_states = torch.zeros_like(states)
        d_cells = torch.zeros_like(cells)
        d_x = torch.empty_like(acts)
        d_logit = states.new_zeros(num_dirs, schedule.padded_size, batch)
        block_b, block_r = _blocks(schedule, batch, hidden, acts.element_size())
        _, backward_kernel = _kernels(interpreting())
        with _on(acts.device):
            backward_kernel[(num_dirs, -(-batch // block_b))](
                grad_out, index, _schedule_table(schedule, acts.device), w_state,
                w_att if feedback else d_logit,
                states, cells, acts, d_states, d_cells, d_x, d_logit,
                batch, cells_total, schedule.padded_size, schedule.steps,
                HIDDEN=hidden, FEEDBACK=int(feedback), HP=_next_pow2(hidden),
                GP=_next_pow2(gates), BLOCK_B=block_b, BLOCK_R=block_r,
            )  # fmt: skip
        with torch.autocast(acts.device.type, enabled=False):
            # Weight gradients: sums over all cells of (neighbour state) x d_x, one product each.
            flat_states = states.view(-1, batch, states.shape[-1])
            offsets = torch.arange(num_dirs, device=index.device).unsqueeze(1) * states.shape[1]
            d_x_rows = d_x.view(num_dirs, -1, gates)
            d_w_state = torch.stack(
                [
                    flat_states.index_select(0, (rows + offsets).flatten())
                    .view(num_dirs, -1, states.shape[-1])
                    .transpose(1, 2)
                    .bmm(d_x_rows)
                    for rows in _neighbour_rows(schedule, index)
                ],
                dim=1,
            )
            d_w_att = d_b_att = None
            if feedback:
                h = states[..., state_slices(hidden).hidden]
                d_w_att = torch.einsum("dpb,dpbh->dh", d_logit, h)
                d_b_att = d_logit.sum(dim=(1, 2))
        return d_x, d_w_state, d_w_att, d_b_att, None, None


def rows_triton(scan: Any, e: Tensor) -> Tensor:
    """The hidden states of ``scan`` (a :class:`~attentionrnn.layers.scan.DiagonalLSTMScan`) for
    the encoded map ``e``, ``(D, H*W, B, hidden)`` in raster order, by the Triton kernels."""
    check_triton(e.device)
    batch, channels, height, width = e.shape
    num_dirs = len(scan.directions)
    schedule = DiagonalSchedule.of(height, width)
    index = packing_index(schedule, scan.directions, e.device)
    dtype = state_dtype_for(e.dtype)
    # Input-to-state product for every direction at once, in raster order (under autocast in
    # the autocast dtype, like the convolution it is; the scan runs in ``dtype``).
    rows = e.permute(2, 3, 0, 1).reshape(1, height * width * batch, channels)
    weight, bias = input_weights(scan.input_to_state.weight, scan.input_to_state.bias, num_dirs)
    x = torch.baddbmm(bias.unsqueeze(1), rows.expand(num_dirs, -1, -1), weight).to(dtype)
    x = x.view(num_dirs, height * width, batch, -1).contiguous()
    w_state, w_att, b_att = scan.state_weights(dtype)
    if w_att is not None:
        w_att, b_att = w_att.contiguous(), b_att.contiguous()
    return TritonDiagonalLSTM.apply(x, w_state, w_att, b_att, index, schedule)
