"""Triton kernels of the diagonal-LSTM scan: the forward and the backward pass through time.

The functions here are plain Python, undecorated: :mod:`attentionrnn.layers.triton_scan` wraps
them either for compilation (``triton.runtime.jit.JITFunction``, CUDA tensors) or for Triton's
interpreter (``InterpretedFunction``, CPU tensors under ``TRITON_INTERPRET=1``), so that one
process can hold both. This module imports Triton and is only imported by that launcher.

**Work split.** One program per (direction, group of ``BLOCK_B`` images) walks the ``H + W - 1``
diagonals in order (backward: in reverse); a diagonal's ``n_t`` cells times the group's images are
processed as rows of ``BLOCK_R``-row tiles, one column per hidden channel, the four gates in four
tiles. A diagonal only reads the previous one, through global memory, so a barrier
(``tl.debug_barrier``) separates the diagonals.

**Layouts** (all from :mod:`attentionrnn.layers.diagonal`):

* ``x`` (D, H*W, B, 4h) the input-to-state terms, ``acts`` (D, H*W, B, 4h) the gate activations,
  ``out`` (D, H*W, B, h) the hidden states and the gradients of those: *raster* order, read and
  written through the packing index (``index[d, packed_start[t] + k]`` is the raster position of
  cell ``k`` of diagonal ``t``);
* ``states`` (D, P, B, S) the passed-on states (hidden state, then the attention value with
  feedback), ``cells`` (D, P, B, h), and their gradients: the *padded* packed layout
  (:class:`~attentionrnn.layers.diagonal.DiagonalSchedule`), with zero rows around each diagonal,
  so that the cells above and to the left of cell ``k`` of diagonal ``t`` sit at padded rows
  ``neighbour_start[t] + k`` and one row later;
* ``sched`` (4, T) int32: per diagonal ``length``, ``packed_start``, ``padded_start`` and
  ``neighbour_start`` (row 3, unused at ``t = 0``);
* ``w_state`` (D, 2, S, 4h) the state-to-state taps (:func:`~attentionrnn.layers.diagonal.
  state_taps`), gates in ``GATE_ORDER`` (input, forget, output, candidate); ``w_att`` (D, h),
  ``b_att`` (D).

The arithmetic runs in the dtype of the buffers (float32, or float64 for float64 layers): the cell
state never drops below float32. The weight gradients are left to the launcher: they are sums
over all cells, one batched matrix product each once the backward kernel has written the
gate-pre-activation gradients ``d_x`` and the attention-logit gradients ``d_logit``.
"""

from __future__ import annotations

import triton.language as tl


def scan_forward(
    x_ptr, index_ptr, sched_ptr, w_state_ptr, w_att_ptr, b_att_ptr,
    states_ptr, cells_ptr, acts_ptr, out_ptr,
    batch, cells_total, padded_size, steps,
    HIDDEN: tl.constexpr, FEEDBACK: tl.constexpr, HP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    S: tl.constexpr = HIDDEN + FEEDBACK
    G: tl.constexpr = 4 * HIDDEN
    CELLS: tl.constexpr = BLOCK_R // BLOCK_B
    d = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    b = tl.program_id(1) * BLOCK_B + r % BLOCK_B  # image of each row
    kr = r // BLOCK_B  # cell of each row, within a chunk
    j = tl.arange(0, HP)
    jm = j < HIDDEN
    # This direction's slices of every buffer.
    x_d = x_ptr + d * cells_total * batch * G
    acts_d = acts_ptr + d * cells_total * batch * G
    out_d = out_ptr + d * cells_total * batch * HIDDEN
    states_d = states_ptr + d * padded_size * batch * S
    cells_d = cells_ptr + d * padded_size * batch * HIDDEN
    w_above = w_state_ptr + d * 2 * S * G
    w_left = w_above + S * G
    if FEEDBACK:
        w_att = tl.load(w_att_ptr + d * HIDDEN + j, mask=jm, other=0.0)
        b_att = tl.load(b_att_ptr + d)
    for t in range(steps):
        n = tl.load(sched_ptr + t)
        p0 = tl.load(sched_ptr + steps + t)
        g0 = tl.load(sched_ptr + 2 * steps + t)
        a0 = tl.load(sched_ptr + 3 * steps + t)
        for c0 in range(0, n, CELLS):
            k = c0 + kr
            rm = (k < n) & (b < batch)
            nm = rm & (k + t > k)  # the first diagonal (t = 0) has no neighbours
            m2 = rm[:, None] & jm[None, :]
            pos = tl.load(index_ptr + d * cells_total + p0 + k, mask=rm, other=0).to(tl.int64)
            x_row = x_d + ((pos * batch + b) * G)[:, None] + j[None, :]
            gi = tl.load(x_row, mask=m2, other=0.0)
            gf = tl.load(x_row + HIDDEN, mask=m2, other=0.0)
            go = tl.load(x_row + 2 * HIDDEN, mask=m2, other=0.0)
            gc = tl.load(x_row + 3 * HIDDEN, mask=m2, other=0.0)
            above = ((a0 + k) * batch + b).to(tl.int64)  # padded row x batch of the cell above
            left = above + batch
            # State-to-state term: one outer product per passed-on channel and tap.
            for s in range(S):
                sa = tl.load(states_d + above * S + s, mask=nm, other=0.0)[:, None]
                sl = tl.load(states_d + left * S + s, mask=nm, other=0.0)[:, None]
                wa = w_above + s * G + j
                wl = w_left + s * G + j
                gi += sa * tl.load(wa, mask=jm, other=0.0)[None, :]
                gi += sl * tl.load(wl, mask=jm, other=0.0)[None, :]
                gf += sa * tl.load(wa + HIDDEN, mask=jm, other=0.0)[None, :]
                gf += sl * tl.load(wl + HIDDEN, mask=jm, other=0.0)[None, :]
                go += sa * tl.load(wa + 2 * HIDDEN, mask=jm, other=0.0)[None, :]
                go += sl * tl.load(wl + 2 * HIDDEN, mask=jm, other=0.0)[None, :]
                gc += sa * tl.load(wa + 3 * HIDDEN, mask=jm, other=0.0)[None, :]
                gc += sl * tl.load(wl + 3 * HIDDEN, mask=jm, other=0.0)[None, :]
            lm2 = nm[:, None] & jm[None, :]
            c_left = tl.load(cells_d + (left * HIDDEN)[:, None] + j[None, :], mask=lm2, other=0.0)
            i_gate = 1.0 / (1.0 + tl.exp(-gi))
            f_gate = 1.0 / (1.0 + tl.exp(-gf))
            o_gate = 1.0 / (1.0 + tl.exp(-go))
            cand = 2.0 / (1.0 + tl.exp(-2.0 * gc)) - 1.0  # tanh
            c = f_gate * c_left + i_gate * cand
            h = o_gate * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
            a_row = acts_d + ((pos * batch + b) * G)[:, None] + j[None, :]
            tl.store(a_row, i_gate, mask=m2)
            tl.store(a_row + HIDDEN, f_gate, mask=m2)
            tl.store(a_row + 2 * HIDDEN, o_gate, mask=m2)
            tl.store(a_row + 3 * HIDDEN, cand, mask=m2)
            tl.store(out_d + ((pos * batch + b) * HIDDEN)[:, None] + j[None, :], h, mask=m2)
            row = ((g0 + k) * batch + b).to(tl.int64)  # this cell's padded row x batch
            tl.store(cells_d + (row * HIDDEN)[:, None] + j[None, :], c, mask=m2)
            tl.store(states_d + (row * S)[:, None] + j[None, :], h, mask=m2)
            if FEEDBACK:
                logit = tl.sum(h * w_att[None, :], axis=1) + b_att
                tl.store(states_d + row * S + HIDDEN, 1.0 / (1.0 + tl.exp(-logit)), mask=rm)
        tl.debug_barrier()  # the next diagonal reads this one's states and cells


def scan_backward(
    grad_ptr, index_ptr, sched_ptr, w_state_ptr, w_att_ptr,
    states_ptr, cells_ptr, acts_ptr,
    d_states_ptr, d_cells_ptr, d_x_ptr, d_logit_ptr,
    batch, cells_total, padded_size, steps,
    HIDDEN: tl.constexpr, FEEDBACK: tl.constexpr, HP: tl.constexpr, GP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Walks the diagonals in reverse. Per diagonal, pass 1 turns the gradients that reached its
    cells (from the output and from the next diagonal) into ``d_x`` and the gradient of the cell
    state to the left; pass 2 gathers, for each cell of the previous diagonal, the gradient of its
    passed-on state from the (at most) two cells that read it: ``d_x`` of the cell below it times
    the above tap, plus ``d_x`` of the cell to its right times the left tap. Every row is written
    by one row of one pass, so nothing is accumulated across threads."""
    S: tl.constexpr = HIDDEN + FEEDBACK
    G: tl.constexpr = 4 * HIDDEN
    CELLS: tl.constexpr = BLOCK_R // BLOCK_B
    d = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    b = tl.program_id(1) * BLOCK_B + r % BLOCK_B
    kr = r // BLOCK_B
    j = tl.arange(0, HP)
    jm = j < HIDDEN
    q = tl.arange(0, GP)  # the whole gate axis, for pass 2
    qm = q < G
    grad_d = grad_ptr + d * cells_total * batch * HIDDEN
    acts_d = acts_ptr + d * cells_total * batch * G
    d_x_d = d_x_ptr + d * cells_total * batch * G
    states_d = states_ptr + d * padded_size * batch * S
    d_states_d = d_states_ptr + d * padded_size * batch * S
    cells_d = cells_ptr + d * padded_size * batch * HIDDEN
    d_cells_d = d_cells_ptr + d * padded_size * batch * HIDDEN
    w_above = w_state_ptr + d * 2 * S * G
    w_left = w_above + S * G
    if FEEDBACK:
        w_att = tl.load(w_att_ptr + d * HIDDEN + j, mask=jm, other=0.0)
    for back in range(steps):
        t = steps - 1 - back
        n = tl.load(sched_ptr + t)
        p0 = tl.load(sched_ptr + steps + t)
        g0 = tl.load(sched_ptr + 2 * steps + t)
        a0 = tl.load(sched_ptr + 3 * steps + t)
        # Pass 1: this diagonal's cells.
        for c0 in range(0, n, CELLS):
            k = c0 + kr
            rm = (k < n) & (b < batch)
            nm = rm & (k + t > k)
            m2 = rm[:, None] & jm[None, :]
            pos = tl.load(index_ptr + d * cells_total + p0 + k, mask=rm, other=0).to(tl.int64)
            a_row = acts_d + ((pos * batch + b) * G)[:, None] + j[None, :]
            i_gate = tl.load(a_row, mask=m2, other=0.0)
            f_gate = tl.load(a_row + HIDDEN, mask=m2, other=0.0)
            o_gate = tl.load(a_row + 2 * HIDDEN, mask=m2, other=0.0)
            cand = tl.load(a_row + 3 * HIDDEN, mask=m2, other=0.0)
            row = ((g0 + k) * batch + b).to(tl.int64)
            left = ((a0 + 1 + k) * batch + b).to(tl.int64)
            c = tl.load(cells_d + (row * HIDDEN)[:, None] + j[None, :], mask=m2, other=0.0)
            left_2d = (left * HIDDEN)[:, None] + j[None, :]
            lm2 = nm[:, None] & jm[None, :]
            c_left = tl.load(cells_d + left_2d, mask=lm2, other=0.0)
            d_h = tl.load(d_states_d + (row * S)[:, None] + j[None, :], mask=m2, other=0.0)
            out_row = ((pos * batch + b) * HIDDEN)[:, None] + j[None, :]
            d_h += tl.load(grad_d + out_row, mask=m2, other=0.0)
            if FEEDBACK:
                att = tl.load(states_d + row * S + HIDDEN, mask=rm, other=0.0)
                d_logit = tl.load(d_states_d + row * S + HIDDEN, mask=rm, other=0.0)
                d_logit = d_logit * att * (1.0 - att)
                d_h += d_logit[:, None] * w_att[None, :]
                tl.store(d_logit_ptr + d * padded_size * batch + row, d_logit, mask=rm)
            tanh_c = 2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0
            d_c = tl.load(d_cells_d + (row * HIDDEN)[:, None] + j[None, :], mask=m2, other=0.0)
            d_c += d_h * o_gate * (1.0 - tanh_c * tanh_c)
            x_row = d_x_d + ((pos * batch + b) * G)[:, None] + j[None, :]
            tl.store(x_row, d_c * cand * i_gate * (1.0 - i_gate), mask=m2)
            tl.store(x_row + HIDDEN, d_c * c_left * f_gate * (1.0 - f_gate), mask=m2)
            tl.store(x_row + 2 * HIDDEN, d_h * tanh_c * o_gate * (1.0 - o_gate), mask=m2)
            tl.store(x_row + 3 * HIDDEN, d_c * i_gate * (1.0 - cand * cand), mask=m2)
            # The cell to the left is read by this cell only: its gradient is set, not added.
            tl.store(d_cells_d + left_2d, d_c * f_gate, mask=lm2)
        tl.debug_barrier()  # pass 2 reads d_x of the whole diagonal
        # Pass 2: rows a0 .. a0 + n of the previous diagonal (n + 1 rows, pads included).
        if t > 0:
            for c0 in range(0, n + 1, CELLS):
                m = c0 + kr
                rm = (m <= n) & (b < batch)
                below = rm & (m < n)  # cell m of diagonal t reads this row as "above"
                right = rm & (m >= 1)  # cell m - 1 reads it as "left"
                pos_b = tl.load(index_ptr + d * cells_total + p0 + m, mask=below, other=0)
                pos_r = tl.load(index_ptr + d * cells_total + p0 + m - 1, mask=right, other=0)
                pos_b = pos_b.to(tl.int64)
                pos_r = pos_r.to(tl.int64)
                row_b = d_x_d + ((pos_b * batch + b) * G)[:, None] + q[None, :]
                row_r = d_x_d + ((pos_r * batch + b) * G)[:, None] + q[None, :]
                dx_b = tl.load(row_b, mask=below[:, None] & qm[None, :], other=0.0)
                dx_r = tl.load(row_r, mask=right[:, None] & qm[None, :], other=0.0)
                target = d_states_d + ((a0 + m) * batch + b).to(tl.int64) * S
                for s in range(S):
                    wa = tl.load(w_above + s * G + q, mask=qm, other=0.0)
                    wl = tl.load(w_left + s * G + q, mask=qm, other=0.0)
                    value = tl.sum(dx_b * wa[None, :] + dx_r * wl[None, :], axis=1)
                    tl.store(target + s, value, mask=rm)
        tl.debug_barrier()  # the previous diagonal reads what pass 2 and pass 1 wrote
