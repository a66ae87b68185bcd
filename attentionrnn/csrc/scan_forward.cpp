// The fused CPU kernel of the diagonal LSTM's forward pass: the whole scan through time.
//
// The recurrence is independent across directions and batch elements, so each work item (one
// direction, a fixed group of batch elements) is scanned by one thread from the first diagonal to
// the last, with no barrier between steps. A cell's gate pre-activations (input-to-state product
// from the encoded map, read in raster order through `index`, plus the two state-to-state taps)
// are small matrix products with their accumulators in SIMD registers, over a few batch elements
// at once (products.h); the non-linearities, the cell and hidden state (cells.h), the predicted
// attention value and the optional readout follow in the same pass. The scan prefetches the rows
// the next cell reads from the encoded map. The layout and the scan's parameters are described
// in scan_params.h; the backward pass is in scan_backward.cpp.

#include "scans.h"

#include <ATen/Parallel.h>

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

template <typename T, int NV>
void forward_scan(const Scan<T>& sc, const ScanArgs& layout, KeepActs keep, T* out, T* states,
                  T* cells, void* acts) {
  const auto &length = layout.length, &packed_start = layout.packed_start;
  const auto &padded_start = layout.padded_start, &neighbour_start = layout.neighbour_start;
  // A compile-time width where the gates fill whole vectors, so the short loops unroll.
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : sc.hidden;
  const int64_t G = 4 * h, Cin = sc.in_ch;
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pre(kBatchGroup * G);  // a cell's gate pre-activations, kept in L1
    // A cell's gate activations where they are not kept in float (keep_acts "bf16" / "none").
    std::vector<T> act_rows(keep == KeepActs::kFloat ? 0 : kBatchGroup * G);
    alignas(64) T att[kBatchGroup] = {};   // the rows' attention values
    // The pair products' input rows rounded to bf16 (pair_products.h).
    std::vector<uint16_t> narrow(sc.w_pairs ? kRowBlock * sc.pair_row : 0);
    sc.for_items(begin, end, [&](int64_t, int64_t d, int64_t b0, int64_t b1) {
      for (size_t t = 0; t < length.size(); ++t) {
        for (int64_t i = 0; i < length[t]; ++i) {
          const int64_t p = packed_start[t] + i, g = padded_start[t] + i;
          const int64_t a = t > 0 ? neighbour_start[t] + i : 0;  // the cell above; left is a+1
          if (p + kPrefetchAhead < sc.cells) {  // the next cell's rows of the encoded map
            const int64_t next = p + kPrefetchAhead;
            prefetch_bytes(sc.e + sc.raster_row(d, next, b0) * Cin, (b1 - b0) * Cin * sizeof(T));
          }
          // The gate pre-activations of the group's rows, then the cells.
          group_gate_products<T, NV>(sc, d, p, t, a, b0, b1, states, pre.data(), narrow.data());
          for (int64_t b = b0; b < b1; ++b) {
            const T* pb = pre.data() + (b - b0) * G;
            const T* cl = t > 0 ? cells + sc.cell_row(d, a + 1, b) : nullptr;
            T* c = cells + sc.cell_row(d, g, b);
            T* st = states + sc.state_row(d, g, b);
            if (keep == KeepActs::kFloat) {
              cell_forward<T, NV>(pb, static_cast<T*>(acts) + sc.act_row(d, p, b), cl, c, st, h);
            } else {
              cell_forward<T, NV, false>(pb, act_rows.data() + (b - b0) * G, cl, c, st, h);
            }
          }
          if constexpr (std::is_same_v<T, float>) {
            if (keep == KeepActs::kBf16) {  // the group's rows are adjacent in acts
              round_to_bf16(act_rows.data(), static_cast<uint16_t*>(acts) + sc.act_row(d, p, b0),
                            (b1 - b0) * G);
            }
          }
          // The attention channel and the output, for all rows at once: the rows' dot products
          // are independent and the sigmoid loop vectorises across them (per row, its scalar
          // exp and the dot's horizontal sum would form one long dependency chain).
          const int64_t rows = b1 - b0;
          if (sc.feedback) {
            const T* wa = sc.w_att + d * h;
            for (int64_t r = 0; r < rows; ++r) {
              att[r] = sc.b_att[d] + dot(wa, states + sc.state_row(d, g, b0 + r), h);
            }
            for (int64_t r = 0; r < kBatchGroup; ++r) att[r] = sigmoid(att[r]);
            for (int64_t r = 0; r < rows; ++r) states[sc.state_row(d, g, b0 + r) + h] = att[r];
          }
          T* o = out + (d * sc.cells * sc.batch + sc.raster_row(d, p, b0)) * (sc.readout ? 1 : h);
          for (int64_t r = 0; r < rows; ++r) {
            const T* st = states + sc.state_row(d, g, b0 + r);
            if (sc.readout) {
              o[r] = dot(sc.w_read + d * h, st, h);  // the group's rows are adjacent in out
            } else {
              std::memcpy(o + r * h, st, h * sizeof(T));
            }
          }
        }
      }
      streaming_fence();
    });
  });
}

}  // namespace

std::map<std::string, at::Tensor> scan_forward(const ScanArgs& args) {
  for (const auto& [t, name] :
       Named{{&args.e_rows, "e_rows"}, {&args.index, "index"}, {&args.w_cat, "w_cat"},
             {&args.w_cat_t, "w_cat_t"}, {&args.b_in, "b_in"}, {&args.pad_rows, "pad_rows"}}) {
    check_tensor(*t, name);
  }
  check_schedule(args);
  const at::Tensor* w_att = optional_tensor(args.w_att, "w_att");
  const at::Tensor* w_read = optional_tensor(args.w_read, "w_read");
  TORCH_CHECK(!w_att || optional_tensor(args.b_att, "b_att"),
              "ScanArgs.b_att must be set with w_att (feedback)");
  const int64_t dirs = args.w_cat.size(0), cells_total = args.index.size(1);
  const int64_t batch = args.e_rows.size(1), gates = args.w_cat.size(2), hidden = gates / 4;
  const int64_t width = hidden + (w_att ? 1 : 0);
  const auto opts = args.e_rows.options();
  // Only the pad rows around each diagonal must be zero: every other row is written before use.
  auto states = at::empty({dirs, args.padded_size, batch, width}, opts);
  auto cells = at::empty({dirs, args.padded_size, batch, hidden}, opts);
  states.index_fill_(1, args.pad_rows, 0);
  cells.index_fill_(1, args.pad_rows, 0);
  auto out = w_read ? at::empty({dirs, cells_total, batch}, opts)
                    : at::empty({dirs, cells_total, batch, hidden}, opts);
  const KeepActs keep = keep_acts_mode(args.keep_acts);
  TORCH_CHECK(keep != KeepActs::kBf16 || args.e_rows.scalar_type() == at::kFloat,
              "ScanArgs.keep_acts 'bf16' takes float32 scans");
  at::Tensor acts;  // the gate activations, as the forward pass keeps them for backward
  if (keep == KeepActs::kFloat) acts = at::empty({dirs, cells_total, batch, gates}, opts);
  if (keep == KeepActs::kBf16) {
    acts = at::empty({dirs, cells_total, batch, gates}, opts.dtype(at::kBFloat16));
  }
  AT_DISPATCH_FLOATING_TYPES(args.e_rows.scalar_type(), "diagonal_lstm_forward", [&] {
    const auto sc = make_scan<scalar_t>(args, w_att, w_read);
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      forward_scan<scalar_t, decltype(nv)::value>(
          sc, args, keep, out.data_ptr<scalar_t>(), states.data_ptr<scalar_t>(),
          cells.data_ptr<scalar_t>(), acts.defined() ? acts.data_ptr() : nullptr);
    });
  });
  std::map<std::string, at::Tensor> result = {{"out", out}, {"states", states}, {"cells", cells}};
  if (acts.defined()) result["acts"] = acts;
  return result;
}

}  // namespace attentionrnn
