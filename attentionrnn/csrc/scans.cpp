// The fused CPU kernels of the diagonal LSTM: the whole scan, forward and backward through time.
//
// The recurrence is independent across directions and batch elements, so each work item (one
// direction, a fixed group of batch elements) is scanned by one thread from the first diagonal to
// the last, with no barrier between steps. A cell's gate pre-activations (input-to-state product
// from the encoded map, read in raster order through `index`, plus the two state-to-state taps)
// are small matrix products with their accumulators in SIMD registers, over a few batch elements
// at once (products.h); the non-linearities, the cell and hidden state (cells.h), the predicted
// attention value and the optional readout follow in the same pass. The backward pass walks the
// diagonals in reverse; each cell pulls its gradients from the two cells that read it and
// accumulates the weight gradients of its work item. Both passes prefetch the rows the next cell
// reads from the map-sized buffers. The layout is described in layout.h.

#include "scans.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <type_traits>
#include <vector>

#include "cells.h"
#include "layout.h"
#include "pair_products.h"
#include "products.h"
#include "simd.h"

namespace attentionrnn {
namespace {

// How many cells ahead the scans prefetch the rows they will read (measured: 1 as good as 2 or 3).
constexpr int64_t kPrefetchAhead = 1;

template <typename T, int NV>
void forward_scan(const Scan<T>& sc, const ScanArgs& layout, T* out, T* states, T* cells,
                  T* acts) {
  const auto &length = layout.length, &packed_start = layout.packed_start;
  const auto &padded_start = layout.padded_start, &neighbour_start = layout.neighbour_start;
  // A compile-time width where the gates fill whole vectors, so the short loops unroll.
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : sc.hidden;
  const int64_t G = 4 * h, S = sc.width, Cin = sc.in_ch;
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pre(kBatchGroup * G);  // a cell's gate pre-activations, kept in L1
    alignas(64) T att[kBatchGroup] = {};   // the rows' attention values
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
    // The pair products' input rows rounded to bf16 (pair_products.h).
    std::vector<uint16_t> narrow(sc.w_pairs ? kRowBlock * sc.pair_row : 0);
#endif
    sc.for_items(begin, end, [&](int64_t, int64_t d, int64_t b0, int64_t b1) {
      const T* w = sc.w_cat + d * sc.inputs * G;
      const T* w_above = w + sc.tap_row(kTapAbove) * G;
      const T* w_left = w + sc.tap_row(kTapLeft) * G;
      const T* b_in = sc.b_in + d * G;
      for (size_t t = 0; t < length.size(); ++t) {
        for (int64_t i = 0; i < length[t]; ++i) {
          const int64_t p = packed_start[t] + i, g = padded_start[t] + i;
          const int64_t a = t > 0 ? neighbour_start[t] + i : 0;  // the cell above; left is a+1
          if (p + kPrefetchAhead < sc.cells) {  // the next cell's rows of the encoded map
            const int64_t next = p + kPrefetchAhead;
            prefetch_bytes(sc.e + sc.raster_row(d, next, b0) * Cin, (b1 - b0) * Cin * sizeof(T));
          }
          // The gate pre-activations of the group's rows, in blocks of rows, then the cells.
          auto products = [&](auto rows, int64_t b) {
            constexpr int R = decltype(rows)::value;
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
            if constexpr (std::is_same_v<T, float> && NV > 0) {
              if (sc.w_pairs) {
                gate_pair_products<R, NV>(
                    pre.data() + (b - b0) * G, b_in, sc.w_pairs + d * (sc.main_padded / 2) * G,
                    sc.e + sc.raster_row(d, p, b) * Cin, Cin,
                    t > 0 ? states + sc.state_row(d, a, b) : nullptr,
                    t > 0 ? states + sc.state_row(d, a + 1, b) : nullptr, w_above + h * G,
                    w_left + h * G, h, S, G, narrow.data(), sc.pair_row);
                return;
              }
            }
#endif
            gate_products<T, NV, R>(
                pre.data() + (b - b0) * G, b_in, w, sc.e + sc.raster_row(d, p, b) * Cin, Cin,
                w_above, t > 0 ? states + sc.state_row(d, a, b) : nullptr,
                w_left, t > 0 ? states + sc.state_row(d, a + 1, b) : nullptr, S, G);
          };
          int64_t b = b0;
          if constexpr (NV > 0) {
            constexpr int R = block_rows(NV);
            for (; b + R <= b1; b += R) {
              products(std::integral_constant<int, R>(), b);
            }
          }
          for (; b < b1; ++b) products(std::integral_constant<int, 1>(), b);
          for (b = b0; b < b1; ++b) {
            cell_forward<T, NV>(pre.data() + (b - b0) * G, acts + sc.act_row(d, p, b),
                                t > 0 ? cells + sc.cell_row(d, a + 1, b) : nullptr,
                                cells + sc.cell_row(d, g, b), states + sc.state_row(d, g, b), h);
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
                   const T* states, const T* cells, const T* acts, T* d_e_dirs, T* d_w, T* d_b,
                   T* d_w_att, T* d_b_att, T* d_w_read) {
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
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(h), ds(h), dp(kBatchGroup * G);
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
            prefetch_bytes<2>(acts + sc.act_row(d, p + k, b0), bytes * G);
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
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t r = b - b0;
            // Missing readers contribute zeros; nothing is zeroed lane by lane.
            const T* from_below = has_below ? back_next + (below * kBatchGroup + r) * Kb : nullptr;
            const T* from_right = has_right ? back_next + (right * kBatchGroup + r) * Kb : nullptr;
            add_rows(ds.data(), from_below ? from_below + sc.tap_column(kTapAbove) : zeros.data(),
                     from_right ? from_right + sc.tap_column(kTapLeft) : zeros.data(), h);
            const T* dc_in =
                has_right ? to_left_next + (right * kBatchGroup + r) * h : zeros.data();
            const T* act = acts + sc.act_row(d, p, b);
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

// Calls f with the compile-time number of SIMD vectors per gate row for the common widths.
template <typename T, typename F>
void dispatch_width(int64_t gates, const F& f) {
  constexpr int64_t L = Simd<T>::lanes;
  if (gates % L == 0) {
    switch (gates / L) {
      case 1: return f(std::integral_constant<int, 1>());
      case 2: return f(std::integral_constant<int, 2>());
      case 4: return f(std::integral_constant<int, 4>());
      case 8: return f(std::integral_constant<int, 8>());
      default: break;
    }
  }
  f(std::integral_constant<int, 0>());
}

using Named = std::initializer_list<std::pair<const at::Tensor*, const char*>>;

// A tensor of the arguments: set (where required), on the CPU and contiguous.
void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "ScanArgs.", name, " is not set");
  TORCH_CHECK(t.device().is_cpu(), "the fused scan kernels run on the CPU (ScanArgs.", name, ")");
  TORCH_CHECK(t.is_contiguous(), "the fused scan kernels take contiguous tensors (ScanArgs.",
              name, ")");
}

// An optional tensor of the arguments: null where absent.
const at::Tensor* optional_tensor(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_tensor(*t, name);
  return &*t;
}

// The schedule's fields: one entry per diagonal in each list.
void check_schedule(const ScanArgs& a) {
  const size_t steps = a.length.size();
  TORCH_CHECK(steps > 0 && a.height > 0 && a.width > 0 &&
                  static_cast<int64_t>(steps) == a.height + a.width - 1,
              "ScanArgs: the schedule (height, width, length) is not set or inconsistent");
  TORCH_CHECK(a.first_row.size() == steps && a.packed_start.size() == steps &&
                  a.padded_start.size() == steps && a.neighbour_start.size() == steps,
              "ScanArgs: first_row, length, packed_start, padded_start and neighbour_start must "
              "have one entry per diagonal");
  TORCH_CHECK(a.padded_size > 0, "ScanArgs.padded_size is not set");
}

// The shapes and weights of one scan, from the arguments (checked by the caller).
template <typename T>
Scan<T> make_scan(const ScanArgs& a, const at::Tensor* w_att, const at::Tensor* w_read) {
  Scan<T> sc;
  sc.dirs = a.w_cat.size(0);
  sc.cells = a.index.size(1);
  sc.batch = a.e_rows.size(1);
  sc.in_ch = a.e_rows.size(2);
  sc.gates = a.w_cat.size(2);
  sc.hidden = sc.gates / 4;
  sc.feedback = w_att != nullptr;
  sc.readout = w_read != nullptr;
  sc.width = sc.hidden + (sc.feedback ? 1 : 0);
  sc.inputs = a.w_cat.size(1);
  sc.main_padded = a.w_cat_t.size(2);
  sc.padded = a.padded_size;
  sc.e = a.e_rows.data_ptr<T>();
  sc.index = a.index.data_ptr<int64_t>();
  sc.w_cat = a.w_cat.data_ptr<T>();
  sc.w_cat_t = a.w_cat_t.data_ptr<T>();
  sc.b_in = a.b_in.defined() ? a.b_in.data_ptr<T>() : nullptr;  // the backward pass needs none
  sc.w_att = sc.feedback ? w_att->data_ptr<T>() : nullptr;
  sc.b_att = sc.feedback && a.b_att.has_value() ? a.b_att->data_ptr<T>() : nullptr;
  sc.w_read = sc.readout ? w_read->data_ptr<T>() : nullptr;
  // The bf16 pair products: w_pairs for the forward pass, w_pairs_t for the backward pass.
  const at::Tensor* w_pairs = optional_tensor(a.w_pairs, "w_pairs");
  const at::Tensor* w_pairs_t = optional_tensor(a.w_pairs_t, "w_pairs_t");
  if (w_pairs || w_pairs_t) {
    TORCH_CHECK((kPairProducts && std::is_same_v<T, float> && sc.in_ch % 16 == 0 &&
                 sc.hidden % 16 == 0),
                "ScanArgs.w_pairs/w_pairs_t: the bf16 pair products take float32 scans whose "
                "input and hidden widths are multiples of 16, on a CPU with AVX-512 BF16 "
                "(module.pair_products)");
    sc.pair_row = (sc.main_padded + 31) / 32 * 32;
  }
  if (w_pairs) {
    TORCH_CHECK(w_pairs->scalar_type() == at::kInt && w_pairs->dim() == 3 &&
                    w_pairs->size(0) == sc.dirs && w_pairs->size(1) == sc.main_padded / 2 &&
                    w_pairs->size(2) == sc.gates,
                "ScanArgs.w_pairs must be int32 (D, (Cin + 2h) / 2, 4h)");
    sc.w_pairs = reinterpret_cast<const uint32_t*>(w_pairs->data_ptr<int32_t>());
  }
  if (w_pairs_t) {
    TORCH_CHECK(w_pairs_t->scalar_type() == at::kInt && w_pairs_t->dim() == 3 &&
                    w_pairs_t->size(0) == sc.dirs && w_pairs_t->size(1) == sc.gates / 2 &&
                    w_pairs_t->size(2) == a.w_cat_t.size(2),
                "ScanArgs.w_pairs_t must be int32 (D, 2h, Mp)");
    sc.w_pairs_t = reinterpret_cast<const uint32_t*>(w_pairs_t->data_ptr<int32_t>());
  }
  TORCH_CHECK(sc.gates % 4 == 0 && a.w_cat.size(1) == sc.in_ch + 2 * sc.width,
              "ScanArgs.w_cat must be (D, Cin + 2S, 4h)");
  const int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
  TORCH_CHECK(a.w_cat_t.size(1) == sc.gates && sc.main_padded % lanes == 0 &&
                  sc.main_padded >= sc.in_ch + 2 * sc.hidden,
              "ScanArgs.w_cat_t must be (D, 4h, Cin + 2h rounded up to whole SIMD vectors)");
  return sc;
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
  auto acts = at::empty({dirs, cells_total, batch, gates}, opts);
  AT_DISPATCH_FLOATING_TYPES(args.e_rows.scalar_type(), "diagonal_lstm_forward", [&] {
    const auto sc = make_scan<scalar_t>(args, w_att, w_read);
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      forward_scan<scalar_t, decltype(nv)::value>(
          sc, args, out.data_ptr<scalar_t>(), states.data_ptr<scalar_t>(),
          cells.data_ptr<scalar_t>(), acts.data_ptr<scalar_t>());
    });
  });
  return {{"out", out}, {"states", states}, {"cells", cells}, {"acts", acts}};
}

std::map<std::string, at::Tensor> scan_backward(const ScanArgs& args) {
  TORCH_CHECK(args.grad_out.defined(), "ScanArgs.grad_out is not set");
  const at::Tensor grad_out = args.grad_out.contiguous();
  for (const auto& [t, name] :
       Named{{&grad_out, "grad_out"}, {&args.e_rows, "e_rows"}, {&args.index, "index"},
        {&args.w_cat, "w_cat"}, {&args.w_cat_t, "w_cat_t"}, {&args.states, "states"},
        {&args.cells, "cells"}, {&args.acts, "acts"}}) {
    check_tensor(*t, name);
  }
  check_schedule(args);
  const at::Tensor* w_att = optional_tensor(args.w_att, "w_att");
  const at::Tensor* w_read = optional_tensor(args.w_read, "w_read");
  const auto& acts = args.acts;
  const int64_t dirs = acts.size(0), cells_total = acts.size(1), batch = acts.size(2);
  const int64_t gates = acts.size(3), hidden = gates / 4;
  const int64_t in_ch = args.e_rows.size(2), inputs = args.w_cat.size(1);
  TORCH_CHECK(args.states.size(1) == args.padded_size, "ScanArgs.states must be padded_size rows");
  const auto opts = acts.options();
  const int64_t groups = (batch + kBatchGroup - 1) / kBatchGroup, items = dirs * groups;
  auto d_e_dirs = at::empty({dirs, cells_total, batch, in_ch}, opts);
  auto d_w = at::zeros({items, inputs, gates}, opts);
  auto d_b = at::zeros({items, gates}, opts);
  auto d_w_att = at::zeros({items, hidden}, opts);
  auto d_b_att = at::zeros({items}, opts);
  auto d_w_read = at::zeros({items, hidden}, opts);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "diagonal_lstm_backward", [&] {
    const auto sc = make_scan<scalar_t>(args, w_att, w_read);
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      backward_scan<scalar_t, decltype(nv)::value>(
          sc, args, grad_out.data_ptr<scalar_t>(), args.states.data_ptr<scalar_t>(),
          args.cells.data_ptr<scalar_t>(), acts.data_ptr<scalar_t>(),
          d_e_dirs.data_ptr<scalar_t>(), d_w.data_ptr<scalar_t>(), d_b.data_ptr<scalar_t>(),
          d_w_att.data_ptr<scalar_t>(), d_b_att.data_ptr<scalar_t>(),
          d_w_read.data_ptr<scalar_t>());
    });
  });
  // Sum the work items' slots per direction (items of direction d are d*groups .. +groups).
  auto per_dir = [&](const at::Tensor& t) { return t.view({dirs, groups, -1}).sum(1); };
  // The encoded map's gradient, summed over directions into (B, Cin, H, W), the layout the ReLU
  // and convolution before the scan read fastest.
  auto d_e = at::empty({batch, in_ch, args.height, args.width}, opts);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "diagonal_lstm_sum_directions", [&] {
    sum_directions_nchw(d_e_dirs.data_ptr<scalar_t>(), d_e.data_ptr<scalar_t>(), dirs,
                        cells_total, batch, in_ch);
  });
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
