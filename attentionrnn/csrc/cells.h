// One LSTM cell of the fused scan kernels, forward and backward, for the rows of one diagonal:
// non-linearities, cell and hidden state from the gate pre-activations, and the gate gradients
// from the gradients of what the cell passed on. The gate order is GateOrder in scan_params.h.
// Included by scan_forward.cpp and scan_backward.cpp.

#pragma once

#include <cstdint>

#include "scan_params.h"
#include "simd.h"

namespace attentionrnn {

// Whether the cells of NV gate vectors take the whole-vector path: float, h a multiple of lanes.
template <typename T, int NV>
constexpr bool kVectorCells = std::is_same_v<T, float> && NV > 0 && NV % 4 == 0;

// The gate activations [i, f, o, g] of one cell from its pre-activations, outside the
// whole-vector path: one out-of-line function that the forward pass and the backward pass's
// recomputation both call, so that both run the same instructions (-ffast-math lets the compiler
// vectorise and contract an inlined loop differently in each place; the recomputed activations
// must be the kept ones bit for bit).
template <typename T, int NV>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, noclone))
#elif defined(__GNUC__)
__attribute__((noinline))
#endif
void scalar_activations(const T* __restrict pre, T* __restrict act, int64_t hidden) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : hidden;
  for (int64_t k = 0; k < kSigmoidGates * h; ++k) act[k] = sigmoid(pre[k]);
  for (int64_t k = kSigmoidGates * h; k < 4 * h; ++k) act[k] = tanh_(pre[k]);
}

// One cell's gate gradients (dp, 4h) from the gradients w.r.t. its passed-on hidden state (ds),
// its output (gs * gv: the hidden-state gradient, or the readout gradient times the readout
// weights), its attention estimate (dz * wa) and its cell state (dc_in). Writes the gradient
// w.r.t. the cell state of the cell to the left to dcl (not on the first diagonal: cl is null).
template <typename T, int NV>
inline void cell_backward(const T* __restrict act, const T* __restrict c, const T* __restrict cl,
                          const T* __restrict ds, T gs, const T* __restrict gv, T dz,
                          const T* __restrict wa, const T* __restrict dc_in, T* __restrict dcl,
                          T* __restrict dp, int64_t hidden) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : hidden;
  const T *ig = act + kInputGate * h, *fg = act + kForgetGate * h;
  const T *og = act + kOutputGate * h, *gg = act + kCandidate * h;
  T *dpi = dp + kInputGate * h, *dpf = dp + kForgetGate * h;
  T *dpo = dp + kOutputGate * h, *dpg = dp + kCandidate * h;
  if constexpr (kVectorCells<T, NV>) {
    using S = Simd<T>;
    for (int64_t k = 0; k < h; k += S::lanes) {
      const auto i = S::load(ig + k), f = S::load(fg + k), o = S::load(og + k);
      const auto g = S::load(gg + k);
      const auto dh = S::load(ds + k) + gs * S::load(gv + k) + dz * S::load(wa + k);
      const auto tc = tanh_(S::load(c + k));
      const auto dc = S::load(dc_in + k) + dh * o * (T(1) - tc * tc);
      S::store(dpi + k, dc * g * i * (T(1) - i));
      S::store(dpo + k, dh * tc * o * (T(1) - o));
      S::store(dpg + k, dc * i * (T(1) - g * g));
      if (cl) {
        S::store(dcl + k, dc * f);
        S::store(dpf + k, dc * S::load(cl + k) * f * (T(1) - f));
      } else {
        S::store(dpf + k, S::splat(T(0)));
      }
    }
    return;
  }
  T* __restrict dcell = dpf;  // the forget gate's slot holds dc until the last loop
  for (int64_t k = 0; k < h; ++k) {
    const T dh = ds[k] + gs * gv[k] + dz * wa[k];
    const T tc = tanh_(c[k]);
    const T dc = dc_in[k] + dh * og[k] * (T(1) - tc * tc);
    dcell[k] = dc;
    dpi[k] = dc * gg[k] * ig[k] * (T(1) - ig[k]);
    dpo[k] = dh * tc * og[k] * (T(1) - og[k]);
    dpg[k] = dc * ig[k] * (T(1) - gg[k] * gg[k]);
  }
  if (cl) {
    for (int64_t k = 0; k < h; ++k) {
      const T dc = dcell[k];
      dcl[k] = dc * fg[k];
      dcell[k] = dc * cl[k] * fg[k] * (T(1) - fg[k]);
    }
  } else {
    for (int64_t k = 0; k < h; ++k) dcell[k] = T(0);
  }
}

// One cell's non-linearities and states, from its gate pre-activations (pre) and the cell state of
// the cell to its left (cl; null on the first diagonal): writes the activations [i, f, o, g] kept
// for backward (act: streaming stores into the map-sized buffer with Streaming, else plain stores
// into a small scratch buffer), its cell state c and its hidden state st. The pointers are
// distinct buffers (__restrict), so the loops vectorise and their stores and the loads that follow
// have the same width: a value stored lane by lane and reloaded as a vector stalls the load.
// The activations are the expressions of cell_activations.
template <typename T, int NV, bool Streaming = true>
inline void cell_forward(const T* __restrict pre, T* __restrict act, const T* __restrict cl,
                         T* __restrict c, T* __restrict st, int64_t hidden) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : hidden;
  if constexpr (kVectorCells<T, NV>) {
    using S = Simd<T>;
    for (int64_t k = 0; k < h; k += S::lanes) {
      const auto ig = sigmoid(S::load(pre + kInputGate * h + k));
      const auto fg = sigmoid(S::load(pre + kForgetGate * h + k));
      const auto og = sigmoid(S::load(pre + kOutputGate * h + k));
      const auto gg = tanh_(S::load(pre + kCandidate * h + k));
      if constexpr (Streaming) {
        store_streaming(act + kInputGate * h + k, ig);
        store_streaming(act + kForgetGate * h + k, fg);
        store_streaming(act + kOutputGate * h + k, og);
        store_streaming(act + kCandidate * h + k, gg);
      } else {
        S::store(act + kInputGate * h + k, ig);
        S::store(act + kForgetGate * h + k, fg);
        S::store(act + kOutputGate * h + k, og);
        S::store(act + kCandidate * h + k, gg);
      }
      const auto ck = cl ? ig * gg + fg * S::load(cl + k) : ig * gg;
      S::store(c + k, ck);
      S::store(st + k, og * tanh_(ck));
    }
  } else {
    scalar_activations<T, NV>(pre, act, h);
    const T *ig = act + kInputGate * h, *fg = act + kForgetGate * h;
    const T *og = act + kOutputGate * h, *gg = act + kCandidate * h;
    if (cl) {
      for (int64_t k = 0; k < h; ++k) c[k] = ig[k] * gg[k] + fg[k] * cl[k];
    } else {
      for (int64_t k = 0; k < h; ++k) c[k] = ig[k] * gg[k];
    }
    for (int64_t k = 0; k < h; ++k) st[k] = og[k] * tanh_(c[k]);
  }
}

// One cell's gate activations [i, f, o, g] from its pre-activations, as cell_forward computes
// them: what the backward pass recomputes where the forward pass did not keep them.
template <typename T, int NV>
inline void cell_activations(const T* __restrict pre, T* __restrict act, int64_t hidden) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : hidden;
  if constexpr (kVectorCells<T, NV>) {
    using S = Simd<T>;
    for (int64_t k = 0; k < h; k += S::lanes) {
      S::store(act + kInputGate * h + k, sigmoid(S::load(pre + kInputGate * h + k)));
      S::store(act + kForgetGate * h + k, sigmoid(S::load(pre + kForgetGate * h + k)));
      S::store(act + kOutputGate * h + k, sigmoid(S::load(pre + kOutputGate * h + k)));
      S::store(act + kCandidate * h + k, tanh_(S::load(pre + kCandidate * h + k)));
    }
  } else {
    scalar_activations<T, NV>(pre, act, h);
  }
}

}  // namespace attentionrnn
