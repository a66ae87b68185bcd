// What the forward and backward passes of the fused scan share (scan_forward.cpp,
// scan_backward.cpp): the dispatch on the gate width, the checks of the arguments, and the
// parameter struct Scan<T> (scan_params.h) built from them.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "pair_products.h"
#include "products.h"
#include "scan_params.h"
#include "scans.h"
#include "simd.h"

namespace attentionrnn {

// How many cells ahead the scans prefetch the rows they will read (measured: 1 as good as 2 or 3).
constexpr int64_t kPrefetchAhead = 1;

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
inline void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "ScanArgs.", name, " is not set");
  TORCH_CHECK(t.device().is_cpu(), "the fused scan kernels run on the CPU (ScanArgs.", name, ")");
  TORCH_CHECK(t.is_contiguous(), "the fused scan kernels take contiguous tensors (ScanArgs.",
              name, ")");
}

// An optional tensor of the arguments: null where absent.
inline const at::Tensor* optional_tensor(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_tensor(*t, name);
  return &*t;
}

// The schedule's fields: one entry per diagonal in each list.
inline void check_schedule(const ScanArgs& a) {
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

// The gate pre-activations of packed cell p (diagonal t, its cell above at padded row a, the one
// to the left at a + 1) for the rows [b0, b1) of a batch group, into pre (row b at (b - b0) * G):
// in blocks of rows where the gates fill whole vectors, with the bf16 pair products where the scan
// has them (sc.w_pairs). The forward pass and the backward pass's recomputation of the gate
// activations (keep_acts "none") both call this, so they compute the same values.
template <typename T, int NV>
inline void group_gate_products(const Scan<T>& sc, int64_t d, int64_t p, int64_t t, int64_t a,
                                int64_t b0, int64_t b1, const T* states, T* pre,
                                [[maybe_unused]] uint16_t* narrow) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : sc.hidden;
  const int64_t G = 4 * h, S = sc.width, Cin = sc.in_ch;
  const T* w = sc.w_cat + d * sc.inputs * G;
  const T* w_above = w + sc.tap_row(kTapAbove) * G;
  const T* w_left = w + sc.tap_row(kTapLeft) * G;
  const T* b_in = sc.b_in + d * G;
  auto products = [&](auto rows, int64_t b) {
    constexpr int R = decltype(rows)::value;
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
    if constexpr (std::is_same_v<T, float> && NV > 0) {
      if (sc.w_pairs) {
        gate_pair_products<R, NV>(
            pre + (b - b0) * G, b_in, sc.w_pairs + d * (sc.main_padded / 2) * G,
            sc.e + sc.raster_row(d, p, b) * Cin, Cin,
            t > 0 ? states + sc.state_row(d, a, b) : nullptr,
            t > 0 ? states + sc.state_row(d, a + 1, b) : nullptr, w_above + h * G,
            w_left + h * G, h, S, G, narrow, sc.pair_row);
        return;
      }
    }
#endif
    gate_products<T, NV, R>(pre + (b - b0) * G, b_in, w, sc.e + sc.raster_row(d, p, b) * Cin,
                            Cin, w_above, t > 0 ? states + sc.state_row(d, a, b) : nullptr,
                            w_left, t > 0 ? states + sc.state_row(d, a + 1, b) : nullptr, S, G);
  };
  int64_t b = b0;
  if constexpr (NV > 0) {
    constexpr int R = block_rows(NV);
    [[maybe_unused]] bool pairs = false;  // the pair products keep their own blocks of R rows
#ifdef ATTENTIONRNN_PAIR_PRODUCTS
    if constexpr (std::is_same_v<T, float>) pairs = sc.w_pairs != nullptr;
#endif
#ifndef ATTENTIONRNN_NO_CHUNKED_ROWS
    constexpr int RC = chunked_rows(NV);
    if constexpr (RC > R) {
      if (!pairs)
        for (; b + RC <= b1; b += RC) products(std::integral_constant<int, RC>(), b);
    }
#endif
    for (; b + R <= b1; b += R) products(std::integral_constant<int, R>(), b);
  }
  for (; b < b1; ++b) products(std::integral_constant<int, 1>(), b);
}

// The gate activations kept for backward, as bf16 (keep_acts "bf16"): rounded to nearest even, as
// .to(torch.bfloat16) rounds (the activations are finite: sigmoids and tanh).
inline void round_to_bf16(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    uint32_t u;
    std::memcpy(&u, in + k, sizeof(u));
    out[k] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
}

inline void widen_bf16(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t u = static_cast<uint32_t>(in[k]) << 16;
    std::memcpy(out + k, &u, sizeof(u));
  }
}

// How the forward pass keeps the gate activations for backward (ScanArgs.keep_acts).
enum class KeepActs { kFloat, kBf16, kNone };

inline KeepActs keep_acts_mode(const std::string& name) {
  if (name == "float" || name.empty()) return KeepActs::kFloat;
  if (name == "bf16") return KeepActs::kBf16;
  if (name == "none") return KeepActs::kNone;
  TORCH_CHECK(false, "ScanArgs.keep_acts must be 'float', 'bf16' or 'none', got '", name, "'");
}

}  // namespace attentionrnn
