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

Saved for backward: the encoded map in row layout, the packed weights, the cell states and
passed-on states, and the gate activations as :func:`keep_acts` says: by default none, the backward
kernel recomputes them from the encoded map and the passed-on states with the forward pass's own
products (the same values; ``$ATTENTIONRNN_SCAN_ACTS`` ``keep`` stores them instead, ``bf16`` stores
them rounded to bf16 under bf16 autocast). The weight gradients are accumulated inside the backward
kernel.

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
#: Environment variable: how the forward pass keeps the gate activations for backward
#: (:func:`keep_acts`): ``recompute`` (default), ``keep`` or ``bf16``.
SCAN_ACTS_ENV = "ATTENTIONRNN_SCAN_ACTS"
SCAN_ACTS = ("recompute", "keep", "bf16")
#: The default of ``$ATTENTIONRNN_SCAN_ACTS``.
DEFAULT_SCAN_ACTS = "recompute"


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
        keep = keep_acts(w_in)
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
                    keep_acts=keep,
                )
            )
        ctx.schedule, ctx.kernels = schedule, kernels
        ctx.in_channels, ctx.e_dtype, ctx.e_shape = w_in.shape[1], e.dtype, e.shape
        # e given as a view of rows (AttentionRNN's encoder on this path) gets its gradient in
        # that layout too, so the ReLU's backward before the scan reads both contiguously.
        ctx.e_is_rows = e_rows.data_ptr() == e.data_ptr() and e.dim() == 4 and e.numel() > 0
        # The row layout is kept rather than recomputed from e: the backward pass is the slower
        # half (and where e is itself a view of rows, as AttentionRNN's encoder makes it on this
        # path, e_rows is e's own storage). Without the gate activations (keep "none") the
        # backward pass recomputes them, with the forward's bias and bf16 weights.
        recompute = keep == "none"
        ctx.save_for_backward(
            e_rows, index, w_cat, w_cat_t, w_att, w_read,
            result["states"], result["cells"], result.get("acts"), w_pairs_t,
            b_in if recompute else None, w_pairs if recompute else None,
        )  # fmt: skip
        return result["out"]

    @staticmethod
    @once_differentiable  # the backward pass is not itself differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (
            e_rows, index, w_cat, w_cat_t, w_att, w_read, states, cells, acts, w_pairs_t,
            b_in, w_pairs,
        ) = ctx.saved_tensors  # fmt: skip
        recompute = {} if acts is not None else {"b_in": b_in, "w_pairs": w_pairs}
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
                    d_e_rows=ctx.e_is_rows,
                    **recompute,
                )
            )
        d_w_in, d_w_state = split_kernel_weights(grads["d_w_cat"], ctx.in_channels)
        d_e = grads["d_e"]
        if ctx.e_is_rows:
            batch, channels, height, width = ctx.e_shape
            d_e = d_e.view(height, width, batch, channels).permute(2, 3, 0, 1)
        return (
            d_e.to(ctx.e_dtype),
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


def keep_acts(w_in: Tensor) -> str:
    """How the fused forward pass keeps the gate activations for backward (``ScanArgs.keep_acts``),
    from ``$ATTENTIONRNN_SCAN_ACTS``: ``recompute`` (the default) keeps none (``"none"``; the
    backward kernel recomputes them with the forward's products, the same values), ``keep`` keeps
    them in the scan's dtype (``"float"``), ``bf16`` rounds them to bf16 (``"bf16"``) under CPU bf16
    autocast for float32 scans and keeps them in the scan's dtype otherwise."""
    name = os.environ.get(SCAN_ACTS_ENV, "").strip().lower() or DEFAULT_SCAN_ACTS
    if name not in SCAN_ACTS:
        raise ValueError(f"${SCAN_ACTS_ENV} must be one of {SCAN_ACTS}, got {name!r}")
    if name == "recompute":
        return "none"
    autocast_bf16 = (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return "bf16" if name == "bf16" and autocast_bf16 and w_in.dtype == torch.float32 else "float"


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
    unknown name raises ``AttributeError``; ``None`` leaves a tensor absent)."""
    args = kernels.ScanArgs()
    for name, value in (*schedule.kernel_layout.items(), *tensors.items()):
        if value is not None or name in _OPTIONAL_FIELDS:
            setattr(args, name, value)
    return args


# The ScanArgs fields that take None (std::optional); the others are left unset instead.
_OPTIONAL_FIELDS = ("w_att", "b_att", "w_read", "w_pairs", "w_pairs_t")


def raster_rows_view(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``e`` (B, C, H, W) in ``dtype``, as a view of contiguous ``(H, W, B, C)`` rows: the layout
    the fused scan reads, so that it reads (and keeps for backward) ``e``'s own storage."""
    batch, channels, height, width = e.shape
    rows = torch.empty((height, width, batch, channels), dtype=dtype, device=e.device)
    # (one pass; .to(dtype, memory_format=torch.contiguous_format) would return e itself)
    return rows.copy_(e.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)


def _raster_rows(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, C, H, W)`` to contiguous ``(H*W, B, C)``: a row of channels per position and image
    (``e``'s own storage where ``e`` is a :func:`raster_rows_view`)."""
    batch, channels, height, width = e.shape
    return e.permute(2, 3, 0, 1).to(dtype).contiguous().view(height * width, batch, channels)
