"""The diagonal layout of the scan and the packing of the LSTM cell's weights, stated once.

Every implementation of the scan takes both from here: the autograd loop
(:mod:`attentionrnn.layers.scan`), the PyTorch backward through time
(:mod:`attentionrnn.layers.bptt`), the wrapper of the fused C++ kernels
(:mod:`attentionrnn.layers.fused`) and the per-pixel reference
(:mod:`attentionrnn.layers.reference`). The C++ kernels cannot import Python; they receive the
packed weights and the schedule built here, and ``csrc/scan_params.h`` restates the few offsets they
hard-code (gate order, tap order, where the attention value sits) with a pointer back to this file.

**Directions.** A direction is named by the corner its scan starts from. Every direction is reduced
to the top-left scan by flipping the map (:data:`CORNER_FLIPS`); the cell *above* a position is
then the one a row before it in scan order, the cell *to the left* the one a column before it.

**Skewed layout** (the autograd loop). Row ``i`` is shifted right by ``i`` (:func:`skew`), so cell
``(i, j)`` lands in skewed column ``t = i + j``: its two causal neighbours ``(i-1, j)`` and
``(i, j-1)`` both lie in column ``t - 1`` (rows ``i-1`` and ``i``), and one step of the recurrence
updates a whole anti-diagonal. The scan takes ``H + W - 1`` steps; :func:`valid_cells` marks the
skewed cells that lie inside the map.

**Packed layout** (the PyTorch BPTT node and the fused kernels; :class:`DiagonalSchedule`). The
``H * W`` cells are stored packed by diagonal: diagonal ``t`` holds the cells ``(i, t - i)`` for
``i`` in ``first_row[t] .. first_row[t] + length[t] - 1`` (only cells inside the map), rows ordered
by ``i``, each row holding the whole batch. :func:`packing_index` gives the row-major position in
the original map of every packed cell of every direction. In the *padded* state buffers every
diagonal gets one zero row before and after it (:meth:`DiagonalSchedule.pad_rows`): the cells above
and to the left of diagonal ``t``'s cells are then two contiguous row ranges of diagonal ``t-1``
starting at :meth:`DiagonalSchedule.neighbour_start` (above) and one row later (left), and a
neighbour outside the map falls on a zero pad row, which is what the reference does for it.

**Cell weights.** Per direction ``d`` (``h`` hidden channels, ``S = h + feedback`` state channels):

* the gates along the ``4h`` axis are, in :data:`GATE_ORDER`, input, forget, output (sigmoids) and
  the cell candidate (tanh); :func:`gate_slices` names their ranges;
* a cell passes on ``S`` channels (:func:`state_slices`): its hidden state, then (with feedback)
  its predicted attention value ``sigmoid(w_att[d] . h + b_att[d])``;
* the input-to-state term is a 1x1 convolution with ``D * 4h`` outputs, direction-major
  (:func:`input_weights` views it as ``(D, Cin, 4h)`` and ``(D, 4h)``);
* the state-to-state parameter is ``(D, 4h, S, 2)``: a 2x1 kernel whose tap :data:`TAP_ABOVE`
  reads the cell above and tap :data:`TAP_LEFT` the cell to the left (:func:`state_taps` views it
  as ``(D, 2, S, 4h)``, the layout every implementation multiplies with);
* the fused kernels read all of a cell's weights as one matrix, :func:`kernel_weights`:
  ``w_cat = [w_in; above tap; left tap]`` ``(D, Cin + 2S, 4h)``, and for the backward pass the
  transpose of its input and hidden-state rows, zero-padded to whole SIMD vectors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# The flip that moves each starting corner to the top-left (dims of an (..., H, W) tensor).
CORNER_FLIPS: dict[str, tuple[int, ...]] = {
    "top_left": (),
    "bottom_right": (-2, -1),
    "top_right": (-1,),
    "bottom_left": (-2,),
}


def flip_to_top_left(x: Tensor, corner: str) -> Tensor:
    """Flip an ``(..., H, W)`` map so that a scan from ``corner`` starts at the top-left (the flip
    is its own inverse)."""
    dims = CORNER_FLIPS[corner]
    return torch.flip(x, dims) if dims else x


# --- the skewed layout -------------------------------------------------------------------------


def skew(x: Tensor) -> Tensor:
    """Shift row ``i`` of an ``(..., H, W)`` tensor right by ``i``: ``(..., H, H + W - 1)``.

    Pad every row with ``H`` zeros, flatten, drop the last ``H`` entries and re-read the buffer
    with rows one element shorter: each row then starts one element further right than the last.
    """
    height, width = x.shape[-2:]
    length = height + width - 1
    flat = F.pad(x, (0, height)).flatten(-2)
    return flat[..., : height * length].unflatten(-1, (height, length))


def unskew(x: Tensor) -> Tensor:
    """Inverse of :func:`skew`: ``(..., H, H + W - 1)`` to ``(..., H, W)``."""
    height, length = x.shape[-2:]
    width = length - height + 1
    flat = F.pad(x.flatten(-2), (0, height))
    return flat.unflatten(-1, (height, width + height))[..., :width]


def valid_cells(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(H + W - 1, H)`` mask: 1 where skewed cell ``(i, t)`` lies inside the map (0 <= t-i < W).

    Cells outside the map are padding: they must hold zero state and zero attention so that the
    border cells of the map see exactly what a missing neighbour contributes in the reference.
    """
    steps = torch.arange(height + width - 1, device=device).unsqueeze(1)
    rows = torch.arange(height, device=device).unsqueeze(0)
    cols = steps - rows
    return ((cols >= 0) & (cols < width)).to(dtype)


# --- the packed layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagonalSchedule:
    """Where each diagonal of an ``H x W`` map lives in the packed and padded buffers."""

    height: int
    width: int
    first_row: tuple[int, ...]  # lo_t: the row of the diagonal's first cell
    length: tuple[int, ...]  # n_t = hi_t - lo_t + 1
    packed_start: tuple[int, ...]  # offset of diagonal t among the H*W packed cells
    padded_start: tuple[int, ...]  # offset in the padded buffers (one zero row each side)

    @classmethod
    @functools.lru_cache(maxsize=128)  # shared by every call on maps of this size
    def of(cls, height: int, width: int) -> DiagonalSchedule:
        first, length, packed, padded = [], [], [], []
        total = 0
        for t in range(height + width - 1):
            lo, hi = max(0, t - width + 1), min(height - 1, t)
            first.append(lo)
            length.append(hi - lo + 1)
            packed.append(total)
            padded.append(total + 2 * t + 1)
            total += hi - lo + 1
        return cls(height, width, tuple(first), tuple(length), tuple(packed), tuple(padded))

    @property
    def steps(self) -> int:
        return len(self.length)

    @property
    def padded_size(self) -> int:
        """Rows of the padded buffers: the ``H * W`` cells and two pad rows per diagonal."""
        return self.height * self.width + 2 * self.steps

    def neighbour_start(self, t: int) -> int:
        """Padded row of the cell *above* the first cell of diagonal ``t`` (``t >= 1``).

        The cells to the left start one row further; both ranges are ``length[t]`` rows long.
        """
        return self.padded_start[t - 1] + self.first_row[t] - 1 - self.first_row[t - 1]

    def raster_index(self, flip_rows: bool, flip_cols: bool, device: torch.device) -> Tensor:
        """Row-major index into the original map of each packed cell, for a scan whose map was
        flipped as given (so that its start corner is the top-left)."""
        rows = torch.arange(self.height, device=device).repeat_interleave(self.width)
        cols = torch.arange(self.width, device=device).repeat(self.height)
        order = torch.argsort((rows + cols) * self.height + rows)
        rows, cols = rows[order], cols[order]
        if flip_rows:
            rows = self.height - 1 - rows
        if flip_cols:
            cols = self.width - 1 - cols
        return rows * self.width + cols

    def pad_rows(self, device: torch.device) -> Tensor:
        """The zero rows of the padded buffers: one before and one after each diagonal."""
        return _pad_rows(self, torch.device(device))

    @functools.cached_property
    def kernel_layout(self) -> dict[str, int | list[int]]:
        """The schedule as the C++ kernels take it, by field name (``ScanArgs`` in
        ``csrc/bindings.cpp``); ``neighbour_start[0]`` is unused (the first diagonal has no
        neighbours)."""
        return {
            "height": self.height,
            "width": self.width,
            "first_row": list(self.first_row),
            "length": list(self.length),
            "packed_start": list(self.packed_start),
            "padded_start": list(self.padded_start),
            "neighbour_start": [0] + [self.neighbour_start(t) for t in range(1, self.steps)],
            "padded_size": self.padded_size,
        }


@functools.lru_cache(maxsize=128)
def _pad_rows(schedule: DiagonalSchedule, device: torch.device) -> Tensor:
    starts = torch.tensor(schedule.padded_start, device=device)
    ends = starts + torch.tensor(schedule.length, device=device)
    return torch.cat([starts - 1, ends])


@functools.lru_cache(maxsize=128)
def packing_index(
    schedule: DiagonalSchedule, corners: tuple[str, ...], device: torch.device
) -> Tensor:
    """``(D, H*W)``: the row-major position in the original map of each packed cell of each
    direction (the scan from ``corners[d]`` runs on the map flipped by ``CORNER_FLIPS``)."""
    return torch.stack(
        [
            schedule.raster_index(-2 in CORNER_FLIPS[c], -1 in CORNER_FLIPS[c], device)
            for c in corners
        ]
    )


# --- the cell's weights ------------------------------------------------------------------------

# Order of the gates along the 4*hidden axis; the first three are sigmoids, the last a tanh.
GATE_ORDER = ("input", "forget", "output", "candidate")
SIGMOID_GATES = 3


class GateSlices(NamedTuple):
    """Ranges of the ``4h`` gate axis: each gate, and the sigmoid and tanh parts."""

    input: slice
    forget: slice
    output: slice
    candidate: slice
    sigmoid: slice  # input, forget and output: one sigmoid covers them
    tanh: slice  # the cell candidate


def gate_slices(hidden: int) -> GateSlices:
    """Where each gate lies along the ``4 * hidden`` axis (see :data:`GATE_ORDER`)."""
    each = [slice(k * hidden, (k + 1) * hidden) for k in range(len(GATE_ORDER))]
    split = SIGMOID_GATES * hidden
    return GateSlices(*each, sigmoid=slice(0, split), tanh=slice(split, 4 * hidden))


# The taps of the state-to-state kernel: what each reads in the previous diagonal.
TAP_ABOVE, TAP_LEFT = 0, 1


class StateSlices(NamedTuple):
    """Ranges of the ``S`` channels a cell passes on to the next diagonal."""

    hidden: slice
    attention: slice  # empty without feedback


def state_channels(hidden: int, feedback: bool) -> int:
    """``S``: the hidden state, plus the predicted attention value with feedback."""
    return hidden + int(feedback)


def state_slices(hidden: int, feedback: bool = True) -> StateSlices:
    """Where the hidden state and the attention value lie in a passed-on state (``S`` long)."""
    return StateSlices(slice(0, hidden), slice(hidden, state_channels(hidden, feedback)))


def state_to_state_shape(num_dirs: int, hidden: int, feedback: bool) -> tuple[int, int, int, int]:
    """Shape of the state-to-state parameter: ``(D, 4h, S, 2)``, (direction, out, in, tap)."""
    return (num_dirs, 4 * hidden, state_channels(hidden, feedback), 2)


def input_weights(weight: Tensor, bias: Tensor, num_dirs: int) -> tuple[Tensor, Tensor]:
    """The input-to-state 1x1 convolution's ``(D*4h, Cin, 1, 1)`` weight and ``(D*4h,)`` bias as
    ``(D, Cin, 4h)`` (a transposed view) and ``(D, 4h)``."""
    out_channels, in_channels = weight.shape[:2]
    w_in = weight.view(num_dirs, out_channels // num_dirs, in_channels).transpose(1, 2)
    return w_in, bias.view(num_dirs, -1)


def state_taps(state_to_state: Tensor) -> Tensor:
    """The ``(D, 4h, S, 2)`` state-to-state parameter as ``(D, 2, S, 4h)``: per tap
    (:data:`TAP_ABOVE`, :data:`TAP_LEFT`) the matrix a row of passed-on state multiplies. A view;
    ``.reshape(D, 2 * S, 4h)`` stacks the taps' rows, matching ``cat([above, left], -1)``."""
    return state_to_state.permute(0, 3, 2, 1)


def kernel_weights(w_in: Tensor, w_state: Tensor, vector_bytes: int) -> tuple[Tensor, Tensor]:
    """The weights as the fused kernels read them, from ``w_in`` (D, Cin, 4h) and the taps
    ``w_state`` (D, 2, S, 4h):

    * ``w_cat`` (D, K, 4h), ``K = Cin + 2S``: rows ``[w_in; above tap; left tap]``, what a cell's
      gate pre-activations multiply (its input, the state above, the state to the left);
    * ``w_cat_t`` (D, 4h, Mp): the transpose of the input and *hidden-state* rows,
      ``[w_in; above[:h]; left[:h]]^T``, zero-padded to ``Mp``, a whole number of SIMD vectors of
      ``vector_bytes`` (the backward pass's transposed product; the two attention rows,
      ``w_cat[:, Cin + h]`` and ``w_cat[:, Cin + S + h]``, it handles as dot products).
    """
    num_dirs, in_channels, gates = w_in.shape
    hidden = gates // 4
    w_cat = torch.cat([w_in, w_state.reshape(num_dirs, -1, gates)], 1).contiguous()
    lanes = vector_bytes // w_in.element_size()
    main = in_channels + 2 * hidden
    w_cat_t = w_in.new_zeros(num_dirs, gates, -(-main // lanes) * lanes)
    w_cat_t[..., :in_channels] = w_in.transpose(1, 2)
    hidden_rows = state_slices(hidden).hidden
    for tap in (TAP_ABOVE, TAP_LEFT):
        start = in_channels + tap * hidden
        w_cat_t[..., start : start + hidden] = w_state[:, tap, hidden_rows].transpose(1, 2)
    return w_cat, w_cat_t


def pair_weights(w_cat_t: Tensor) -> tuple[Tensor, Tensor]:
    """The input and hidden-state rows of the cell weights as the kernels' bf16 pair products
    read them (``csrc/pair_products.h``), from ``w_cat_t`` (D, 4h, Mp) of :func:`kernel_weights`
    with ``Mp = Cin + 2h``: rounded to bf16 and packed two consecutive rows per int32 word, row
    ``2c`` in the low half (little-endian), one word per row pair and column:

    * ``w_pairs`` (D, Mp / 2, 4h): ``[w_in; above[:h]; left[:h]]``, the forward pass's product;
    * ``w_pairs_t`` (D, 2h, Mp): its transpose, the backward pass's.

    The two attention rows of the taps stay float32 in ``w_cat``.
    """

    def packed(w: Tensor) -> Tensor:
        num_dirs, rows, columns = w.shape
        pairs = w.to(torch.bfloat16).view(num_dirs, rows // 2, 2, columns).transpose(2, 3)
        return pairs.contiguous().view(torch.int32).view(num_dirs, rows // 2, columns)

    return packed(w_cat_t.transpose(1, 2)), packed(w_cat_t)


def split_kernel_weights(d_w_cat: Tensor, in_channels: int) -> tuple[Tensor, Tensor]:
    """Inverse of the ``w_cat`` packing for gradients: ``(D, K, 4h)`` to the gradients of ``w_in``
    (D, Cin, 4h) and of the taps (D, 2, S, 4h)."""
    num_dirs, _, gates = d_w_cat.shape
    d_w_state = d_w_cat[:, in_channels:].reshape(num_dirs, 2, -1, gates)
    return d_w_cat[:, :in_channels], d_w_state


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The recurrent state stays in at least float32 (bf16/fp16 inputs, autocast)."""
    return torch.promote_types(dtype, torch.float32)
