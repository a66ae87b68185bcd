"""The diagonal-LSTM scan at the heart of AttentionRNN.

Each anti-diagonal of the map is updated in one step, so the scan takes ``H + W - 1`` steps
instead of ``H * W``; every direction (a corner the scan starts from) is reduced to the top-left
scan by flipping the map, and all directions are advanced together in the same step loop, each
with its own weights (a batched matrix product). The layouts this needs (skewed, packed by
diagonal) and the packing of the cell's weights are defined in :mod:`attentionrnn.layers.diagonal`;
this module holds the layer and chooses among the implementations that use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentionrnn.layers import _extension, triton_scan
from attentionrnn.layers.bptt import DiagonalLSTMFunction
from attentionrnn.layers.diagonal import (
    CORNER_FLIPS,
    GATE_ORDER,
    DiagonalSchedule,
    flip_to_top_left,
    gate_slices,
    input_weights,
    packing_index,
    skew,
    state_channels,
    state_dtype_for,
    state_taps,
    state_to_state_shape,
    unskew,
    valid_cells,
)
from attentionrnn.layers.fused import FusedDiagonalLSTM

__all__ = [
    "CORNER_FLIPS",
    "DIRECTION_SETS",
    "IMPLEMENTATIONS",
    "DiagonalLSTMScan",
    "graph_capture_active",
    "resolve_directions",
    "skew",
    "state_dtype_for",
    "unskew",
    "valid_cells",
]

# The ``directions`` argument of the public layers.
DIRECTION_SETS: dict[str, tuple[str, ...]] = {
    "raster": ("top_left",),
    "bi": ("top_left", "bottom_right"),
    "quad": ("top_left", "bottom_right", "top_right", "bottom_left"),
}


def _empty_batch(e: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of ``shape`` for a batch of 0, still on the autograd graph of ``e`` so that
    backward runs."""
    return e.new_zeros(shape) + 0 * e.sum()


def resolve_directions(directions: str) -> tuple[str, ...]:
    """Map a ``directions`` name ("raster", "bi", "quad") to its tuple of corners."""
    if not isinstance(directions, str) or directions not in DIRECTION_SETS:
        raise ValueError(
            f"unknown directions {directions!r}: expected one of {sorted(DIRECTION_SETS)}"
        )
    return DIRECTION_SETS[directions]


IMPLEMENTATIONS = ("auto", "fused", "bptt", "autograd", "triton")


def graph_capture_active() -> bool:
    """True while tracing, scripting, exporting or compiling: a Python autograd.Function with
    in-place buffers does not survive those, a loop of standard ops does."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def fused_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why ``implementation="fused"`` cannot run (on ``device``), or ``None`` where it can."""
    if device is not None and torch.device(device).type != "cpu":
        return f"the fused C++ scan kernels run on the CPU only, and the input is on {device}"
    if _extension.load() is None:
        return f"the fused C++ scan kernels are unavailable here: {_extension.unavailable_reason()}"
    return None


def _check_fused(device: torch.device | None = None) -> None:
    why = fused_unavailable_reason(device)
    if why is not None:
        raise RuntimeError(
            f"implementation='fused' was asked for, but {why} "
            "(implementation='auto' falls back to the PyTorch implementation 'bptt')"
        )


class DiagonalLSTMScan(nn.Module):
    r"""Diagonal LSTM over one or more scan directions, with attention feedback.

    For each direction the map is flipped so the scan starts at the top-left, skewed, and scanned
    column by column. Cell ``(i, j)`` computes LSTM gates from

    * the input-to-state term :math:`K_{is} e_{i,j}` (a 1x1 convolution),
    * the state-to-state term: a 2x1 kernel over the previous skewed column, i.e. over the hidden
      state and the predicted attention value of the cell above ``(i-1, j)`` (tap ``TAP_ABOVE``)
      and of the cell to the left ``(i, j-1)`` (tap ``TAP_LEFT``), zero-padded on top,

    then :math:`c = f \odot c_{left} + i \odot g`, :math:`h = o \odot \tanh(c)` and the direction's
    attention estimate :math:`\hat a = \sigma(w \cdot h + b)`, which feeds the next diagonal.

    Args:
        in_channels: channels of the encoded map ``e``.
        hidden_channels: LSTM state channels per direction.
        directions: corners to scan from (keys of :data:`CORNER_FLIPS`).
        feedback: feed each direction's predicted attention values into the next diagonal.
        implementation: how the diagonal LSTM runs; all give the same results.
            ``"fused"``: one autograd node whose forward and backward through time are C++ CPU
            kernels, with the input-to-state product (and a readout such as the 1x1 head) inside
            (:mod:`attentionrnn.layers.fused`, built on first use by
            :mod:`attentionrnn.layers._extension`); ``"bptt"``: one node with a hand-written
            backward in PyTorch ops (:mod:`attentionrnn.layers.bptt`); ``"autograd"``: a loop of
            differentiable ops over the skewed map, the form that tracing, ONNX export and
            ``torch.compile`` capture; ``"triton"``: Triton kernels of the forward and backward
            through time, for CUDA devices (:mod:`attentionrnn.layers.triton_scan`, the optional
            ``gpu`` extra; on CPU tensors only under Triton's interpreter).
            ``"auto"`` (default) picks ``"autograd"`` while capturing a graph, ``"triton"`` on
            CUDA devices of compute capability 8.0+ where Triton imports, ``"fused"`` on CPU
            where the kernels build, else ``"bptt"``. Asking for ``"fused"`` where the kernels
            cannot run (they do not build here, or the input is not on the CPU) raises
            ``RuntimeError`` rather than falling back; so does ``"triton"`` where it cannot run.

    The parameters are laid out as :mod:`attentionrnn.layers.diagonal` states: gates in
    ``GATE_ORDER``, ``state_to_state`` of shape ``(D, 4h, S, 2)``, the input-to-state convolution
    direction-major.

    Shape:
        - Input: ``(B, in_channels, H, W)``
        - Output: ``(B, len(directions) * hidden_channels, H, W)``, the hidden maps of all
          directions in the order of ``directions``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        directions: Sequence[str] = ("top_left", "bottom_right"),
        feedback: bool = True,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        self.implementation = implementation
        unknown = [d for d in directions if d not in CORNER_FLIPS]
        if unknown or not directions:
            raise ValueError(f"unknown scan corners {unknown}: expected {sorted(CORNER_FLIPS)}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.directions = tuple(directions)
        self.feedback = feedback
        num_dirs = len(self.directions)
        gates = 4 * hidden_channels
        # Direction-major, gates in GATE_ORDER within each direction.
        self.input_to_state = nn.Conv2d(in_channels, num_dirs * gates, kernel_size=1)
        # (direction, out, in, tap): TAP_ABOVE reads the cell above, TAP_LEFT the cell to the left.
        self.state_to_state = nn.Parameter(
            torch.empty(state_to_state_shape(num_dirs, hidden_channels, feedback))
        )
        if feedback:
            self.attention_weight = nn.Parameter(torch.empty(num_dirs, hidden_channels))
            self.attention_bias = nn.Parameter(torch.empty(num_dirs))
        else:
            self.register_parameter("attention_weight", None)
            self.register_parameter("attention_bias", None)
        self.reset_parameters()

    @property
    def implementation(self) -> str:
        """How the scan runs (see the class docstring); assignable, and checked like the
        constructor argument."""
        return self._implementation

    @implementation.setter
    def implementation(self, implementation: str) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {implementation!r}: expected one of {IMPLEMENTATIONS}"
            )
        if implementation == "fused":
            _check_fused()
        if implementation == "triton":
            triton_scan.check_triton()
        self._implementation = implementation

    @property
    def state_channels(self) -> int:
        """Channels a cell passes to the next diagonal: hidden state (+ attention value)."""
        return state_channels(self.hidden_channels, self.feedback)

    def reset_parameters(self) -> None:
        self.input_to_state.reset_parameters()
        hidden = self.hidden_channels
        with torch.no_grad():
            # A forget-gate bias of 1 lets state travel along long rows early in training.
            bias = self.input_to_state.bias.view(len(self.directions), len(GATE_ORDER), hidden)
            bias[:, GATE_ORDER.index("forget")].fill_(1.0)
            bound = 1.0 / math.sqrt(2 * self.state_channels)
            self.state_to_state.uniform_(-bound, bound)
            if self.attention_weight is not None:
                bound = 1.0 / math.sqrt(hidden)
                self.attention_weight.uniform_(-bound, bound)
                self.attention_bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"directions={self.directions}, feedback={self.feedback}"
            + (f", implementation={self.implementation!r}" if self.implementation != "auto" else "")
        )

    def flip(self, x: Tensor, direction: int) -> Tensor:
        """Flip an ``(..., H, W)`` map so that direction ``direction`` starts at the top-left."""
        return flip_to_top_left(x, self.directions[direction])

    def forward(self, e: Tensor) -> Tensor:
        """Hidden maps of all directions, ``(B, D * hidden, H, W)``."""
        batch, _, height, width = e.shape
        rows = self.hidden_rows(e)  # (D, H*W, B, h)
        return rows.permute(2, 0, 3, 1).reshape(batch, -1, height, width)

    def hidden_rows(self, e: Tensor) -> Tensor:
        """Hidden states of all directions as ``(D, H*W, B, hidden)``, positions row-major.

        The layout the scan produces without a transpose.
        """
        if e.shape[0] == 0:  # an empty batch: nothing to scan, in every implementation
            positions = e.shape[2] * e.shape[3]
            return _empty_batch(e, (len(self.directions), positions, 0, self.hidden_channels))
        implementation = self.resolved_implementation(e)
        if implementation == "fused":
            return self._run_fused(e, None)
        if implementation == "bptt":
            return self._rows_bptt(e)
        if implementation == "triton":
            return triton_scan.rows_triton(self, e)
        batch, _, height, width = e.shape
        maps = self._forward_autograd(e).unflatten(1, (len(self.directions), -1))
        return maps.permute(1, 3, 4, 0, 2).reshape(len(self.directions), height * width, batch, -1)

    def hidden_readout(self, e: Tensor, weight: Tensor) -> Tensor:
        """``sum_d weight[d] . h_d`` at every position, ``(H*W, B)`` row-major; ``weight`` is
        ``(D, hidden)``.

        A 1x1 convolution of the concatenated hidden maps to one channel (without its bias). The
        fused kernels compute it per cell, so the hidden maps are never stored.
        """
        if e.shape[0] == 0:
            return _empty_batch(e, (e.shape[2] * e.shape[3], 0)).to(weight.dtype) + 0 * weight.sum()
        if self.resolved_implementation(e) == "fused":
            return self._run_fused(e, weight).sum(0)
        rows = self.hidden_rows(e)
        return torch.einsum("dpbh,dh->pb", rows.to(weight.dtype), weight)

    def resolved_implementation(self, e: Tensor) -> str:
        """The implementation ``forward`` uses for input ``e`` (see ``implementation``)."""
        if self.implementation != "auto":
            if self.implementation == "fused":
                _check_fused(e.device)
            if self.implementation == "triton":
                triton_scan.check_triton(e.device)
            return self.implementation
        if graph_capture_active():
            return "autograd"
        if e.device.type == "cuda" and triton_scan.suits_auto(e.device):
            return "triton"
        if e.device.type == "cpu" and _extension.load() is not None:
            return "fused"
        return "bptt"

    def state_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """State-to-state taps ``(D, 2, S, 4h)``, attention weight ``(D, h)`` and bias ``(D,)``."""
        w_state = state_taps(self.state_to_state).to(dtype).contiguous()
        if not self.feedback:
            return w_state, None, None
        return w_state, self.attention_weight.to(dtype), self.attention_bias.to(dtype)

    def _run_fused(self, e: Tensor, readout: Tensor | None) -> Tensor:
        schedule = DiagonalSchedule.of(*e.shape[-2:])
        dtype = state_dtype_for(e.dtype)
        w_in, b_in = input_weights(
            self.input_to_state.weight, self.input_to_state.bias, len(self.directions)
        )
        w_state, w_att, b_att = self.state_weights(dtype)
        return FusedDiagonalLSTM.apply(
            e,
            packing_index(schedule, self.directions, e.device),
            w_in.to(dtype).contiguous(),
            b_in.to(dtype).contiguous(),
            w_state,
            w_att,
            b_att,
            None if readout is None else readout.to(dtype).contiguous(),
            schedule,
            _extension.load(),
        )

    def _rows_bptt(self, e: Tensor) -> Tensor:
        batch, channels, height, width = e.shape
        num_dirs, hidden = len(self.directions), self.hidden_channels
        schedule = DiagonalSchedule.of(height, width)
        index = packing_index(schedule, self.directions, e.device)
        # One gather of whole (B, C) rows puts every direction's cells in diagonal order; the 1x1
        # input-to-state conv is then a batched matrix product straight into the packed layout.
        dtype = state_dtype_for(e.dtype)
        rows = e.permute(2, 3, 0, 1).reshape(height * width, batch, channels)
        packed = rows.index_select(0, index.flatten()).view(num_dirs, -1, channels)
        weight, bias = input_weights(self.input_to_state.weight, self.input_to_state.bias, num_dirs)
        # (under autocast this product runs in bf16, like the conv it replaces; the scan does not)
        packed = torch.baddbmm(bias.unsqueeze(1), packed, weight).to(dtype)
        w_state, w_att, b_att = self.state_weights(dtype)
        if self.feedback:
            w_att, b_att = w_att.unsqueeze(-1), b_att.view(num_dirs, 1, 1)
        packed = packed.view(num_dirs, height * width, batch, 4 * hidden)
        out = DiagonalLSTMFunction.apply(packed, w_state, w_att, b_att, schedule)
        # Back to row-major positions: one gather of whole (B, h) rows.
        offsets = torch.arange(num_dirs, device=e.device).unsqueeze(1) * (height * width)
        inverse = (torch.argsort(index, dim=1) + offsets).flatten()
        out = out.view(-1, batch, hidden).index_select(0, inverse)
        return out.view(num_dirs, -1, batch, hidden)

    def _forward_autograd(self, e: Tensor) -> Tensor:
        """The scan as a loop of differentiable ops over the skewed map: ``(B, D*h, H, W)``."""
        batch, _, height, width = e.shape
        num_dirs, hidden = len(self.directions), self.hidden_channels
        steps = height + width - 1

        # Input-to-state for every direction at once, then one flip per direction.
        projected = self.input_to_state(e).unflatten(1, (num_dirs, 4 * hidden))
        projected = torch.stack([self.flip(projected[:, d], d) for d in range(num_dirs)])
        # (D, B, 4h, H, L) -> one contiguous (D, B*H, 4h) slab per step, indexed once by unbind.
        inputs = skew(projected).permute(4, 0, 1, 3, 2).reshape(steps, num_dirs, -1, 4 * hidden)
        inputs = inputs.unbind(0)

        state_dtype = state_dtype_for(e.dtype)
        valid = valid_cells(height, width, e.device, state_dtype).view(steps, 1, 1, height, 1)
        valid = valid.unbind(0)
        # (D, 2*S, 4h): the taps' rows stacked in tap order, matching the concat of the neighbours.
        w_state = state_taps(self.state_to_state).reshape(num_dirs, -1, 4 * hidden)
        g = gate_slices(hidden)
        if self.feedback:
            w_att = self.attention_weight.unsqueeze(-1)  # (D, h, 1)
            b_att = self.attention_bias.view(num_dirs, 1, 1)

        state = e.new_zeros(num_dirs, batch, height, self.state_channels, dtype=state_dtype)
        cell = e.new_zeros(num_dirs, batch, height, hidden, dtype=state_dtype)
        outputs: list[Tensor] = []
        for t in range(steps):
            above = F.pad(state[:, :, :-1], (0, 0, 1, 0))  # row i reads row i-1; zeros on top
            left = state  # row i reads row i of the previous step
            neighbours = torch.cat([above, left], dim=-1).flatten(1, 2)  # TAP_ABOVE, TAP_LEFT
            gates = torch.baddbmm(inputs[t], neighbours.to(w_state.dtype), w_state)
            gates = gates.to(state_dtype).view(num_dirs, batch, height, 4 * hidden)
            sig = torch.sigmoid(gates[..., g.sigmoid])
            candidate = torch.tanh(gates[..., g.tanh])
            in_gate, forget_gate = sig[..., g.input], sig[..., g.forget]
            out_gate = sig[..., g.output]
            cell = (forget_gate * cell + in_gate * candidate) * valid[t]
            h = out_gate * torch.tanh(cell)
            outputs.append(h)
            if self.feedback:
                logit = torch.baddbmm(b_att, h.flatten(1, 2).to(w_att.dtype), w_att)
                att = torch.sigmoid(logit.to(state_dtype)).view(num_dirs, batch, height, 1)
                # h is already zero off the map (cell is); sigma(bias) is not.
                state = torch.cat([h, att * valid[t]], dim=-1)  # as in state_slices
            else:
                state = h
        # (L, D, B, H, h) -> (D, B, h, H, L) -> unskew -> flip back -> (B, D*h, H, W)
        hidden_maps = unskew(torch.stack(outputs).permute(1, 2, 4, 3, 0))
        hidden_maps = torch.stack([self.flip(hidden_maps[d], d) for d in range(num_dirs)], dim=1)
        return hidden_maps.flatten(1, 2)
