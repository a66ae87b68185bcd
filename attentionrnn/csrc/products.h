// The small matrix products of the fused scan kernels, register-blocked over a few batch
// elements: row-times-matrix (the gate pre-activations), the transposed product (what the gate
// gradients send back to the inputs), dot products, and the outer-product accumulation of the
// weight gradients. Included by scan_forward.cpp and scan_backward.cpp.

#pragma once

#include <cstdint>

#include "simd.h"

namespace attentionrnn {

// Register blocking of the small matrix products: blocks of `rows` input rows times Q vectors of
// outputs keep rows * Q accumulators, Q weight vectors and a broadcast value in the registers,
// each weight vector loaded once for all the rows. kVectorRegisters counts how many Simd vectors
// the register file holds: 32 zmm with AVX-512, 16 ymm with AVX2, and where a Simd vector spans
// several hardware registers (NEON: 32 of 16 bytes; SSE: 16 of 16 bytes) correspondingly fewer.
// Up to kRowBlock rows: consecutive batch elements, adjacent in every buffer.
#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int kVectorRegisters = 16;
#elif defined(__aarch64__)
constexpr int kVectorRegisters = 32 * 16 / kVectorBytes;
#else
constexpr int kVectorRegisters = 16 * 16 / kVectorBytes;
#endif
constexpr int kRowBlock = 4;

constexpr int block_rows(int q) {
  const int fit = (kVectorRegisters - q - 1) / q;
  return fit < 1 ? 1 : (fit > kRowBlock ? kRowBlock : fit);
}

// One of the `width` weight vectors of a product that serves `uses` rows: pinned to a register
// (read once for all the rows), except where it serves one row and the pinned vectors, their
// accumulators and the broadcast value would not fit in the registers (AVX2's 16 at a 64-gate
// row: 8 + 8 + 1): there the load is left to the compiler, which folds it into the one FMA that
// reads it, instead of spilling a register on every input. Only there: elsewhere the pin also
// keeps the compiler from rearranging the sums, so that results stay as they were.
template <typename T, int uses, int width>
inline typename Simd<T>::type weight_vector(const T* p) {
#ifndef ATTENTIONRNN_PIN_SINGLE_ROW
  if constexpr (uses == 1 && 2 * width + 1 > kVectorRegisters) return Simd<T>::load(p);
#endif
  return loaded_in_register<T>(p);
}

// Where a whole gate row of nv vectors leaves room for fewer than two rows (AVX2 at hidden 16:
// 8 accumulators and 8 weight vectors of 16 registers), the gate products take it in chunks of
// chunk_vectors(nv) vectors, each for chunked_rows(nv) rows, so that a weight vector still serves
// two rows. Each output keeps its own sum in the same order, so the values do not change.
constexpr int chunk_vectors(int nv) {
  for (int q = nv; q > 1; q /= 2)
    if (nv % q == 0 && block_rows(q) >= 2) return q;
  return nv;
}
constexpr int chunked_rows(int nv) { return block_rows(chunk_vectors(nv)); }

// acc[r][0:Q vectors] += in_r[0:k] W[0:k] for R rows (row r of `in` at in + r * in_stride, row
// c of W at w + c * w_stride): one broadcast per input value times a contiguous weight row, every
// weight vector loaded once for all R rows. The register-blocked product behind both the gate
// pre-activations and the backward pass's transposed product.
template <typename T, int R, int Q>
inline void add_row_products(typename Simd<T>::type (&acc)[R][Q], const T* in, int64_t in_stride,
                             int64_t k, const T* w, int64_t w_stride) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  for (int64_t c = 0; c < k; ++c) {
    V wv[Q];
    for (int q = 0; q < Q; ++q) wv[q] = weight_vector<T, R, Q>(w + c * w_stride + q * L);
    for (int r = 0; r < R; ++r) {
      const V s = S::splat(in[r * in_stride + c]);
      for (int q = 0; q < Q; ++q) acc[r][q] += s * wv[q];
    }
  }
}

// pre[r, 0:G] = bias + e_r W_in + above_r W_above + left_r W_left for the R rows r of one cell
// (row r of e/above/left at r * stride; above/left null on the first diagonal; the weight rows
// are G apart, the taps' `width` rows each). NV > 0: the gates fill NV whole vectors and the
// accumulators live in registers; NV == 0 (R == 1): any width.
template <typename T, int NV, int R>
inline void gate_products(T* pre, const T* bias, const T* w_in, const T* e, int64_t cin,
                          const T* w_above, const T* above, const T* w_left, const T* left,
                          int64_t width, int64_t gates) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  if constexpr (NV > 0) {
    // the whole row at once, unless R rows of it do not fit (chunked_rows): then in chunks
    constexpr int Q = R <= block_rows(NV) ? NV : chunk_vectors(NV);
    for (int v0 = 0; v0 < NV; v0 += Q) {
      const int64_t o = v0 * L;
      V acc[R][Q];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < Q; ++v) acc[r][v] = S::load(bias + o + v * L);
      add_row_products<T, R, Q>(acc, e, cin, cin, w_in + o, gates);
      if (above) {
        add_row_products<T, R, Q>(acc, above, width, width, w_above + o, gates);
        add_row_products<T, R, Q>(acc, left, width, width, w_left + o, gates);
      }
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < Q; ++v) S::store(pre + r * gates + o + v * L, acc[r][v]);
    }
  } else {
    static_assert(R == 1, "the generic path takes one row at a time");
    for (int64_t j = 0; j < gates; ++j) pre[j] = bias[j];
    auto add = [&](const T* in, int64_t k, const T* wk) {
      for (int64_t c = 0; c < k; ++c) {
        const T s = in[c];
        for (int64_t j = 0; j < gates; ++j) pre[j] += s * wk[c * gates + j];
      }
    };
    add(e, cin, w_in);
    if (above) {
      add(above, width, w_above);
      add(left, width, w_left);
    }
  }
}

// out[r, 0:Q vectors] = W_t^T g_r for R gradient rows g_r (G long, row r at g + r * G): every
// step is a broadcast of one gradient value times a contiguous row of W_t (row stride w_stride).
template <typename T, int R, int Q>
inline void transposed_block(T* out, int64_t out_stride, const T* w_t, int64_t w_stride,
                             const T* g, int64_t gates) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  V acc[R][Q] = {};
  add_row_products<T, R, Q>(acc, g, gates, gates, w_t, w_stride);
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) S::store_value(out + r * out_stride + q * L, acc[r][q]);
}

// out[r, 0:Mp] = W_t^T g_r for R rows, W_t (G, Mp) with Mp a multiple of the SIMD width, in
// blocks of up to 4 vectors whose accumulators stay in registers.
template <typename T, int R>
inline void transposed_product(T* out, int64_t out_stride, const T* w_t, const T* g,
                               int64_t gates, int64_t m_padded) {
  constexpr int64_t L = Simd<T>::lanes;
  int64_t k0 = 0;
  for (; k0 + 4 * L <= m_padded; k0 += 4 * L) {
    transposed_block<T, R, 4>(out + k0, out_stride, w_t + k0, m_padded, g, gates);
  }
  switch ((m_padded - k0) / L) {
    case 3: transposed_block<T, R, 3>(out + k0, out_stride, w_t + k0, m_padded, g, gates); break;
    case 2: transposed_block<T, R, 2>(out + k0, out_stride, w_t + k0, m_padded, g, gates); break;
    case 1: transposed_block<T, R, 1>(out + k0, out_stride, w_t + k0, m_padded, g, gates); break;
    default: break;
  }
}

// <a[0:n], b[0:n]>
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  int64_t j = 0;
  T acc = 0;
  if (n >= L) {
    V v = S::load(a) * S::load(b);
    for (j = L; j + L <= n; j += L) v += S::load(a + j) * S::load(b + j);
    acc = S::sum(v);
  }
  for (; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// dw[c, 0:G] += sum_r in_r[c] g_r[0:G] over the rows r of one cell's batch group, for c < k;
// in_r is in + r * in_stride, g_r is g + r * G. Blocks of CB inputs share each load of g_r.
template <typename T, int NV>
inline void accumulate_outer(T* dw, const T* in, int64_t in_stride, int64_t k, const T* g,
                             int64_t rows, int64_t gates) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  if constexpr (NV > 0) {
    constexpr int CB = block_rows(NV);
    int64_t c = 0;
    for (; c + CB <= k; c += CB) {
      V acc[CB][NV];
      for (int q = 0; q < CB; ++q)
        for (int v = 0; v < NV; ++v) acc[q][v] = S::load(dw + (c + q) * gates + v * L);
      for (int64_t r = 0; r < rows; ++r) {
        V gv[NV];
        for (int v = 0; v < NV; ++v) gv[v] = weight_vector<T, CB, NV>(g + r * gates + v * L);
        for (int q = 0; q < CB; ++q) {
          const V s = S::splat(in[r * in_stride + c + q]);
          for (int v = 0; v < NV; ++v) acc[q][v] += s * gv[v];
        }
      }
      for (int q = 0; q < CB; ++q)
        for (int v = 0; v < NV; ++v) S::store(dw + (c + q) * gates + v * L, acc[q][v]);
    }
    for (; c < k; ++c) {
      V acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = S::load(dw + c * gates + v * L);
      for (int64_t r = 0; r < rows; ++r) {
        const V s = S::splat(in[r * in_stride + c]);
        for (int v = 0; v < NV; ++v) acc[v] += s * S::load(g + r * gates + v * L);
      }
      for (int v = 0; v < NV; ++v) S::store(dw + c * gates + v * L, acc[v]);
    }
  } else {
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t r = 0; r < rows; ++r) {
        const T s = in[r * in_stride + c];
        for (int64_t j = 0; j < gates; ++j) dw[c * gates + j] += s * g[r * gates + j];
      }
    }
  }
}

// y[0:n] = a[0:n] + b[0:n], and y[0:n] += s x[0:n]: on distinct buffers, so they vectorise.
template <typename T>
inline void add_rows(T* __restrict y, const T* __restrict a, const T* __restrict b, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] = a[k] + b[k];
}

template <typename T>
inline void add_scaled(T* __restrict y, T s, const T* __restrict x, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] += s * x[k];
}

}  // namespace attentionrnn
