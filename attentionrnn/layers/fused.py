"""The diagonal-LSTM scan as one autograd node running the fused C++ kernels.

Unlike :class:`attentionrnn.layers.bptt.DiagonalLSTMFunction`, whose input is the input-to-state
product already gathered into the packed layout, this node takes the encoded map itself and the
kernel reads it in raster order through the packing index. So autograd keeps neither a gathered
copy of the map nor the projected gates (4h channels) for backward, and with a *readout* (a
per-direction linear map of the hidden state, e.g. the 1x1 head of AttentionRNN) the hidden states
are not written out either: the node returns one value per position and direction.

The layout (schedule, packing index) and the packing of the weights into the one matrix per
direction the kernels read come from :mod:`attentionrnn.layers.diagonal`. The kernels
(``attentionrnn/csrc``) take their parameters as a ``ScanArgs`` whose fields are set by name and
return their results as a dict, so no argument is matched by position.

Saved for backward: the encoded map in row layout, the packed weights, the gate activations, cell
states and passed-on states. The weight gradients are accumulated inside the backward kernel.

Under CPU bf16 autocast the three matrix products of the scan (the gate pre-activations, and in
the backward pass the transposed product and the weight-gradient accumulation) take bf16 operands
with float32 accumulation where the CPU has AVX-512 BF16 (:func:`pair_products_apply`); everything
else stays float32.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attentionrnn.layers import _extension
from attentionrnn.layers.diagonal import (
    DiagonalSchedule,
    kernel_weights,
    pair_weights,
    split_kernel_weights,
)

#: Environment variable: ``fp32`` keeps the scan's matrix products in float32 under bf16 autocast.
SCAN_PRODUCTS_ENV = "ATTENTIONRNN_SCAN_PRODUCTS"


class FusedDiagonalLSTM(torch.autograd.Function):
    """Inputs: ``e`` (B, Cin, H, W); ``index`` (D, H*W) the raster position of each packed cell of
    each direction (:func:`~attentionrnn.layers.diagonal.packing_index`); ``w_in`` (D, Cin, 4h)
    and ``b_in`` (D, 4h) the input-to-state product; ``w_state`` (D, 2, S, 4h) the state-to-state
    taps (:func:`~attentionrnn.layers.diagonal.state_taps`); ``w_att`` (D, h) and ``b_att`` (D) the
    attention estimate (``None`` without feedback); ``w_read`` (D, h) or ``None``. Weights are
    contiguous and in the dtype the scan runs in; ``e`` is cast to it.

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
        e_rows = _raster_rows(e, w_in.dtype)
        w_cat, w_cat_t = kernel_weights(w_in, w_state, kernels.vector_bytes)
        w_pairs = w_pairs_t = None
        if pair_products_apply(kernels, w_in):
            w_pairs, w_pairs_t = pair_weights(w_cat_t)
        with torch.autocast(e.device.type, enabled=False):
            result = kernels.forward(
                scan_args(
                    kernels,
                    schedule,
                    e_rows=e_rows,
                    index=index,
                    w_cat=w_cat,
                    w_cat_t=w_cat_t,
                    b_in=b_in,
                    w_att=w_att,
                    b_att=b_att,
                    w_read=w_read,
                    pad_rows=schedule.pad_rows(e.device),
                    w_pairs=w_pairs,
                    w_pairs_t=w_pairs_t,
                )
            )
        ctx.schedule, ctx.kernels = schedule, kernels
        ctx.in_channels, ctx.e_dtype = w_in.shape[1], e.dtype
        # The row layout is kept rather than recomputed from e: a copy of e's size, and the
        # backward pass is the slower half.
        ctx.save_for_backward(
            e_rows, index, w_cat, w_cat_t, w_att, w_read,
            result["states"], result["cells"], result["acts"], w_pairs_t,
        )  # fmt: skip
        return result["out"]

    @staticmethod
    @once_differentiable  # the backward pass is not itself differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        e_rows, index, w_cat, w_cat_t, w_att, w_read, states, cells, acts, w_pairs_t = (
            ctx.saved_tensors
        )
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = ctx.kernels.backward(
                scan_args(
                    ctx.kernels,
                    ctx.schedule,
                    grad_out=grad_out.to(w_cat.dtype),
                    e_rows=e_rows,
                    index=index,
                    w_cat=w_cat,
                    w_cat_t=w_cat_t,
                    w_att=w_att,
                    w_read=w_read,
                    states=states,
                    cells=cells,
                    acts=acts,
                    w_pairs_t=w_pairs_t,
                )
            )
        d_w_in, d_w_state = split_kernel_weights(grads["d_w_cat"], ctx.in_channels)
        return (
            grads["d_e"].to(ctx.e_dtype),
            None,
            d_w_in,
            grads["d_b_in"],
            d_w_state,
            grads.get("d_w_att"),
            grads.get("d_b_att"),
            grads.get("d_w_read"),
            None,
            None,
        )


def pair_products_apply(kernels: ModuleType, w_in: Tensor) -> bool:
    """Whether the scan's matrix products take bf16 operands (float32 accumulation): under CPU
    bf16 autocast, where the kernels have the pair products (AVX-512 BF16), for float32 scans whose
    input and hidden widths (``w_in`` is (D, Cin, 4h)) are multiples of 16, unless
    ``$ATTENTIONRNN_SCAN_PRODUCTS`` is ``fp32``.

    That is what autocast does with the matrix products of a convolution or ``nn.LSTM``; the cell
    state, the non-linearities and the accumulated weight gradients stay float32.
    """
    return (
        _pair_products_on(kernels)
        and w_in.dtype == torch.float32
        and w_in.shape[1] % 16 == 0
        and w_in.shape[2] % 64 == 0
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def _pair_products_on(kernels: ModuleType | None) -> bool:
    """The kernels have the pair products and ``$ATTENTIONRNN_SCAN_PRODUCTS`` is not ``fp32``."""
    return getattr(kernels, "pair_products", False) and (
        os.environ.get(SCAN_PRODUCTS_ENV, "").strip().lower() != "fp32"
    )


def scan_products(precision: str) -> str:
    """``"bf16"`` where a run in ``precision`` gets the bf16 pair products for its fused scans
    (of 16-wide inputs and hidden states: :func:`pair_products_apply`), else ``"fp32"``; recorded
    in ``metrics.json`` beside the precision."""
    return "bf16" if precision == "bf16" and _pair_products_on(_extension.load()) else "fp32"


def scan_args(kernels: ModuleType, schedule: DiagonalSchedule, **tensors: Any) -> Any:
    """The kernels' ``ScanArgs`` with the schedule's fields and ``tensors``, each set by name (an
    unknown name raises ``AttributeError``; ``None`` leaves an optional tensor absent)."""
    args = kernels.ScanArgs()
    for name, value in (*schedule.kernel_layout.items(), *tensors.items()):
        setattr(args, name, value)
    return args


def _raster_rows(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, C, H, W)`` to contiguous ``(H*W, B, C)``: a row of channels per position and image."""
    batch, channels, height, width = e.shape
    return e.permute(2, 3, 0, 1).to(dtype).contiguous().view(height * width, batch, channels)
