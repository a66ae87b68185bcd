"""Per-pixel reference of the AttentionRNN scan, written for clarity, not speed.

It visits the positions one by one in each direction's scan order and reads each cell's two
neighbours by their coordinates in the original map: no flips, no skew, no batching of diagonals.
What the parameters mean (gate order, taps, the attention value passed on) is the convention
:mod:`attentionrnn.layers.diagonal` states, read here through its names; the layouts themselves
are not used.
The fast layer must agree with it to rounding error; the tests check that. The reference classes
are the fast classes with the scan swapped, so they load a fast layer's ``state_dict`` as is
(encoder, query term and head are the same plain convolutions in both; the query term is added
or multiplied as the layer's ``query_fusion`` says, which :meth:`_Reference.from_layer` carries
over with the rest of the configuration).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attentionrnn.layers.attention_rnn import AttentionRNN, BlockAttentionRNN, ScanAttention
from attentionrnn.layers.diagonal import (
    TAP_ABOVE,
    TAP_LEFT,
    gate_slices,
    input_weights,
    state_dtype_for,
)
from attentionrnn.layers.scan import DiagonalLSTMScan

# Scan order of each corner: (row step, column step). The cell "above" a position is the one a
# row step before it, the cell "to the left" the one a column step before it.
CORNER_STEPS: dict[str, tuple[int, int]] = {
    "top_left": (1, 1),
    "bottom_right": (-1, -1),
    "top_right": (1, -1),
    "bottom_left": (-1, 1),
}


def reference_scan(scan: DiagonalLSTMScan, e: Tensor) -> Tensor:
    """Run ``scan``'s diagonal LSTM position by position; returns ``(B, D*hidden, H, W)``."""
    batch, _, height, width = e.shape
    hidden = scan.hidden_channels
    dtype = state_dtype_for(e.dtype)
    e = e.to(dtype)
    num_dirs = len(scan.directions)
    w_in, b_in = input_weights(scan.input_to_state.weight, scan.input_to_state.bias, num_dirs)
    w_in, b_in = w_in.to(dtype), b_in.to(dtype)  # (D, Cin, 4h), (D, 4h)
    g = gate_slices(hidden)
    no_state = e.new_zeros(batch, scan.state_channels)
    no_cell = e.new_zeros(batch, hidden)
    maps = []
    for d, corner in enumerate(scan.directions):
        row_step, col_step = CORNER_STEPS[corner]
        w_above = scan.state_to_state[d, :, :, TAP_ABOVE].to(dtype)  # (4h, S)
        w_left = scan.state_to_state[d, :, :, TAP_LEFT].to(dtype)
        # What each visited position passes on (hidden state [+ attention value]) and its cell.
        passed: dict[tuple[int, int], Tensor] = {}
        cells: dict[tuple[int, int], Tensor] = {}
        hiddens: dict[tuple[int, int], Tensor] = {}
        rows = range(height) if row_step > 0 else range(height - 1, -1, -1)
        cols = range(width) if col_step > 0 else range(width - 1, -1, -1)
        for i in rows:
            for j in cols:
                above = passed.get((i - row_step, j), no_state)  # missing neighbour: zeros
                left = passed.get((i, j - col_step), no_state)
                c_left = cells.get((i, j - col_step), no_cell)
                gates = e[:, :, i, j] @ w_in[d] + b_in[d] + above @ w_above.T + left @ w_left.T
                in_gate, forget_gate = gates[:, g.input], gates[:, g.forget]
                out_gate, candidate = gates[:, g.output], gates[:, g.candidate]
                c = torch.sigmoid(forget_gate) * c_left
                c = c + torch.sigmoid(in_gate) * torch.tanh(candidate)
                h = torch.sigmoid(out_gate) * torch.tanh(c)
                cells[i, j], hiddens[i, j], passed[i, j] = c, h, h
                if scan.feedback:
                    w_a, b_a = scan.attention_weight[d].to(dtype), scan.attention_bias[d].to(dtype)
                    attention = torch.sigmoid(h @ w_a + b_a)
                    passed[i, j] = torch.cat([h, attention[:, None]], dim=1)  # state_slices
        grid = [torch.stack([hiddens[i, j] for j in range(width)], -1) for i in range(height)]
        maps.append(torch.stack(grid, -2))
    return torch.cat(maps, dim=1)


class _Reference:
    """Mixin: swap the fast scan for :func:`reference_scan`."""

    def scan_logits(self, e: Tensor) -> Tensor:
        hidden = reference_scan(self.scan, e)  # type: ignore[attr-defined]
        return self.head(hidden.to(self.head.weight.dtype))  # type: ignore[attr-defined]

    @classmethod
    def from_layer(cls, layer: ScanAttention):
        """A reference with the configuration (``query_fusion`` included), dtype and parameters
        of the fast ``layer``."""
        ref = cls(**layer.config())  # type: ignore[call-arg]
        # Match dtype first: loading float64 weights into float32 parameters would round them.
        ref.to(next(layer.parameters()).dtype).load_state_dict(layer.state_dict())
        return ref


class ReferenceAttentionRNN(_Reference, AttentionRNN):
    """:class:`AttentionRNN` computed position by position (for tests, not for training).

    Example::

        >>> fast = AttentionRNN(8, hidden_channels=4)
        >>> ref = ReferenceAttentionRNN.from_layer(fast)
        >>> x = torch.randn(1, 8, 5, 6)
        >>> torch.allclose(ref(x), fast(x), atol=1e-5)
        True
    """


class ReferenceBlockAttentionRNN(_Reference, BlockAttentionRNN):
    """:class:`BlockAttentionRNN` with its coarse scan computed position by position."""
