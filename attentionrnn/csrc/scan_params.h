// The parameters of one scan (Scan<T>) and the layout the fused scan kernels read and write,
// restated from its one definition in attentionrnn/layers/diagonal.py (which builds the schedule
// and packs the weights these kernels receive; keep the two in step):
//
// - cells packed by diagonal, diagonal t holding `length[t]` cells from row `first_row[t]`, each
//   cell a row of the whole batch; the state buffers give every diagonal one zero row before and
//   after it, so the cells above / to the left of diagonal t's cells are the row ranges starting
//   at `neighbour_start[t]` / one row later in diagonal t-1 (DiagonalSchedule);
// - gates along the 4h axis in the order of GATE_ORDER (input, forget, output: sigmoids; then the
//   cell candidate: tanh);
// - what a cell passes on: S = h (+1 with feedback) channels, its hidden state then its predicted
//   attention value (state_slices);
// - the weights of a direction as one matrix w_cat (K = Cin + 2S rows, 4h columns): the
//   input-to-state rows, then the tap reading the cell above, then the tap reading the cell to the
//   left (each: h hidden-state rows, then the attention row); w_cat_t the transpose of its input
//   and hidden-state rows, zero-padded to whole SIMD vectors (kernel_weights).

#pragma once

#include <algorithm>
#include <cstdint>

namespace attentionrnn {

// Offsets of the gates along the 4h axis, in units of h (GATE_ORDER, SIGMOID_GATES).
constexpr int64_t kInputGate = 0, kForgetGate = 1, kOutputGate = 2, kCandidate = 3;
constexpr int64_t kSigmoidGates = 3;  // the gates before kSigmoidGates are sigmoids
static_assert(kInputGate < kSigmoidGates && kForgetGate < kSigmoidGates &&
                  kOutputGate < kSigmoidGates && kCandidate == kSigmoidGates,
              "the sigmoid gates come first, the candidate last");

// Order of the state-to-state taps in w_cat (TAP_ABOVE, TAP_LEFT).
constexpr int64_t kTapAbove = 0, kTapLeft = 1;

// Batch elements per work item: the scan of a (direction, batch group) pair is one task. Fixed,
// not derived from the thread count, so that the order of every floating-point sum, and hence the
// result, does not depend on how many threads run.
constexpr int64_t kBatchGroup = 16;

// The shapes and weights of one scan.
template <typename T>
struct Scan {
  int64_t dirs, cells, batch, in_ch, hidden, gates, width, padded;
  int64_t inputs;         // K = Cin + 2 S: what a cell reads (its input, the cells above and left)
  int64_t main_padded;    // Cin + 2h (the hidden parts of the state taps) in whole SIMD vectors
  bool feedback, readout;
  const T* e;             // (H*W, B, Cin) encoded map, raster order
  const int64_t* index;   // (D, P) raster position of each packed cell
  const T* w_cat;         // (D, K, G): input-to-state rows, then the above tap, then the left tap
  const T* w_cat_t;       // (D, G, main padded): transposed input and hidden-state rows of w_cat
  const T* b_in;          // (D, G)
  const T* w_att;         // (D, h)
  const T* b_att;         // (D)
  const T* w_read;        // (D, h)
  // Under bf16 autocast (pair_products.h), else null: the input and hidden-state rows of w_cat
  // as bf16 pair words (D, main padded / 2, G) and w_cat_t as pair words (D, G/2, main padded);
  // pair_row is main padded rounded up to 32, the length of a cell's bf16 input row.
  const uint32_t* w_pairs = nullptr;
  const uint32_t* w_pairs_t = nullptr;
  int64_t pair_row = 0;

  int64_t groups() const { return (batch + kBatchGroup - 1) / kBatchGroup; }
  // First row of w_cat that tap kTapAbove / kTapLeft occupies (S rows: hidden, then attention).
  int64_t tap_row(int64_t tap) const { return in_ch + tap * width; }
  // First column of w_cat_t (row of its product) for the hidden rows of a tap (h columns).
  int64_t tap_column(int64_t tap) const { return in_ch + tap * hidden; }
  int64_t state_row(int64_t d, int64_t row, int64_t b) const {
    return ((d * padded + row) * batch + b) * width;
  }
  int64_t cell_row(int64_t d, int64_t row, int64_t b) const {
    return ((d * padded + row) * batch + b) * hidden;
  }
  int64_t act_row(int64_t d, int64_t p, int64_t b) const {
    return ((d * cells + p) * batch + b) * gates;
  }
  // raster position of packed cell p in direction d, as a row of the (H*W, B) grid
  int64_t raster_row(int64_t d, int64_t p, int64_t b) const {
    return index[d * cells + p] * batch + b;
  }
  // Runs f(item, d, b0, b1) for the work items [begin, end).
  template <typename F>
  void for_items(int64_t begin, int64_t end, const F& f) const {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t d = item / groups(), b0 = (item % groups()) * kBatchGroup;
      f(item, d, b0, std::min(batch, b0 + kBatchGroup));
    }
  }
};

}  // namespace attentionrnn
