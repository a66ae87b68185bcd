// Fused CPU kernels of the diagonal LSTM (see attentionrnn/layers/bptt.py for the layout).
//
// A step of the scan is two batched matrix products (ATen) and ONE pass over the cells of the
// diagonal that applies the gate non-linearities, updates the cell and hidden state and predicts
// the attention value; its backward is one pass plus the matrix products. In PyTorch eager mode
// the same step is some 15 (forward) and 30 (backward) separate element-wise kernels, each a full
// pass over memory; this file exists only to fuse them. Built on first use by
// torch.utils.cpp_extension; the package falls back to the Python implementation without it.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
inline T tanh_(T x) {
  // Written through exp so the loop vectorises; the clamp keeps exp finite under -ffast-math.
  x = std::min(std::max(x, T(-30)), T(30));
  const T e = std::exp(T(2) * x);
  return (e - T(1)) / (e + T(1));
}

// rows [start, start+n) of dim 1 of a contiguous (D, R, B, C) tensor as (D, n*B, C)
inline at::Tensor rows(const at::Tensor& t, int64_t start, int64_t n) {
  return t.narrow(1, start, n).view({t.size(0), n * t.size(2), t.size(3)});
}

// One diagonal's cells of one step. Pointers are to direction 0; `*_dir` are the strides between
// directions. Inner loops run over the hidden units without branches so that they vectorise.
template <typename T>
void forward_cells(T* act, T* cell, const T* cell_left, T* out, T* state, const T* w_att,
                   const T* b_att, int64_t dirs, int64_t rows_b, int64_t hidden,
                   int64_t act_dir, int64_t cell_dir, int64_t out_dir, int64_t state_dir,
                   int64_t state_width) {
  const int64_t gates = 4 * hidden;
  at::parallel_for(0, dirs * rows_b, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t d = row / rows_b, r = row % rows_b;
      T* a = act + d * act_dir + r * gates;
      T* c = cell + d * cell_dir + r * hidden;
      T* o = out + d * out_dir + r * hidden;
      T* s = state + d * state_dir + r * state_width;
      for (int64_t k = 0; k < 3 * hidden; ++k) a[k] = sigmoid(a[k]);
      for (int64_t k = 3 * hidden; k < gates; ++k) a[k] = tanh_(a[k]);
      const T* ig = a;
      const T* fg = a + hidden;
      const T* og = a + 2 * hidden;
      const T* gg = a + 3 * hidden;
      if (cell_left) {
        const T* cl = cell_left + d * cell_dir + r * hidden;
        for (int64_t k = 0; k < hidden; ++k) c[k] = ig[k] * gg[k] + fg[k] * cl[k];
      } else {
        for (int64_t k = 0; k < hidden; ++k) c[k] = ig[k] * gg[k];
      }
      for (int64_t k = 0; k < hidden; ++k) o[k] = og[k] * tanh_(c[k]);
      for (int64_t k = 0; k < hidden; ++k) s[k] = o[k];
      if (w_att) {
        const T* w = w_att + d * hidden;
        T z = b_att[d];
        for (int64_t k = 0; k < hidden; ++k) z += w[k] * o[k];
        s[hidden] = sigmoid(z);
      }
    }
  });
}

template <typename T>
void backward_cells(const T* act, const T* cell, const T* cell_left, const T* state,
                    const T* d_state, const T* grad_out, const T* d_cell, T* d_cell_left,
                    T* d_pre, T* d_logit, const T* w_att, int64_t dirs, int64_t rows_b,
                    int64_t hidden, int64_t act_dir, int64_t cell_dir, int64_t out_dir,
                    int64_t state_dir, int64_t state_width) {
  const int64_t gates = 4 * hidden;
  at::parallel_for(0, dirs * rows_b, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> dh(hidden), tc(hidden), dc(hidden);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t d = row / rows_b, r = row % rows_b;
      const T* a = act + d * act_dir + r * gates;
      const T* c = cell + d * cell_dir + r * hidden;
      const T* ds = d_state + d * state_dir + r * state_width;
      const T* go = grad_out + d * out_dir + r * hidden;
      const T* dc_in = d_cell + d * cell_dir + r * hidden;
      T* dp = d_pre + d * act_dir + r * gates;
      const T* ig = a;
      const T* fg = a + hidden;
      const T* og = a + 2 * hidden;
      const T* gg = a + 3 * hidden;
      for (int64_t k = 0; k < hidden; ++k) dh[k] = ds[k] + go[k];
      if (w_att) {
        const T av = state[d * state_dir + r * state_width + hidden];
        const T dz = ds[hidden] * av * (T(1) - av);
        d_logit[d * rows_b + r] = dz;
        const T* w = w_att + d * hidden;
        for (int64_t k = 0; k < hidden; ++k) dh[k] += dz * w[k];
      }
      for (int64_t k = 0; k < hidden; ++k) tc[k] = tanh_(c[k]);
      for (int64_t k = 0; k < hidden; ++k) {
        dc[k] = dc_in[k] + dh[k] * og[k] * (T(1) - tc[k] * tc[k]);
        dp[k] = dc[k] * gg[k] * ig[k] * (T(1) - ig[k]);
        dp[2 * hidden + k] = dh[k] * tc[k] * og[k] * (T(1) - og[k]);
        dp[3 * hidden + k] = dc[k] * ig[k] * (T(1) - gg[k] * gg[k]);
      }
      if (cell_left) {
        const T* cl = cell_left + d * cell_dir + r * hidden;
        T* dcl = d_cell_left + d * cell_dir + r * hidden;
        for (int64_t k = 0; k < hidden; ++k) {
          dp[hidden + k] = dc[k] * cl[k] * fg[k] * (T(1) - fg[k]);
          dcl[k] += dc[k] * fg[k];
        }
      } else {
        for (int64_t k = 0; k < hidden; ++k) dp[hidden + k] = T(0);
      }
    }
  });
}

}  // namespace

// x (D, P, B, 4h) packed input terms; w_state (D, 2, S, 4h); w_att (D, h, 1), b_att (D, 1, 1)
// (empty tensors without feedback). Returns out (D, P, B, h), states, cells, acts.
std::vector<at::Tensor> diagonal_lstm_forward(at::Tensor x, at::Tensor w_state, at::Tensor w_att,
                                              at::Tensor b_att, std::vector<int64_t> length,
                                              std::vector<int64_t> packed_start,
                                              std::vector<int64_t> padded_start,
                                              std::vector<int64_t> neighbour_start,
                                              int64_t padded_size) {
  TORCH_CHECK(x.is_contiguous() && w_state.is_contiguous(), "inputs must be contiguous");
  const bool feedback = w_att.numel() > 0;
  const int64_t dirs = x.size(0), cells_total = x.size(1), batch = x.size(2);
  const int64_t gates = x.size(3), hidden = gates / 4, width = hidden + (feedback ? 1 : 0);
  // Only the pad rows around each diagonal must be zero: every other row is written before use.
  auto states = at::empty({dirs, padded_size, batch, width}, x.options());
  auto cells = at::empty({dirs, padded_size, batch, hidden}, x.options());
  for (size_t t = 0; t < length.size(); ++t) {
    for (int64_t pad : {padded_start[t] - 1, padded_start[t] + length[t]}) {
      states.narrow(1, pad, 1).zero_();
      cells.narrow(1, pad, 1).zero_();
    }
  }
  auto out = at::empty({dirs, cells_total, batch, hidden}, x.options());
  auto acts = at::empty_like(x);  // pre-activations, turned into activations in place
  auto w_att_c = feedback ? w_att.contiguous() : w_att;
  auto b_att_c = feedback ? b_att.contiguous() : b_att;
  for (size_t t = 0; t < length.size(); ++t) {
    const int64_t n = length[t], p0 = packed_start[t], g0 = padded_start[t];
    auto act = rows(acts, p0, n);
    int64_t a0 = 0;
    if (t > 0) {
      a0 = neighbour_start[t];
      auto pre = rows(x, p0, n), above = rows(states, a0, n), left = rows(states, a0 + 1, n);
      for (int64_t d = 0; d < dirs; ++d) {  // 2-D products on contiguous blocks: no copies
        auto act_d = act[d];
        at::addmm_out(act_d, pre[d], above[d], w_state[d][0]);
        act_d.addmm_(left[d], w_state[d][1]);
      }
    } else {
      act.copy_(rows(x, p0, n));
    }
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "diagonal_lstm_forward", [&] {
      forward_cells<scalar_t>(
          act.data_ptr<scalar_t>(), rows(cells, g0, n).data_ptr<scalar_t>(),
          t > 0 ? rows(cells, a0 + 1, n).data_ptr<scalar_t>() : nullptr,
          rows(out, p0, n).data_ptr<scalar_t>(), rows(states, g0, n).data_ptr<scalar_t>(),
          feedback ? w_att_c.data_ptr<scalar_t>() : nullptr,
          feedback ? b_att_c.data_ptr<scalar_t>() : nullptr, dirs, n * batch, hidden,
          acts.stride(0), cells.stride(0), out.stride(0), states.stride(0), width);
    });
  }
  return {out, states, cells, acts};
}

// Returns d_x, d_w_state, d_w_att, d_b_att (the last two empty without feedback).
std::vector<at::Tensor> diagonal_lstm_backward(
    at::Tensor grad_out, at::Tensor w_state, at::Tensor w_att, at::Tensor states,
    at::Tensor cells, at::Tensor acts, std::vector<int64_t> length,
    std::vector<int64_t> packed_start, std::vector<int64_t> padded_start,
    std::vector<int64_t> neighbour_start) {
  grad_out = grad_out.contiguous();
  const bool feedback = w_att.numel() > 0;
  const int64_t dirs = acts.size(0), batch = acts.size(2), gates = acts.size(3);
  const int64_t hidden = gates / 4, width = states.size(3);
  auto d_states = at::zeros_like(states);
  auto d_cells = at::zeros_like(cells);
  auto d_x = at::empty_like(acts);
  auto d_w_state = at::zeros_like(w_state);
  auto d_w_att = feedback ? at::zeros_like(w_att) : at::Tensor();
  auto d_b_att = feedback ? at::zeros({dirs, 1, 1}, acts.options()) : at::Tensor();
  auto w_att_c = feedback ? w_att.contiguous() : w_att;
  for (int64_t t = static_cast<int64_t>(length.size()) - 1; t >= 0; --t) {
    const int64_t n = length[t], p0 = packed_start[t], g0 = padded_start[t];
    const int64_t rows_b = n * batch;
    const int64_t a0 = t > 0 ? neighbour_start[t] : 0;
    auto d_pre = rows(d_x, p0, n);
    auto d_logit = feedback ? at::empty({dirs, rows_b, 1}, acts.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "diagonal_lstm_backward", [&] {
      backward_cells<scalar_t>(
          rows(acts, p0, n).data_ptr<scalar_t>(), rows(cells, g0, n).data_ptr<scalar_t>(),
          t > 0 ? rows(cells, a0 + 1, n).data_ptr<scalar_t>() : nullptr,
          rows(states, g0, n).data_ptr<scalar_t>(), rows(d_states, g0, n).data_ptr<scalar_t>(),
          rows(grad_out, p0, n).data_ptr<scalar_t>(), rows(d_cells, g0, n).data_ptr<scalar_t>(),
          t > 0 ? rows(d_cells, a0 + 1, n).data_ptr<scalar_t>() : nullptr,
          d_pre.data_ptr<scalar_t>(), feedback ? d_logit.data_ptr<scalar_t>() : nullptr,
          feedback ? w_att_c.data_ptr<scalar_t>() : nullptr, dirs, rows_b, hidden,
          acts.stride(0), cells.stride(0), grad_out.stride(0), states.stride(0), width);
    });
    auto h = rows(states, g0, n).narrow(2, 0, hidden);
    auto d_above = rows(d_states, a0, n), d_left = rows(d_states, a0 + 1, n);
    for (int64_t d = 0; d < dirs; ++d) {  // 2-D products on contiguous blocks: no copies
      if (feedback) {
        d_w_att[d].addmm_(h[d].t(), d_logit[d]);
        d_b_att[d].add_(d_logit[d].sum(0, true));
      }
      if (t > 0) {
        d_above[d].addmm_(d_pre[d], w_state[d][0].t());
        d_left[d].addmm_(d_pre[d], w_state[d][1].t());
      }
    }
  }
  // State-to-state weight gradients as one large product over all cells: gather, for every cell
  // in packed order, the state block it read as "above" (the "left" one is the next row).
  std::vector<int64_t> above_rows;
  above_rows.reserve(acts.size(1));
  for (size_t t = 1; t < length.size(); ++t) {
    for (int64_t i = 0; i < length[t]; ++i) above_rows.push_back(neighbour_start[t] + i);
  }
  if (!above_rows.empty()) {
    const int64_t first = length[0];  // diagonal 0 reads no neighbours
    const int64_t cells_read = static_cast<int64_t>(above_rows.size());
    auto index = at::tensor(above_rows, acts.options().dtype(at::kLong));
    auto d_pre_all = d_x.narrow(1, first, cells_read).reshape({dirs, cells_read * batch, gates});
    for (int64_t tap = 0; tap < 2; ++tap) {
      auto read = states.index_select(1, index + tap).view({dirs, cells_read * batch, width});
      d_w_state.select(1, tap).copy_(at::bmm(read.transpose(1, 2), d_pre_all));
    }
  }
  return {d_x, d_w_state, d_w_att, d_b_att};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &diagonal_lstm_forward, "diagonal LSTM forward (fused cells)");
  m.def("backward", &diagonal_lstm_backward, "diagonal LSTM backward (fused cells)");
}
