// The scan's three matrix products with bf16 operands and float32 accumulation (AVX-512 BF16
// vdpbf16ps), used under bf16 autocast: the gate pre-activations (forward), the transposed
// product that sends the gate gradients back and the weight-gradient accumulation (backward). One
// instruction multiplies a pair of consecutive inputs by a pair of weight rows (or, for the
// weight gradients, a pair of batch rows by their gate gradients) and adds both products to each
// float32 lane, so a product takes half the instructions of its float32 form (products.h). Cell
// state, non-linearities, the attention estimate, the two attention rows of the state taps in the
// forward products and the accumulated weight gradients stay float32.
//
// Operands: the weights are packed by Python (diagonal.pair_weights) as 32-bit words, each two
// bf16 values of consecutive rows in one column (row 2c in the low half). A cell's input rows are
// rounded to bf16 (to nearest even, as .to(torch.bfloat16) rounds) a whole vector at a time into a
// small scratch row, from which each pair is broadcast to every lane. Only for input and hidden
// widths that are multiples of 16, so every part of an input row is whole vectors.
// Included by scan_forward.cpp and scan_backward.cpp (and bindings.cpp, for kPairProducts).

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

namespace attentionrnn {

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define ATTENTIONRNN_PAIR_PRODUCTS 1  // the scans compile their calls only where set
constexpr bool kPairProducts = true;

// Rounds `segments` float vectors (segment(s) gives a pointer to 16 floats, or null for zeros) to
// bf16 into out, two vectors per store.
template <typename Segment>
inline void round_segments(uint16_t* out, int64_t segments, const Segment& segment) {
  auto load = [&](int64_t s) {
    const float* p = s < segments ? segment(s) : nullptr;
    return p ? _mm512_loadu_ps(p) : _mm512_setzero_ps();
  };
  for (int64_t s = 0; s < segments; s += 2) {
    _mm512_storeu_si512(out + s * 16, (__m512i)_mm512_cvtne2ps_pbh(load(s + 1), load(s)));
  }
}

// acc[r][0:Q vectors] += x_r W for R rows of bf16 pairs (row r of x at x + r * x_stride words,
// `pairs` words), W as packed pair words (pair c of column j at w[c * w_stride + j]).
template <int R, int Q>
inline void add_pair_products(__m512 (&acc)[R][Q], const uint32_t* x, int64_t x_stride,
                              int64_t pairs, const uint32_t* w, int64_t w_stride) {
  for (int64_t c = 0; c < pairs; ++c) {
    __m512i wv[Q];
    for (int q = 0; q < Q; ++q) {
      wv[q] = _mm512_loadu_si512(w + c * w_stride + q * 16);
      asm("" : "+v"(wv[q]));  // one load per weight vector for all R rows (see loaded_in_register)
    }
    for (int r = 0; r < R; ++r) {
      const __m512i s = _mm512_set1_epi32(static_cast<int>(x[r * x_stride + c]));
      for (int q = 0; q < Q; ++q) {
        acc[r][q] = _mm512_dpbf16_ps(acc[r][q], (__m512bh)s, (__m512bh)wv[q]);
      }
    }
  }
}

// pre[r, 0:G] = bias + [e_r, above_r[:h], left_r[:h]] W + above_r[h] w_att_above + left_r[h]
// w_att_left for the R rows of one cell (row r of e at e + r * cin, of the states at r * width;
// above/left null on the first diagonal; the attention terms only with feedback, width > h): the
// pair-product form of gate_products in products.h. `narrow` holds R rows of `row` bf16 values
// (cin + 2h rounded up to 32).
template <int R, int NV>
inline void gate_pair_products(float* pre, const float* bias, const uint32_t* w_pairs,
                               const float* e, int64_t cin, const float* above, const float* left,
                               const float* w_att_above, const float* w_att_left, int64_t hidden,
                               int64_t width, int64_t gates, uint16_t* narrow, int64_t row) {
  const int64_t in_segments = cin / 16, hidden_segments = hidden / 16;
  const int64_t segments = above ? in_segments + 2 * hidden_segments : in_segments;
  for (int r = 0; r < R; ++r) {
    round_segments(narrow + r * row, segments, [&](int64_t s) {
      if (s < in_segments) return e + r * cin + s * 16;
      s -= in_segments;
      const float* state = s < hidden_segments ? above : left;
      return state + r * width + (s % hidden_segments) * 16;
    });
  }
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(bias + v * 16);
  add_pair_products<R, NV>(acc, reinterpret_cast<const uint32_t*>(narrow), row / 2,
                           segments * 8, w_pairs, gates);
  if (above && width > hidden) {
    for (int v = 0; v < NV; ++v) {
      const __m512 wa = _mm512_loadu_ps(w_att_above + v * 16);
      const __m512 wl = _mm512_loadu_ps(w_att_left + v * 16);
      for (int r = 0; r < R; ++r) {
        acc[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(above[r * width + hidden]), wa, acc[r][v]);
        acc[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(left[r * width + hidden]), wl, acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(pre + r * gates + v * 16, acc[r][v]);
}

// out[r, 0:Mp] = W_t^T g_r for R gate-gradient rows g_r (G floats, row r at g + r * G, G a
// multiple of 32), with W_t as pair words (G/2, Mp): the pair-product form of transposed_product
// in products.h. `narrow` holds R rows of G bf16 values.
template <int R>
inline void transposed_pair_product(float* out, int64_t out_stride, const uint32_t* w_pairs_t,
                                    const float* g, int64_t gates, int64_t m_padded,
                                    uint16_t* narrow) {
  for (int r = 0; r < R; ++r) {
    round_segments(narrow + r * gates, gates / 16,
                   [&](int64_t s) { return g + r * gates + s * 16; });
  }
  const uint32_t* x = reinterpret_cast<const uint32_t*>(narrow);
  const int64_t pairs = gates / 2;
  auto block = [&](auto q, int64_t k0) {
    constexpr int Q = decltype(q)::value;
    __m512 acc[R][Q];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < Q; ++v) acc[r][v] = _mm512_setzero_ps();
    add_pair_products<R, Q>(acc, x, pairs, pairs, w_pairs_t + k0, m_padded);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < Q; ++v) _mm512_storeu_ps(out + r * out_stride + k0 + v * 16, acc[r][v]);
  };
  int64_t k0 = 0;
  for (; k0 + 64 <= m_padded; k0 += 64) block(std::integral_constant<int, 4>(), k0);
  switch ((m_padded - k0) / 16) {
    case 3: block(std::integral_constant<int, 3>(), k0); break;
    case 2: block(std::integral_constant<int, 2>(), k0); break;
    case 1: block(std::integral_constant<int, 1>(), k0); break;
    default: break;
  }
}

// The bf16 pairs (a[j], b[j]) of two rows' 16 floats each, a[j] in the low half of word j.
inline __m512i interleaved_pairs(__m512 a, __m512 b) {
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave),
                                  (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

// x rounded to bf16 (to nearest even; what vcvtne2ps2bf16 gives for a normal number).
inline uint32_t bf16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

// The backward pass's weight-gradient accumulation (accumulate_outer in products.h) with bf16
// pairs of batch rows: dw[c, 0:G] += sum_p x_p[c] . g_p, where x_p[c] packs input c of rows 2p
// and 2p+1 and g_p (NV vectors at g + p * NV) their gate gradients, interleaved the same way.
// x_p is at x + p * x_stride; inputs c < k.
template <int NV>
inline void accumulate_outer_pairs(float* dw, const uint32_t* x, int64_t x_stride, int64_t k,
                                   const __m512i* g, int64_t row_pairs, int64_t gates) {
  constexpr int CB = 4;
  int64_t c = 0;
  auto block = [&](auto width) {
    constexpr int W = decltype(width)::value;
    __m512 acc[W][NV];
    for (int q = 0; q < W; ++q)
      for (int v = 0; v < NV; ++v) acc[q][v] = _mm512_loadu_ps(dw + (c + q) * gates + v * 16);
    for (int64_t p = 0; p < row_pairs; ++p) {
      __m512i gv[NV];
      for (int v = 0; v < NV; ++v) {
        gv[v] = g[p * NV + v];
        asm("" : "+v"(gv[v]));
      }
      for (int q = 0; q < W; ++q) {
        const __m512i s = _mm512_set1_epi32(static_cast<int>(x[p * x_stride + c + q]));
        for (int v = 0; v < NV; ++v) {
          acc[q][v] = _mm512_dpbf16_ps(acc[q][v], (__m512bh)s, (__m512bh)gv[v]);
        }
      }
    }
    for (int q = 0; q < W; ++q)
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(dw + (c + q) * gates + v * 16, acc[q][v]);
  };
  for (; c + CB <= k; c += CB) block(std::integral_constant<int, CB>());
  for (; c < k; ++c) block(std::integral_constant<int, 1>());
}

// The operands of accumulate_outer_pairs for one cell of `rows` batch rows: per row pair p, the
// interleaved gate gradients (NV vectors at g_out + p * NV) of the rows of dp (G floats each), and
// the interleaved inputs [e (cin), above (width), left (width)] (k words at x_out + p * k; only e
// where above is null). A missing second row of the last pair is zero.
template <int NV>
inline void pair_rows(__m512i* g_out, uint32_t* x_out, const float* dp, int64_t rows,
                      const float* e, int64_t cin, const float* above, const float* left,
                      int64_t hidden, int64_t width, int64_t k) {
  const int64_t gates = NV * 16;
  for (int64_t r = 0; r < rows; r += 2) {
    const bool pair = r + 1 < rows;
    auto second = [&](const float* p) { return pair ? _mm512_loadu_ps(p) : _mm512_setzero_ps(); };
    const int64_t p = r / 2;
    for (int v = 0; v < NV; ++v) {
      g_out[p * NV + v] = interleaved_pairs(_mm512_loadu_ps(dp + r * gates + v * 16),
                                            second(dp + (r + 1) * gates + v * 16));
    }
    uint32_t* x = x_out + p * k;
    for (int64_t s = 0; s < cin; s += 16) {
      _mm512_storeu_si512(x + s, interleaved_pairs(_mm512_loadu_ps(e + r * cin + s),
                                                   second(e + (r + 1) * cin + s)));
    }
    if (!above) continue;
    int64_t offset = cin;
    for (const float* state : {above, left}) {
      const float* s0 = state + r * width;
      for (int64_t s = 0; s < hidden; s += 16) {
        _mm512_storeu_si512(x + offset + s,
                            interleaved_pairs(_mm512_loadu_ps(s0 + s), second(s0 + width + s)));
      }
      for (int64_t s = hidden; s < width; ++s) {  // the attention value
        x[offset + s] = bf16_bits(s0[s]) | (pair ? bf16_bits(s0[width + s]) << 16 : 0u);
      }
      offset += width;
    }
  }
}
#else
constexpr bool kPairProducts = false;
#endif

}  // namespace attentionrnn
