// The fused CPU kernel of the diagonal LSTM's backward pass through time, and the sum of the
// directions' gradients w.r.t. the encoded map.
//
// As in the forward pass (scan_forward.cpp), each work item (one direction, a fixed group of batch
// elements) is scanned by one thread, here from the last diagonal to the first; each cell pulls
// its gradients from the two cells that read it and accumulates the weight gradients of its work
// item. Unless the forward pass kept them (ScanArgs.keep_acts), each cell's gate activations are
// recomputed here, with the forward pass's own products (group_gate_products) and activation code,
// from the encoded map and the passed-on states both passes keep. The scan prefetches the rows the
// next cells read from the map-sized buffers. The layout and the scan's parameters are described
// in scan_params.h.

#include "scans.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cells.h"
#include "pair_products.h"
#include "products.h"
#include "scan_dispatch.h"
#include "scan_params.h"
#include "simd.h"

namespace attentionrnn {
namespace {

// Per work item it accumulates the weight gradients into its own slot of `d_w` (items, K, G),
// `d_b` (items, G), `d_w_att`/`d_w_read` (items, h) and `d_b_att` (items); the caller sums the
// slots. d_e_dirs (D, H*W, B, Cin) receives each direction's gradient w.r.t. the encoded map.
//
// Gradients flow from diagonal t+1 back to diagonal t. Rather than adding them into map-sized
// buffers, each cell *pulls* them from its two readers, whose results for diagonal t+1 are still
// in a small per-item buffer: the cell below read it as "above", the cell to the right as "left"
// (and also its cell state).
template <typename T, int NV>
void backward_scan(const Scan<T>& sc, const ScanArgs& layout, const T* grad_out,
                   const T* states, const T* cells, KeepActs keep, const void* acts_kept,
                   T* d_e_dirs, T* d_w, T* d_b, T* d_w_att, T* d_b_att, T* d_w_read) {
  const auto &length = layout.length, &packed_start = layout.packed_start;
  const auto &padded_start = layout.padded_start, &neighbour_start = layout.neighbour_start;
  // A compile-time width where the gates fill whole vectors, so the short loops unroll.
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : sc.hidden;
  const int64_t G = 4 * h, S = sc.width, Cin = sc.in_ch;
  constexpr int64_t L = Simd<T>::lanes;
  const int64_t K = sc.inputs, Mp = sc.main_padded;
  // A row of `back`: [to e (Cin), to the cell above (h), to the cell to the left (h), pad to Mp,
  // to the above cell's attention value, to the left cell's attention value, pad].
  const int64_t Kb = Mp + (sc.feedback ? L : 0);
  const int64_t steps = static_cast<int64_t>(length.size());
  const int64_t longest = *std::max_element(length.begin(), length.end());
  // (past the last diagonal there are no cells: any row will do)
  auto first_row = [&](int64_t t) { return t < steps ? layout.first_row[t] : int64_t(0); };
  const T* acts = keep == KeepActs::kFloat ? static_cast<const T*>(acts_kept) : nullptr;
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(h), ds(h), dp(kBatchGroup * G);
    // A cell's gate activations where the forward pass did not keep them in float: widened from
    // bf16, or recomputed from their pre-activations (pre) as the forward pass computed them.
    std::vector<T> act_rows(keep == KeepActs::kFloat ? 0 : kBatchGroup * G);
    std::vector<T> pre(keep == KeepActs::kNone ? kBatchGroup * G : 0);
    std::vector<uint16_t> narrow_gates(keep == KeepActs::kNone && sc.w_pairs
                                           ? kRowBlock * sc.pair_row : 0);
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
    // The pair products' operands (pair_products.h).
    std::vector<uint16_t> narrow(sc.w_pairs_t ? kRowBlock * G : 0);
    std::vector<__m512i> g_pairs(sc.w_pairs_t ? kBatchGroup / 2 * (G / 16) : 0);
    std::vector<uint32_t> x_pairs(sc.w_pairs_t ? kBatchGroup / 2 * K : 0);
#endif
    // The item's bias and attention/readout weight gradients, summed here and stored once: the
    // items' slots of d_b_att share a cache line, and per-row writes to it from two cores would
    // pass that line back and forth.
    std::vector<T> db(G), dwa(h), dwr(h);
    // Per cell of a diagonal and batch element: what its gates send back ([to e, to the cell
    // above, to the cell to the left], Kb) and the gradient w.r.t. the left cell's cell state.
    std::vector<T> back[2], to_left[2];
    for (int k = 0; k < 2; ++k) {
      back[k].resize(longest * kBatchGroup * Kb);
      to_left[k].resize(longest * kBatchGroup * h);
    }
    sc.for_items(begin, end, [&](int64_t item, int64_t d, int64_t b0, int64_t b1) {
      const T* w_t = sc.w_cat_t + d * G * Mp;
      // The attention rows of the taps (each tap's row after its h hidden-state rows).
      const T* w_att_above = sc.w_cat + (d * K + sc.tap_row(kTapAbove) + h) * G;
      const T* w_att_left = sc.w_cat + (d * K + sc.tap_row(kTapLeft) + h) * G;
      T* dw = d_w + item * K * G;
      std::fill(db.begin(), db.end(), T(0));
      std::fill(dwa.begin(), dwa.end(), T(0));
      std::fill(dwr.begin(), dwr.end(), T(0));
      T dba = T(0);
      const int64_t rows = b1 - b0;
      for (int64_t t = steps - 1; t >= 0; --t) {
        T* back_t = back[t % 2].data();
        T* to_left_t = to_left[t % 2].data();
        const T* back_next = back[(t + 1) % 2].data();
        const T* to_left_next = to_left[(t + 1) % 2].data();
        const int64_t n_next = t + 1 < steps ? length[t + 1] : 0;
        const int64_t lo = first_row(t), lo_next = first_row(t + 1);
        for (int64_t i = 0; i < length[t]; ++i) {
          const int64_t p = packed_start[t] + i, g = padded_start[t] + i;
          const int64_t a = t > 0 ? neighbour_start[t] + i : 0;
          if (i + kPrefetchAhead < length[t]) {
            // What a later cell of this diagonal reads, written by the forward pass long ago.
            const int64_t k = kPrefetchAhead, bytes = (b1 - b0) * sizeof(T);
            prefetch_bytes<2>(sc.e + sc.raster_row(d, p + k, b0) * Cin, bytes * Cin);
            if (acts) prefetch_bytes<2>(acts + sc.act_row(d, p + k, b0), bytes * G);
            if (keep == KeepActs::kBf16) {
              prefetch_bytes<2>(static_cast<const uint16_t*>(acts_kept) + sc.act_row(d, p + k, b0),
                                (b1 - b0) * G * sizeof(uint16_t));
            }
            prefetch_bytes<2>(states + sc.state_row(d, g + k, b0), bytes * S);
            prefetch_bytes<2>(cells + sc.cell_row(d, g + k, b0), bytes * h);
            if (t > 0) {  // its left neighbour (the one above is this cell's left, read now)
              prefetch_bytes<2>(states + sc.state_row(d, a + 1 + k, b0), bytes * S);
              prefetch_bytes<2>(cells + sc.cell_row(d, a + 1 + k, b0), bytes * h);
            }
          }
          // This cell's readers in diagonal t+1: the cell below and the cell to the right.
          const int64_t below = lo + i + 1 - lo_next, right = lo + i - lo_next;
          const bool has_below = below >= 0 && below < n_next;
          const bool has_right = right >= 0 && right < n_next;
          // The gate activations of the group's rows (row r at act_group + r * G).
          const T* act_group = act_rows.data();
          if (keep == KeepActs::kFloat) {
            act_group = acts + sc.act_row(d, p, b0);
          } else if (keep == KeepActs::kNone) {
            group_gate_products<T, NV>(sc, d, p, t, a, b0, b1, states, pre.data(),
                                       narrow_gates.data());
            for (int64_t r = 0; r < rows; ++r) {
              cell_activations<T, NV>(pre.data() + r * G, act_rows.data() + r * G, h);
            }
          } else if constexpr (std::is_same_v<T, float>) {
            widen_bf16(static_cast<const uint16_t*>(acts_kept) + sc.act_row(d, p, b0),
                       act_rows.data(), rows * G);
          }
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t r = b - b0;
            // Missing readers contribute zeros; nothing is zeroed lane by lane.
            const T* from_below = has_below ? back_next + (below * kBatchGroup + r) * Kb : nullptr;
            const T* from_right = has_right ? back_next + (right * kBatchGroup + r) * Kb : nullptr;
            add_rows(ds.data(), from_below ? from_below + sc.tap_column(kTapAbove) : zeros.data(),
                     from_right ? from_right + sc.tap_column(kTapLeft) : zeros.data(), h);
            const T* dc_in =
                has_right ? to_left_next + (right * kBatchGroup + r) * h : zeros.data();
            const T* act = act_group + r * G;
            const T* st = states + sc.state_row(d, g, b);
            const int64_t o = d * sc.cells * sc.batch + sc.raster_row(d, p, b);
            // The output's gradient as gs * gv, the attention estimate's as dz * wa.
            T gs = T(1), dz = T(0);
            const T* gv = grad_out + o * h;
            const T* wa = zeros.data();
            if (sc.readout) {
              gs = grad_out[o];
              gv = sc.w_read + d * h;
              add_scaled(dwr.data(), gs, st, h);
            }
            if (sc.feedback) {
              const T att = st[h];
              const T d_att = (from_below ? from_below[Mp + kTapAbove] : T(0)) +
                              (from_right ? from_right[Mp + kTapLeft] : T(0));
              dz = d_att * att * (T(1) - att);
              wa = sc.w_att + d * h;
              add_scaled(dwa.data(), dz, st, h);
              dba += dz;
            }
            T* dpb = dp.data() + r * G;
            const T* cl = t > 0 ? cells + sc.cell_row(d, a + 1, b) : nullptr;
            cell_backward<T, NV>(act, cells + sc.cell_row(d, g, b), cl, ds.data(), gs, gv, dz, wa,
                                 dc_in, to_left_t + (i * kBatchGroup + r) * h, dpb, h);
            add_scaled(db.data(), T(1), dpb, G);
          }
          // What the gates' gradients send back, to the encoded map and to the two neighbours.
          T* back_i = back_t + i * kBatchGroup * Kb;
          int64_t r = 0;
          constexpr int R = block_rows(4);  // the transposed product's blocks of 4 vectors
          auto transposed = [&](auto block) {
            constexpr int Rb = decltype(block)::value;
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
            if constexpr (std::is_same_v<T, float>) {
              if (sc.w_pairs_t) {
                transposed_pair_product<Rb>(back_i + r * Kb, Kb, sc.w_pairs_t + d * (G / 2) * Mp,
                                            dp.data() + r * G, G, Mp, narrow.data());
                return;
              }
            }
#endif
            transposed_product<T, Rb>(back_i + r * Kb, Kb, w_t, dp.data() + r * G, G, Mp);
          };
          for (; r + R <= rows; r += R) transposed(std::integral_constant<int, R>());
          for (; r < rows; ++r) transposed(std::integral_constant<int, 1>());
          for (int64_t b = b0; b < b1; ++b) {
            T* bk = back_i + (b - b0) * Kb;
            if (sc.feedback && t > 0) {
              const T* dpb = dp.data() + (b - b0) * G;
              bk[Mp + kTapAbove] = dot(dpb, w_att_above, G);
              bk[Mp + kTapLeft] = dot(dpb, w_att_left, G);
            }
            const int64_t o = d * sc.cells * sc.batch + sc.raster_row(d, p, b);
            std::memcpy(d_e_dirs + o * Cin, bk, Cin * sizeof(T));
          }
          // Weight gradients of this cell's batch group: inputs (rows) times gate gradients.
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
          if constexpr (std::is_same_v<T, float> && NV > 0) {
            if (sc.w_pairs_t) {
              const T* above = t > 0 ? states + sc.state_row(d, a, b0) : nullptr;
              pair_rows<NV>(g_pairs.data(), x_pairs.data(), dp.data(), rows,
                            sc.e + sc.raster_row(d, p, b0) * Cin, Cin, above,
                            t > 0 ? states + sc.state_row(d, a + 1, b0) : nullptr, h, S, K);
              accumulate_outer_pairs<NV>(dw, x_pairs.data(), K, above ? K : Cin, g_pairs.data(),
                                         (rows + 1) / 2, G);
              continue;
            }
          }
#endif
          accumulate_outer<T, NV>(dw, sc.e + sc.raster_row(d, p, b0) * Cin, Cin, Cin,
                                  dp.data(), rows, G);
          if (t > 0) {
            accumulate_outer<T, NV>(dw + sc.tap_row(kTapAbove) * G,
                                    states + sc.state_row(d, a, b0), S, S, dp.data(), rows, G);
            accumulate_outer<T, NV>(dw + sc.tap_row(kTapLeft) * G,
                                    states + sc.state_row(d, a + 1, b0), S, S, dp.data(), rows, G);
          }
        }
      }
      std::copy(db.begin(), db.end(), d_b + item * G);
      std::copy(dwa.begin(), dwa.end(), d_w_att + item * h);
      std::copy(dwr.begin(), dwr.end(), d_w_read + item * h);
      d_b_att[item] = dba;
    });
  });
}

// out (B, C, P) = sum over d of in (D, P, B, C): a transposing sum, in tiles of positions so that
// both the reads (rows of C) and the writes (runs of positions) are contiguous.
template <typename T>
void sum_directions_nchw(const T* in, T* out, int64_t dirs, int64_t positions, int64_t batch,
                         int64_t channels) {
  constexpr int64_t kTile = 16;
  const int64_t tiles = (positions + kTile - 1) / kTile;
  at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(kTile * channels);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles, p0 = (job % tiles) * kTile;
      const int64_t np = std::min(kTile, positions - p0);
      for (int64_t q = 0; q < np; ++q) {
        T* row = tile.data() + q * channels;
        const T* src = in + ((p0 + q) * batch + b) * channels;
        for (int64_t c = 0; c < channels; ++c) row[c] = src[c];
        for (int64_t d = 1; d < dirs; ++d) {
          const T* more = src + d * positions * batch * channels;
          for (int64_t c = 0; c < channels; ++c) row[c] += more[c];
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        T* dst = out + (b * channels + c) * positions + p0;
        for (int64_t q = 0; q < np; ++q) dst[q] = tile[q * channels + c];
      }
    }
  });
}

}  // namespace

std::map<std::string, at::Tensor> scan_backward(const ScanArgs& args) {
  TORCH_CHECK(args.grad_out.defined(), "ScanArgs.grad_out is not set");
  const at::Tensor grad_out = args.grad_out.contiguous();
  for (const auto& [t, name] :
       Named{{&grad_out, "grad_out"}, {&args.e_rows, "e_rows"}, {&args.index, "index"},
        {&args.w_cat, "w_cat"}, {&args.w_cat_t, "w_cat_t"}, {&args.states, "states"},
        {&args.cells, "cells"}}) {
    check_tensor(*t, name);
  }
  // The gate activations as the forward pass kept them, or (absent) recomputed here.
  KeepActs keep = KeepActs::kNone;
  if (args.acts.defined()) {
    check_tensor(args.acts, "acts");
    keep = args.acts.scalar_type() == at::kBFloat16 ? KeepActs::kBf16 : KeepActs::kFloat;
    TORCH_CHECK(keep == KeepActs::kFloat || args.e_rows.scalar_type() == at::kFloat,
                "ScanArgs.acts in bf16 takes float32 scans");
    TORCH_CHECK(keep == KeepActs::kBf16 || args.acts.scalar_type() == args.e_rows.scalar_type(),
                "ScanArgs.acts must be in the scan's dtype or bf16");
    TORCH_CHECK(args.acts.dim() == 4 && args.acts.size(0) == args.w_cat.size(0) &&
                    args.acts.size(1) == args.index.size(1) &&
                    args.acts.size(2) == args.e_rows.size(1) &&
                    args.acts.size(3) == args.w_cat.size(2),
                "ScanArgs.acts must be (D, H*W, B, 4h)");
  } else {
    check_tensor(args.b_in, "b_in");  // to recompute the gate activations
  }
  check_schedule(args);
  const at::Tensor* w_att = optional_tensor(args.w_att, "w_att");
  const at::Tensor* w_read = optional_tensor(args.w_read, "w_read");
  const int64_t dirs = args.w_cat.size(0), cells_total = args.index.size(1);
  const int64_t batch = args.e_rows.size(1), gates = args.w_cat.size(2), hidden = gates / 4;
  const int64_t in_ch = args.e_rows.size(2), inputs = args.w_cat.size(1);
  TORCH_CHECK(args.states.size(1) == args.padded_size, "ScanArgs.states must be padded_size rows");
  const auto opts = args.e_rows.options();
  const int64_t groups = (batch + kBatchGroup - 1) / kBatchGroup, items = dirs * groups;
  auto d_e_dirs = at::empty({dirs, cells_total, batch, in_ch}, opts);
  auto d_w = at::zeros({items, inputs, gates}, opts);
  auto d_b = at::zeros({items, gates}, opts);
  auto d_w_att = at::zeros({items, hidden}, opts);
  auto d_b_att = at::zeros({items}, opts);
  auto d_w_read = at::zeros({items, hidden}, opts);
  AT_DISPATCH_FLOATING_TYPES(args.e_rows.scalar_type(), "diagonal_lstm_backward", [&] {
    const auto sc = make_scan<scalar_t>(args, w_att, w_read);
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      backward_scan<scalar_t, decltype(nv)::value>(
          sc, args, grad_out.data_ptr<scalar_t>(), args.states.data_ptr<scalar_t>(),
          args.cells.data_ptr<scalar_t>(), keep,
          args.acts.defined() ? args.acts.data_ptr() : nullptr,
          d_e_dirs.data_ptr<scalar_t>(), d_w.data_ptr<scalar_t>(), d_b.data_ptr<scalar_t>(),
          d_w_att.data_ptr<scalar_t>(), d_b_att.data_ptr<scalar_t>(),
          d_w_read.data_ptr<scalar_t>());
    });
  });
  // Sum the work items' slots per direction (items of direction d are d*groups .. +groups).
  auto per_dir = [&](const at::Tensor& t) { return t.view({dirs, groups, -1}).sum(1); };
  // The encoded map's gradient, summed over directions into (B, Cin, H, W), the layout the ReLU
  // and convolution before the scan read fastest, or (d_e_rows) into e_rows' layout.
  at::Tensor d_e;
  if (args.d_e_rows) {
    d_e = d_e_dirs.sum(0);
  } else {
    d_e = at::empty({batch, in_ch, args.height, args.width}, opts);
    AT_DISPATCH_FLOATING_TYPES(args.e_rows.scalar_type(), "diagonal_lstm_sum_directions", [&] {
      sum_directions_nchw(d_e_dirs.data_ptr<scalar_t>(), d_e.data_ptr<scalar_t>(), dirs,
                          cells_total, batch, in_ch);
    });
  }
  std::map<std::string, at::Tensor> grads = {
      {"d_e", d_e},
      {"d_w_cat", d_w.view({dirs, groups, inputs, gates}).sum(1)},
      {"d_b_in", per_dir(d_b)},
  };
  if (w_att) {
    grads["d_w_att"] = per_dir(d_w_att);
    grads["d_b_att"] = d_b_att.view({dirs, groups}).sum(1);
  }
  if (w_read) grads["d_w_read"] = per_dir(d_w_read);
  return grads;
}

}  // namespace attentionrnn
