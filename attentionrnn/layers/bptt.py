"""The diagonal LSTM as one autograd node with a hand-written backward through time.

Layout. The cells of an ``H x W`` map are stored *packed by diagonal*: diagonal ``t`` holds the
cells ``(i, t - i)`` for ``i`` in ``lo_t..hi_t`` (only cells inside the map, so no work is spent on
the padding a skewed buffer carries), rows ordered by ``i``, and each row holds the whole batch.
One diagonal is then a contiguous ``(D, n_t * B, C)`` block: a step is two batched matrix products
and a few element-wise kernels on views, with no copies.

In the internal state buffers every diagonal gets one zero row before and after it. The cell above
``(i-1, j)`` and the cell to the left ``(i, j-1)`` of the cells of diagonal ``t`` are then two
contiguous slices of diagonal ``t-1``'s padded block, offset by one row; a neighbour outside the
map falls on a zero pad row, which is exactly what the per-pixel reference does for it.

The forward keeps the gate activations, the cell states and the passed-on states (hidden state and
predicted attention); the backward walks the diagonals in reverse and accumulates gradients into
the same padded layout. Everything runs without autograd bookkeeping, which is where a Python loop
of small autograd ops spends most of its time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class DiagonalSchedule:
    """Where each diagonal of an ``H x W`` map lives in the packed and padded buffers."""

    height: int
    width: int
    first_row: tuple[int, ...]  # lo_t
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

    @functools.cached_property
    def kernel_args(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The schedule as the C++ kernels take it."""
        neighbours = [0] + [self.neighbour_start(t) for t in range(1, self.steps)]
        return list(self.length), list(self.packed_start), list(self.padded_start), neighbours

    def pad_rows(self, device: torch.device) -> Tensor:
        """The zero rows of the padded buffers: one before and one after each diagonal."""
        starts = torch.tensor(self.padded_start, device=device)
        ends = starts + torch.tensor(self.length, device=device)
        return torch.cat([starts - 1, ends])


class DiagonalLSTMFunction(torch.autograd.Function):
    """Diagonal LSTM over packed inputs; see the module docstring for the layout.

    Inputs: ``x`` (D, H*W, B, 4h) input-to-state terms in packed order; ``w_state`` (D, 2, S, 4h)
    state-to-state weights (tap 0 above, tap 1 left; ``S = h + feedback``); ``w_att`` (D, h, 1) and
    ``b_att`` (D, 1, 1) the attention estimate (both ``None`` without feedback); the schedule.
    Output: hidden states (D, H*W, B, h) in packed order. Gate order: input, forget, output, cell.
    """

    @staticmethod
    def forward(ctx, x, w_state, w_att, b_att, schedule: DiagonalSchedule):  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):
            out, states, cells, acts = _forward(x, w_state, w_att, b_att, schedule)
        ctx.schedule = schedule
        ctx.save_for_backward(w_state, w_att, states, cells, acts)
        return out

    @staticmethod
    @once_differentiable  # the backward pass is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        w_state, w_att, states, cells, acts = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = _backward(grad_out, w_state, w_att, states, cells, acts, ctx.schedule)
        return (*grads, None)


def _forward(
    x: Tensor, w_state: Tensor, w_att: Tensor | None, b_att: Tensor | None, sched: DiagonalSchedule
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    num_dirs, cells_total, batch, gates = x.shape
    hidden = gates // 4
    feedback = w_att is not None
    # Only the pad rows need zeros: every other row is written before it is read.
    pads = sched.pad_rows(x.device)
    states = x.new_empty(num_dirs, sched.padded_size, batch, hidden + int(feedback))
    states.index_fill_(1, pads, 0.0)
    cells = x.new_empty(num_dirs, sched.padded_size, batch, hidden).index_fill_(1, pads, 0.0)
    out = x.new_empty(num_dirs, cells_total, batch, hidden)
    acts = torch.empty_like(x)  # gate activations, packed
    w_above, w_left = w_state[:, 0], w_state[:, 1]
    for t in range(sched.steps):
        n, p0, g0 = sched.length[t], sched.packed_start[t], sched.padded_start[t]
        rows_b = n * batch
        act = acts[:, p0 : p0 + n].view(num_dirs, rows_b, gates)
        pre = x[:, p0 : p0 + n].reshape(num_dirs, rows_b, gates)
        cell = cells[:, g0 : g0 + n].view(num_dirs, rows_b, hidden)
        if t > 0:
            a0 = sched.neighbour_start(t)
            above = states[:, a0 : a0 + n].view(num_dirs, rows_b, -1)
            left = states[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, -1)
            pre = torch.baddbmm(pre, above, w_above).baddbmm_(left, w_left)
            c_left = cells[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, hidden)
        torch.sigmoid(pre[..., : 3 * hidden], out=act[..., : 3 * hidden])
        torch.tanh(pre[..., 3 * hidden :], out=act[..., 3 * hidden :])
        in_gate, forget_gate = act[..., :hidden], act[..., hidden : 2 * hidden]
        out_gate, candidate = act[..., 2 * hidden : 3 * hidden], act[..., 3 * hidden :]
        torch.mul(in_gate, candidate, out=cell)
        if t > 0:
            cell.addcmul_(forget_gate, c_left)
        state = states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        h = out[:, p0 : p0 + n].view(num_dirs, rows_b, hidden)
        torch.mul(out_gate, torch.tanh(cell), out=h)
        state[..., :hidden] = h
        if feedback:
            torch.sigmoid(torch.baddbmm(b_att, h, w_att), out=state[..., hidden:])
    return out, states, cells, acts


def _backward(
    grad_out: Tensor,
    w_state: Tensor,
    w_att: Tensor | None,
    states: Tensor,
    cells: Tensor,
    acts: Tensor,
    sched: DiagonalSchedule,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    num_dirs, _, batch, gates = acts.shape
    hidden = gates // 4
    feedback = w_att is not None
    # Gradient w.r.t. what each cell passes on (hidden [+ attention]) and w.r.t. its cell state,
    # in the padded layout; the readers of a diagonal add into it before it is processed.
    d_states = torch.zeros_like(states)
    d_cells = torch.zeros_like(cells)
    d_x = torch.empty_like(acts)
    d_w_state = torch.zeros_like(w_state)
    d_w_att = torch.zeros_like(w_att) if feedback else None
    d_b_att = w_att.new_zeros(num_dirs, 1, 1) if feedback else None
    w_above_t = w_state[:, 0].transpose(1, 2)
    w_left_t = w_state[:, 1].transpose(1, 2)
    for t in reversed(range(sched.steps)):
        n, p0, g0 = sched.length[t], sched.packed_start[t], sched.padded_start[t]
        rows_b = n * batch
        act = acts[:, p0 : p0 + n].view(num_dirs, rows_b, gates)
        in_gate, forget_gate = act[..., :hidden], act[..., hidden : 2 * hidden]
        out_gate, candidate = act[..., 2 * hidden : 3 * hidden], act[..., 3 * hidden :]
        cell = cells[:, g0 : g0 + n].view(num_dirs, rows_b, hidden)
        state = states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        d_state = d_states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        d_h = d_state[..., :hidden] + grad_out[:, p0 : p0 + n].reshape(num_dirs, rows_b, hidden)
        if feedback:
            att = state[..., hidden:]
            d_logit = d_state[..., hidden:] * att * (1 - att)
            d_h = torch.baddbmm(d_h, d_logit, w_att.transpose(1, 2))
            d_w_att.baddbmm_(state[..., :hidden].transpose(1, 2), d_logit)
            d_b_att += d_logit.sum(dim=1, keepdim=True)
        tanh_c = torch.tanh(cell)
        d_cell = d_cells[:, g0 : g0 + n].view(num_dirs, rows_b, hidden)
        d_cell = d_cell.addcmul(d_h * out_gate, 1 - tanh_c.square())

        d_pre = d_x[:, p0 : p0 + n].view(num_dirs, rows_b, gates)
        torch.mul(d_cell, candidate, out=d_pre[..., :hidden])
        torch.mul(d_h, tanh_c, out=d_pre[..., 2 * hidden : 3 * hidden])
        torch.mul(d_cell, in_gate, out=d_pre[..., 3 * hidden :])
        d_pre[..., 3 * hidden :].mul_(1 - candidate.square())
        if t > 0:
            a0 = sched.neighbour_start(t)
            c_left = cells[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, hidden)
            torch.mul(d_cell, c_left, out=d_pre[..., hidden : 2 * hidden])
        else:
            d_pre[..., hidden : 2 * hidden].zero_()
        sig = act[..., : 3 * hidden]
        d_pre[..., : 3 * hidden].mul_(sig * (1 - sig))
        if t > 0:
            d_cells[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, hidden).addcmul_(
                d_cell, forget_gate
            )
            above = states[:, a0 : a0 + n].view(num_dirs, rows_b, -1)
            left = states[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, -1)
            d_states[:, a0 : a0 + n].view(num_dirs, rows_b, -1).baddbmm_(d_pre, w_above_t)
            d_states[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, -1).baddbmm_(d_pre, w_left_t)
            d_w_state[:, 0].baddbmm_(above.transpose(1, 2), d_pre)
            d_w_state[:, 1].baddbmm_(left.transpose(1, 2), d_pre)
    return d_x, d_w_state, d_w_att, d_b_att
