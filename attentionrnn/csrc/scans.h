// The entry points of the fused scan kernels and the parameters they take, by name.
//
// Python (attentionrnn/layers/fused.py) fills a ScanArgs field by field (bound in bindings.cpp)
// and gets the results back as a dict keyed by the names listed below, so that no argument is
// matched by its position. The schedule fields are DiagonalSchedule.kernel_layout and the packed
// weights come from kernel_weights, both in attentionrnn/layers/diagonal.py (see scan_params.h).

#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace attentionrnn {

struct ScanArgs {
  // The encoded map, (H*W, B, Cin) in raster order, and the packing: (D, H*W) int64, the raster
  // position of each packed cell of each direction (packing_index).
  at::Tensor e_rows, index;
  // The packed weights: w_cat (D, Cin + 2S, 4h), w_cat_t (D, 4h, Mp) and the input-to-state bias
  // b_in (D, 4h); the attention estimate w_att (D, h) and b_att (D) (absent without feedback)
  // and the readout w_read (D, h) (absent: the hidden states are the output).
  at::Tensor w_cat, w_cat_t, b_in;
  std::optional<at::Tensor> w_att, b_att, w_read;
  // Optional, for bf16 operands in the matrix products (pair_products.h; only where the module's
  // pair_products is true, for float32 scans with Cin and h multiples of 16): w_cat_t's rows and
  // columns as int32 words of two bf16 values (diagonal.pair_weights), (D, Mp/2, 4h) for the
  // forward pass and (D, 2h, Mp) for the backward pass.
  std::optional<at::Tensor> w_pairs, w_pairs_t;
  // The schedule: the map's size, and per diagonal its first row, its number of cells, its
  // offsets among the packed cells and in the padded buffers, and the padded row of the cell above
  // its first cell; the padded buffers' rows and which of them are zero pad rows.
  int64_t height = 0, width = 0, padded_size = 0;
  std::vector<int64_t> first_row, length, packed_start, padded_start, neighbour_start;
  at::Tensor pad_rows;
  // Forward only: how the gate activations are kept for backward: "float" (the scan's dtype, the
  // default), "bf16" (rounded to bf16; float32 scans) or "none" (the backward pass recomputes
  // them from the encoded map and the passed-on states, with the forward's products).
  std::string keep_acts = "float";
  // Backward only: the gradient w.r.t. the forward's output and what the forward kept. acts is
  // float or bf16 as kept; without acts the backward pass recomputes the gate activations, and
  // then needs b_in and, where the forward pass took them, w_pairs, as the forward pass had them.
  at::Tensor grad_out, states, cells, acts;
  // Backward only: return d_e as (H*W, B, Cin) rows, e_rows' layout, instead of (B, Cin, H, W).
  bool d_e_rows = false;
};

// Returns "out" ((D, H*W, B) readouts, or (D, H*W, B, h) hidden states, raster order) and, kept
// for backward, "states" (D, padded, B, S), "cells" (D, padded, B, h) and, unless keep_acts is
// "none", "acts" (D, H*W, B, 4h), the gate activations. Needs e_rows, index, w_cat, w_cat_t, b_in,
// the schedule and pad_rows.
std::map<std::string, at::Tensor> scan_forward(const ScanArgs& args);

// Returns "d_e" ((B, Cin, H, W), or (H*W, B, Cin) with d_e_rows), "d_w_cat", "d_b_in", and,
// where there is feedback / a readout, "d_w_att", "d_b_att" / "d_w_read". Needs e_rows, index,
// w_cat, w_cat_t, w_att and w_read as in the forward pass, the schedule, grad_out, states, cells
// and acts (or, to recompute the gate activations, b_in and w_pairs as the forward pass had
// them).
std::map<std::string, at::Tensor> scan_backward(const ScanArgs& args);

}  // namespace attentionrnn
