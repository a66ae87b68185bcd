"""The diagonal-LSTM scan as one autograd node running the fused C++ kernels.

Unlike :class:`attentionrnn.layers.bptt.DiagonalLSTMFunction`, whose input is the input-to-state
product already gathered into the packed layout, this node takes the encoded map itself and the
kernel reads it in raster order through the packing index. So autograd keeps neither a gathered
copy of the map nor the projected gates (4h channels) for backward, and with a *readout* (a
per-direction linear map of the hidden state, e.g. the 1x1 head of AttentionRNN) the hidden states
are not written out either: the node returns one value per position and direction.

Saved for backward: the encoded map in row layout, the gate activations, cell states and
passed-on states. The weight gradients are accumulated inside the backward kernel.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attentionrnn.layers.bptt import DiagonalSchedule


class FusedDiagonalLSTM(torch.autograd.Function):
    """Inputs: ``e`` (B, Cin, H, W); ``index`` (D, H*W) the raster position of each packed cell of
    each direction; ``w_in`` (D, Cin, 4h) and ``b_in`` (D, 4h) the input-to-state product;
    ``w_state`` (D, 2, S, 4h) the state-to-state taps (above, left); ``w_att`` (D, h) and
    ``b_att`` (D) the attention estimate (``None`` without feedback); ``w_read`` (D, h) or
    ``None``. Weights are in the dtype the scan runs in; ``e`` is cast to it.

    Output, in raster order: ``(D, H*W, B)`` readouts when ``w_read`` is given, else the hidden
    states ``(D, H*W, B, h)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        e: Tensor,
        index: Tensor,
        w_in: Tensor,
        b_in: Tensor,
        w_state: Tensor,
        w_att: Tensor | None,
        b_att: Tensor | None,
        w_read: Tensor | None,
        schedule: DiagonalSchedule,
        kernels: ModuleType,
    ) -> Tensor:
        empty = w_in.new_empty(0)
        e_rows = _raster_rows(e, w_in.dtype)
        with torch.autocast(e.device.type, enabled=False):
            out, states, cells, acts = kernels.forward(
                e_rows,
                index,
                w_in,
                b_in,
                w_state,
                empty if w_att is None else w_att,
                empty if b_att is None else b_att,
                empty if w_read is None else w_read,
                *schedule.kernel_args,
                schedule.padded_size,
            )
        ctx.schedule, ctx.kernels = schedule, kernels
        ctx.has_att, ctx.has_read = w_att is not None, w_read is not None
        ctx.e_dtype = e.dtype
        # The row layout is kept rather than recomputed from e: a copy of e's size, and the
        # backward pass is the slower half.
        ctx.save_for_backward(
            e_rows, index, w_in, b_in, w_state, _or(w_att, empty), _or(b_att, empty),
            _or(w_read, empty), states, cells, acts,
        )  # fmt: skip
        return out

    @staticmethod
    @once_differentiable  # the backward pass is not itself differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        e_rows, index, w_in, b_in, w_state, w_att, b_att, w_read, states, cells, acts = (
            ctx.saved_tensors
        )
        with torch.autocast(grad_out.device.type, enabled=False):
            d_e, d_w_in, d_b_in, d_w_state, d_w_att, d_b_att, d_w_read = ctx.kernels.backward(
                grad_out.to(w_in.dtype),
                e_rows,
                index,
                w_in,
                b_in,
                w_state,
                w_att,
                b_att,
                w_read,
                states,
                cells,
                acts,
                *ctx.schedule.kernel_args,
                ctx.schedule.height,
                ctx.schedule.width,
            )
        d_e = d_e.to(ctx.e_dtype)
        return (
            d_e,
            None,
            d_w_in,
            d_b_in,
            d_w_state,
            d_w_att if ctx.has_att else None,
            d_b_att if ctx.has_att else None,
            d_w_read if ctx.has_read else None,
            None,
            None,
        )


def _raster_rows(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, C, H, W)`` to contiguous ``(H*W, B, C)``: a row of channels per position and image."""
    batch, channels, height, width = e.shape
    return e.permute(2, 3, 0, 1).to(dtype).contiguous().view(height * width, batch, channels)


def _or(t: Tensor | None, default: Tensor) -> Tensor:
    return default if t is None else t
