"""The diagonal LSTM as one autograd node with a hand-written backward through time.

Layout: the packed layout of :mod:`attentionrnn.layers.diagonal` (:class:`DiagonalSchedule`).
The cells are packed by diagonal, only cells inside the map (so no work is spent on the padding a
skewed buffer carries), each row holding the whole batch. One diagonal is then a contiguous
``(D, n_t * B, C)`` block: a step is two batched matrix products and a few element-wise kernels on
views, with no copies. In the state buffers every diagonal has a zero row before and after it, so
the cells above and to the left of diagonal ``t``'s cells are two contiguous slices of diagonal
``t-1``'s padded block, offset by one row, and a neighbour outside the map reads a zero pad row.

The forward keeps the gate activations, the cell states and the passed-on states (hidden state and
predicted attention); the backward walks the diagonals in reverse and accumulates gradients into
the same padded layout. Everything runs without autograd bookkeeping, which is where a Python loop
of small autograd ops spends most of its time.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attentionrnn.layers.diagonal import (
    TAP_ABOVE,
    TAP_LEFT,
    DiagonalSchedule,
    gate_slices,
    state_channels,
    state_slices,
)


class DiagonalLSTMFunction(torch.autograd.Function):
    """Diagonal LSTM over packed inputs; see the module docstring for the layout.

    Inputs: ``x`` (D, H*W, B, 4h) input-to-state terms in packed order; ``w_state`` (D, 2, S, 4h)
    the state-to-state taps (:func:`~attentionrnn.layers.diagonal.state_taps`); ``w_att``
    (D, h, 1) and ``b_att`` (D, 1, 1) the attention estimate (both ``None`` without feedback); the
    schedule. Output: hidden states (D, H*W, B, h) in packed order.
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
    g, s = gate_slices(hidden), state_slices(hidden, feedback)
    # Only the pad rows need zeros: every other row is written before it is read.
    pads = sched.pad_rows(x.device)
    states = x.new_empty(num_dirs, sched.padded_size, batch, state_channels(hidden, feedback))
    states.index_fill_(1, pads, 0.0)
    cells = x.new_empty(num_dirs, sched.padded_size, batch, hidden).index_fill_(1, pads, 0.0)
    out = x.new_empty(num_dirs, cells_total, batch, hidden)
    acts = torch.empty_like(x)  # gate activations, packed
    w_above, w_left = w_state[:, TAP_ABOVE], w_state[:, TAP_LEFT]
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
        torch.sigmoid(pre[..., g.sigmoid], out=act[..., g.sigmoid])
        torch.tanh(pre[..., g.tanh], out=act[..., g.tanh])
        in_gate, forget_gate = act[..., g.input], act[..., g.forget]
        out_gate, candidate = act[..., g.output], act[..., g.candidate]
        torch.mul(in_gate, candidate, out=cell)
        if t > 0:
            cell.addcmul_(forget_gate, c_left)
        state = states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        h = out[:, p0 : p0 + n].view(num_dirs, rows_b, hidden)
        torch.mul(out_gate, torch.tanh(cell), out=h)
        state[..., s.hidden] = h
        if feedback:
            torch.sigmoid(torch.baddbmm(b_att, h, w_att), out=state[..., s.attention])
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
    g, s = gate_slices(hidden), state_slices(hidden, feedback)
    # Gradient w.r.t. what each cell passes on (hidden [+ attention]) and w.r.t. its cell state,
    # in the padded layout; the readers of a diagonal add into it before it is processed.
    d_states = torch.zeros_like(states)
    d_cells = torch.zeros_like(cells)
    d_x = torch.empty_like(acts)
    d_w_state = torch.zeros_like(w_state)
    d_w_att = torch.zeros_like(w_att) if feedback else None
    d_b_att = w_att.new_zeros(num_dirs, 1, 1) if feedback else None
    w_above_t = w_state[:, TAP_ABOVE].transpose(1, 2)
    w_left_t = w_state[:, TAP_LEFT].transpose(1, 2)
    for t in reversed(range(sched.steps)):
        n, p0, g0 = sched.length[t], sched.packed_start[t], sched.padded_start[t]
        rows_b = n * batch
        act = acts[:, p0 : p0 + n].view(num_dirs, rows_b, gates)
        in_gate, forget_gate = act[..., g.input], act[..., g.forget]
        out_gate, candidate = act[..., g.output], act[..., g.candidate]
        cell = cells[:, g0 : g0 + n].view(num_dirs, rows_b, hidden)
        state = states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        d_state = d_states[:, g0 : g0 + n].view(num_dirs, rows_b, -1)
        d_h = d_state[..., s.hidden] + grad_out[:, p0 : p0 + n].reshape(num_dirs, rows_b, hidden)
        if feedback:
            att = state[..., s.attention]
            d_logit = d_state[..., s.attention] * att * (1 - att)
            d_h = torch.baddbmm(d_h, d_logit, w_att.transpose(1, 2))
            d_w_att.baddbmm_(state[..., s.hidden].transpose(1, 2), d_logit)
            d_b_att += d_logit.sum(dim=1, keepdim=True)
        tanh_c = torch.tanh(cell)
        d_cell = d_cells[:, g0 : g0 + n].view(num_dirs, rows_b, hidden)
        d_cell = d_cell.addcmul(d_h * out_gate, 1 - tanh_c.square())

        d_pre = d_x[:, p0 : p0 + n].view(num_dirs, rows_b, gates)
        torch.mul(d_cell, candidate, out=d_pre[..., g.input])
        torch.mul(d_h, tanh_c, out=d_pre[..., g.output])
        torch.mul(d_cell, in_gate, out=d_pre[..., g.candidate])
        d_pre[..., g.candidate].mul_(1 - candidate.square())
        if t > 0:
            a0 = sched.neighbour_start(t)
            c_left = cells[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, hidden)
            torch.mul(d_cell, c_left, out=d_pre[..., g.forget])
        else:
            d_pre[..., g.forget].zero_()
        sig = act[..., g.sigmoid]
        d_pre[..., g.sigmoid].mul_(sig * (1 - sig))
        if t > 0:
            d_cells[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, hidden).addcmul_(
                d_cell, forget_gate
            )
            above = states[:, a0 : a0 + n].view(num_dirs, rows_b, -1)
            left = states[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, -1)
            d_states[:, a0 : a0 + n].view(num_dirs, rows_b, -1).baddbmm_(d_pre, w_above_t)
            d_states[:, a0 + 1 : a0 + 1 + n].view(num_dirs, rows_b, -1).baddbmm_(d_pre, w_left_t)
            d_w_state[:, TAP_ABOVE].baddbmm_(above.transpose(1, 2), d_pre)
            d_w_state[:, TAP_LEFT].baddbmm_(left.transpose(1, 2), d_pre)
    return d_x, d_w_state, d_w_att, d_b_att
