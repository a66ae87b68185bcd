// Fused CPU kernels of the diagonal LSTM: the whole scan, forward and backward through time.
//
// Layout (see attentionrnn/layers/bptt.py): the cells of an H x W map are packed by diagonal, and
// the state buffers give every diagonal one zero row before and after it, so the cells above and
// to the left of diagonal t's cells are two contiguous row ranges of diagonal t-1. Every row holds
// the whole batch.
//
// The recurrence is independent across directions and batch elements, so each work item (one
// direction, a fixed group of batch elements) is scanned by one thread from the first diagonal to
// the last, with no barrier between steps. A cell's gate pre-activations (input-to-state product
// from the encoded map, read in raster order through `index`, plus the two state-to-state taps)
// are small matrix products with their accumulators in SIMD registers, over a few batch elements
// at once; the non-linearities, the cell and hidden state, the predicted attention value and the
// optional readout follow in the same pass. The backward pass walks the diagonals in reverse; each
// cell pulls its gradients from the two cells that read it and accumulates the weight gradients
// of its work item. Built on first use by torch.utils.cpp_extension; without it the package falls
// back to the PyTorch implementation (attentionrnn/layers/bptt.py), which gives the same results.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// exp for the gate non-linearities, written so that a loop of it vectorises in place: a call to
// the vector math library clobbers every SIMD register, which costs more than the exp itself in
// these short loops. float: range reduction to r in [-ln2/2, ln2/2], a degree-6 polynomial
// (Cephes' minimax coefficients, relative error ~1e-7) and the power of two put into the exponent
// bits. double keeps the library exp: it only serves tests and float64 models.
inline float exp_(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

template <typename T>
inline T tanh_(T x) {
  // Through exp so the loop vectorises; the clamp keeps exp finite.
  x = std::min(std::max(x, T(-30)), T(30));
  const T e = exp_(T(2) * x);
  return (e - T(1)) / (e + T(1));
}

// SIMD vectors through the compiler's vector extension: one AVX-512 or AVX2 register where the CPU
// has them (a 64-byte vector on an AVX2 CPU is lowered to poor code, several times slower), else
// 64 bytes as NEON or SSE quadruples.
#if defined(__AVX512F__) || !defined(__AVX__)
constexpr int64_t kVectorBytes = 64;
#else
constexpr int64_t kVectorBytes = 32;
#endif

template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t lanes = kVectorBytes / sizeof(T);
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(type));
    return v;
  }
  static void store(T* p, const type& v) { std::memcpy(p, &v, sizeof(type)); }
  static type splat(T x) {
    const type zero = {};
    return zero + x;  // scalar operands broadcast: one vbroadcast, not a lane-by-lane build
  }
  static T sum(const type& v) {
    T s = 0;
    for (int64_t l = 0; l < lanes; ++l) s += v[l];
    return s;
  }
};

// The float non-linearities on whole vectors: the arithmetic of exp_ above, lane by lane (with
// AVX-512 the rounding to the nearest power of two breaks ties to even: a different n, the same
// result to within the polynomial's error).
// Where a cell's hidden width is a whole number of vectors, its element-wise update is written
// with these, so that every value is stored and reloaded as a whole vector: left to itself the
// compiler splits such a loop into 8+4+2+1+1 lanes, and the wide load that reads the result back
// stalls on the narrow stores.
using FloatVec = Simd<float>::type;
typedef int32_t IntVec __attribute__((vector_size(kVectorBytes)));

// min(max(x, lo), hi), lane by lane: one instruction each with AVX, else a bitwise select (the
// vector ?: operator is a GCC extension that not every compiler has in C++).
inline FloatVec clamp_(FloatVec x, float lo, float hi) {
  const FloatVec vlo = Simd<float>::splat(lo), vhi = Simd<float>::splat(hi);
#if defined(__AVX512F__)
  return _mm512_min_ps(_mm512_max_ps(x, vlo), vhi);
#elif defined(__AVX__)
  return _mm256_min_ps(_mm256_max_ps(x, vlo), vhi);
#else
  auto select = [](IntVec mask, FloatVec a, FloatVec b) {
    IntVec ai, bi;
    std::memcpy(&ai, &a, sizeof(a));
    std::memcpy(&bi, &b, sizeof(b));
    const IntVec r = (mask & ai) | (~mask & bi);
    FloatVec out;
    std::memcpy(&out, &r, sizeof(out));
    return out;
  };
  x = select(x < vlo, vlo, x);
  return select(x > vhi, vhi, x);
#endif
}

inline FloatVec exp_(FloatVec x) {
  x = clamp_(x, -87.0f, 88.0f);
#ifdef __AVX512F__
  // One instruction each for the rounding and for the power of two.
  const FloatVec n = _mm512_roundscale_ps(x * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT);
#else
  const FloatVec t = x * 1.44269504088896341f + 0.5f;
  FloatVec n = __builtin_convertvector(__builtin_convertvector(t, IntVec), FloatVec);
  n += __builtin_convertvector(n > t, FloatVec);  // truncation to floor: the mask is -1 where n > t
#endif
  const FloatVec r = x - n * 0.693359375f + n * 2.12194440e-4f;
  FloatVec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
#ifdef __AVX512F__
  return _mm512_scalef_ps(p, n);
#else
  const IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  FloatVec scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

inline FloatVec sigmoid(FloatVec x) { return 1.0f / (1.0f + exp_(-x)); }

inline FloatVec tanh_(FloatVec x) {
  x = clamp_(x, -30.0f, 30.0f);
  const FloatVec e = exp_(2.0f * x);
  return (e - 1.0f) / (e + 1.0f);
}

// Whether the cells of NV gate vectors take the whole-vector path: float, h a multiple of lanes.
template <typename T, int NV>
constexpr bool kVectorCells = std::is_same_v<T, float> && NV > 0 && NV % 4 == 0;

// A vector loaded from p and pinned to a register. Without the pin GCC folds the load into every
// FMA that uses the value, so a weight vector meant to serve several rows is read from memory
// once per row, and the products become bound by the load ports instead of the FMA units. (The
// pin is on a local, not an array element: pinning the element makes GCC store it to the stack.)
template <typename T>
inline typename Simd<T>::type loaded_in_register(const T* p) {
  typename Simd<T>::type v = Simd<T>::load(p);
#if defined(__GNUC__) && defined(__AVX__)  // where one register holds a Simd vector
  asm("" : "+v"(v));
#endif
  return v;
}

// A whole-vector store that bypasses the caches where the CPU has one and p is 64-byte aligned
// (always, for the rows of a tensor from PyTorch's allocator): for the saved gate activations,
// written once and read only by the backward pass, it saves reading each line in first.
template <typename T>
inline void store_streaming(T* p, const typename Simd<T>::type& v) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    if (reinterpret_cast<uintptr_t>(p) % 64 == 0) {
      _mm512_stream_ps(p, v);
      return;
    }
  }
#endif
  Simd<T>::store(p, v);
}

// Orders the streaming stores before what follows (they are weakly ordered).
inline void streaming_fence() {
#ifdef __AVX512F__
  _mm_sfence();
#endif
}

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

  int64_t groups() const { return (batch + kBatchGroup - 1) / kBatchGroup; }
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
  // Runs f(d, b0, b1) for the work items [begin, end).
  template <typename F>
  void for_items(int64_t begin, int64_t end, const F& f) const {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t d = item / groups(), b0 = (item % groups()) * kBatchGroup;
      f(item, d, b0, std::min(batch, b0 + kBatchGroup));
    }
  }
};

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
    for (int q = 0; q < Q; ++q) wv[q] = loaded_in_register<T>(w + c * w_stride + q * L);
    for (int r = 0; r < R; ++r) {
      const V s = S::splat(in[r * in_stride + c]);
      for (int q = 0; q < Q; ++q) acc[r][q] += s * wv[q];
    }
  }
}

// pre[r, 0:G] = bias + e_r W_in + above_r W_above + left_r W_left for the R rows r of one cell
// (row r of e/above/left at r * stride; above/left null on the first diagonal). NV > 0: the gates
// fill NV whole vectors and the accumulators live in registers; NV == 0 (R == 1): any width.
template <typename T, int NV, int R>
inline void gate_products(T* pre, const T* bias, const T* w, const T* e, int64_t cin,
                          const T* above, const T* left, int64_t width, int64_t gates) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t L = S::lanes;
  if constexpr (NV > 0) {
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = S::load(bias + v * L);
    add_row_products<T, R, NV>(acc, e, cin, cin, w, gates);
    if (above) {
      add_row_products<T, R, NV>(acc, above, width, width, w + cin * gates, gates);
      add_row_products<T, R, NV>(acc, left, width, width, w + (cin + width) * gates, gates);
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) S::store(pre + r * gates + v * L, acc[r][v]);
  } else {
    static_assert(R == 1, "the generic path takes one row at a time");
    for (int64_t j = 0; j < gates; ++j) pre[j] = bias[j];
    auto add = [&](const T* in, int64_t k, const T* wk) {
      for (int64_t c = 0; c < k; ++c) {
        const T s = in[c];
        for (int64_t j = 0; j < gates; ++j) pre[j] += s * wk[c * gates + j];
      }
    };
    add(e, cin, w);
    if (above) {
      add(above, width, w + cin * gates);
      add(left, width, w + (cin + width) * gates);
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
    for (int q = 0; q < Q; ++q) S::store(out + r * out_stride + q * L, acc[r][q]);
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
        for (int v = 0; v < NV; ++v) gv[v] = loaded_in_register<T>(g + r * gates + v * L);
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
  const T *ig = act, *fg = act + h, *og = act + 2 * h, *gg = act + 3 * h;
  if constexpr (kVectorCells<T, NV>) {
    using S = Simd<T>;
    for (int64_t k = 0; k < h; k += S::lanes) {
      const auto i = S::load(ig + k), f = S::load(fg + k), o = S::load(og + k);
      const auto g = S::load(gg + k);
      const auto dh = S::load(ds + k) + gs * S::load(gv + k) + dz * S::load(wa + k);
      const auto tc = tanh_(S::load(c + k));
      const auto dc = S::load(dc_in + k) + dh * o * (T(1) - tc * tc);
      S::store(dp + k, dc * g * i * (T(1) - i));
      S::store(dp + 2 * h + k, dh * tc * o * (T(1) - o));
      S::store(dp + 3 * h + k, dc * i * (T(1) - g * g));
      if (cl) {
        S::store(dcl + k, dc * f);
        S::store(dp + h + k, dc * S::load(cl + k) * f * (T(1) - f));
      } else {
        S::store(dp + h + k, S::splat(T(0)));
      }
    }
    return;
  }
  T* __restrict dcell = dp + h;  // the forget gate's slot holds dc until the last loop
  for (int64_t k = 0; k < h; ++k) {
    const T dh = ds[k] + gs * gv[k] + dz * wa[k];
    const T tc = tanh_(c[k]);
    const T dc = dc_in[k] + dh * og[k] * (T(1) - tc * tc);
    dcell[k] = dc;
    dp[k] = dc * gg[k] * ig[k] * (T(1) - ig[k]);
    dp[2 * h + k] = dh * tc * og[k] * (T(1) - og[k]);
    dp[3 * h + k] = dc * ig[k] * (T(1) - gg[k] * gg[k]);
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
// for backward (act), its cell state c and its hidden state st. The pointers are distinct buffers
// (__restrict), so the loops vectorise and their stores and the loads that follow have the same
// width: a value stored lane by lane and reloaded as a vector stalls the load.
template <typename T, int NV>
inline void cell_forward(const T* __restrict pre, T* __restrict act, const T* __restrict cl,
                         T* __restrict c, T* __restrict st, int64_t hidden) {
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : hidden;
  if constexpr (kVectorCells<T, NV>) {
    using S = Simd<T>;
    for (int64_t k = 0; k < h; k += S::lanes) {
      const auto ig = sigmoid(S::load(pre + k)), fg = sigmoid(S::load(pre + h + k));
      const auto og = sigmoid(S::load(pre + 2 * h + k)), gg = tanh_(S::load(pre + 3 * h + k));
      store_streaming(act + k, ig);
      store_streaming(act + h + k, fg);
      store_streaming(act + 2 * h + k, og);
      store_streaming(act + 3 * h + k, gg);
      const auto ck = cl ? ig * gg + fg * S::load(cl + k) : ig * gg;
      S::store(c + k, ck);
      S::store(st + k, og * tanh_(ck));
    }
  } else {
    for (int64_t k = 0; k < 3 * h; ++k) act[k] = sigmoid(pre[k]);
    for (int64_t k = 3 * h; k < 4 * h; ++k) act[k] = tanh_(pre[k]);
    const T *ig = act, *fg = act + h, *og = act + 2 * h, *gg = act + 3 * h;
    if (cl) {
      for (int64_t k = 0; k < h; ++k) c[k] = ig[k] * gg[k] + fg[k] * cl[k];
    } else {
      for (int64_t k = 0; k < h; ++k) c[k] = ig[k] * gg[k];
    }
    for (int64_t k = 0; k < h; ++k) st[k] = og[k] * tanh_(c[k]);
  }
}

template <typename T, int NV>
void forward_scan(const Scan<T>& sc, const std::vector<int64_t>& length,
                  const std::vector<int64_t>& packed_start, const std::vector<int64_t>& padded_start,
                  const std::vector<int64_t>& neighbour_start, T* out, T* states, T* cells,
                  T* acts) {
  // A compile-time width where the gates fill whole vectors, so the short loops unroll.
  const int64_t h = NV > 0 ? NV * Simd<T>::lanes / 4 : sc.hidden;
  const int64_t G = 4 * h, S = sc.width, Cin = sc.in_ch;
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pre(kBatchGroup * G);  // a cell's gate pre-activations, kept in L1
    sc.for_items(begin, end, [&](int64_t, int64_t d, int64_t b0, int64_t b1) {
      const T* w = sc.w_cat + d * sc.inputs * G;
      const T* b_in = sc.b_in + d * G;
      for (size_t t = 0; t < length.size(); ++t) {
        for (int64_t i = 0; i < length[t]; ++i) {
          const int64_t p = packed_start[t] + i, g = padded_start[t] + i;
          const int64_t a = t > 0 ? neighbour_start[t] + i : 0;  // the cell above; left is a+1
          // The gate pre-activations of the group's rows, in blocks of rows, then the cells.
          auto products = [&](auto rows, int64_t b) {
            gate_products<T, NV, decltype(rows)::value>(
                pre.data() + (b - b0) * G, b_in, w, sc.e + sc.raster_row(d, p, b) * Cin, Cin,
                t > 0 ? states + sc.state_row(d, a, b) : nullptr,
                t > 0 ? states + sc.state_row(d, a + 1, b) : nullptr, S, G);
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
            T* st = states + sc.state_row(d, g, b);
            cell_forward<T, NV>(pre.data() + (b - b0) * G, acts + sc.act_row(d, p, b),
                                t > 0 ? cells + sc.cell_row(d, a + 1, b) : nullptr,
                                cells + sc.cell_row(d, g, b), st, h);
            if (sc.feedback) {
              const T* wa = sc.w_att + d * h;
              st[h] = sigmoid(sc.b_att[d] + dot(wa, st, h));
            }
            T* o = out + (d * sc.cells * sc.batch + sc.raster_row(d, p, b)) * (sc.readout ? 1 : h);
            if (sc.readout) {
              *o = dot(sc.w_read + d * h, st, h);
            } else {
              std::memcpy(o, st, h * sizeof(T));
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
void backward_scan(const Scan<T>& sc, const std::vector<int64_t>& length,
                   const std::vector<int64_t>& packed_start,
                   const std::vector<int64_t>& padded_start,
                   const std::vector<int64_t>& neighbour_start, int64_t map_width,
                   const T* grad_out, const T* states, const T* cells, const T* acts,
                   T* d_e_dirs, T* d_w, T* d_b, T* d_w_att, T* d_b_att, T* d_w_read) {
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
  auto first_row = [&](int64_t t) { return std::max<int64_t>(0, t - map_width + 1); };
  at::parallel_for(0, sc.dirs * sc.groups(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(h), ds(h), dp(kBatchGroup * G);
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
      const T* w_att_above = sc.w_cat + (d * K + Cin + h) * G;  // the attention rows of the taps
      const T* w_att_left = w_att_above + S * G;
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
          // This cell's readers in diagonal t+1: the cell below and the cell to the right.
          const int64_t below = lo + i + 1 - lo_next, right = lo + i - lo_next;
          const bool has_below = below >= 0 && below < n_next;
          const bool has_right = right >= 0 && right < n_next;
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t r = b - b0;
            // Missing readers contribute zeros; nothing is zeroed lane by lane.
            const T* from_below = has_below ? back_next + (below * kBatchGroup + r) * Kb : nullptr;
            const T* from_right = has_right ? back_next + (right * kBatchGroup + r) * Kb : nullptr;
            add_rows(ds.data(), from_below ? from_below + Cin : zeros.data(),
                     from_right ? from_right + Cin + h : zeros.data(), h);
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
              const T d_att = (from_below ? from_below[Mp] : T(0)) +
                              (from_right ? from_right[Mp + 1] : T(0));
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
          for (; r + R <= rows; r += R) {
            transposed_product<T, R>(back_i + r * Kb, Kb, w_t, dp.data() + r * G, G, Mp);
          }
          for (; r < rows; ++r) {
            transposed_product<T, 1>(back_i + r * Kb, Kb, w_t, dp.data() + r * G, G, Mp);
          }
          for (int64_t b = b0; b < b1; ++b) {
            T* bk = back_i + (b - b0) * Kb;
            if (sc.feedback && t > 0) {
              const T* dpb = dp.data() + (b - b0) * G;
              bk[Mp] = dot(dpb, w_att_above, G);
              bk[Mp + 1] = dot(dpb, w_att_left, G);
            }
            const int64_t o = d * sc.cells * sc.batch + sc.raster_row(d, p, b);
            std::memcpy(d_e_dirs + o * Cin, bk, Cin * sizeof(T));
          }
          // Weight gradients of this cell's batch group: inputs (rows) times gate gradients.
          accumulate_outer<T, NV>(dw, sc.e + sc.raster_row(d, p, b0) * Cin, Cin, Cin,
                                  dp.data(), rows, G);
          if (t > 0) {
            accumulate_outer<T, NV>(dw + Cin * G, states + sc.state_row(d, a, b0), S, S,
                                    dp.data(), rows, G);
            accumulate_outer<T, NV>(dw + (Cin + S) * G, states + sc.state_row(d, a + 1, b0), S,
                                    S, dp.data(), rows, G);
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

// The weights as the kernels read them: [w_in; w_above; w_left] (D, K, G), and for the backward
// pass the transpose of its input and hidden-state rows, [w_in; w_above[:h]; w_left[:h]]^T
// (D, G, Mp), zero-padded to whole SIMD vectors (the two attention rows are dot products).
std::pair<at::Tensor, at::Tensor> concat_weights(const at::Tensor& w_in,
                                                 const at::Tensor& w_state) {
  const int64_t dirs = w_in.size(0), in_ch = w_in.size(1), gates = w_in.size(2);
  const int64_t hidden = gates / 4, lanes = kVectorBytes / w_in.element_size();
  auto w_cat = at::cat({w_in, w_state.reshape({dirs, -1, gates})}, 1).contiguous();
  const int64_t main = in_ch + 2 * hidden;
  auto w_cat_t = at::zeros({dirs, gates, (main + lanes - 1) / lanes * lanes}, w_in.options());
  w_cat_t.narrow(2, 0, in_ch).copy_(w_in.transpose(1, 2));
  for (int64_t tap = 0; tap < 2; ++tap) {
    w_cat_t.narrow(2, in_ch + tap * hidden, hidden)
        .copy_(w_state.select(1, tap).narrow(1, 0, hidden).transpose(1, 2));
  }
  return {w_cat, w_cat_t};
}

template <typename T>
Scan<T> make_scan(const at::Tensor& e_rows, const at::Tensor& index, const at::Tensor& w_cat,
                  const at::Tensor& w_cat_t, const at::Tensor& b_in, const at::Tensor& w_att,
                  const at::Tensor& b_att, const at::Tensor& w_read, int64_t padded) {
  Scan<T> sc;
  sc.dirs = w_cat.size(0);
  sc.cells = index.size(1);
  sc.batch = e_rows.size(1);
  sc.in_ch = e_rows.size(2);
  sc.gates = w_cat.size(2);
  sc.hidden = sc.gates / 4;
  sc.feedback = w_att.numel() > 0;
  sc.readout = w_read.numel() > 0;
  sc.width = sc.hidden + (sc.feedback ? 1 : 0);
  sc.inputs = w_cat.size(1);
  sc.main_padded = w_cat_t.size(2);
  sc.padded = padded;
  sc.e = e_rows.data_ptr<T>();
  sc.index = index.data_ptr<int64_t>();
  sc.w_cat = w_cat.data_ptr<T>();
  sc.w_cat_t = w_cat_t.data_ptr<T>();
  sc.b_in = b_in.data_ptr<T>();
  sc.w_att = sc.feedback ? w_att.data_ptr<T>() : nullptr;
  sc.b_att = sc.feedback ? b_att.data_ptr<T>() : nullptr;
  sc.w_read = sc.readout ? w_read.data_ptr<T>() : nullptr;
  return sc;
}

void check_inputs(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "the fused scan kernels run on the CPU");
    TORCH_CHECK(t.is_contiguous(), "the fused scan kernels take contiguous tensors");
  }
}

}  // namespace

// e_rows (H*W, B, Cin) raster order; index (D, P) int64; w_in (D, Cin, 4h); b_in (D, 4h);
// w_state (D, 2, S, 4h); w_att (D, h), b_att (D) and w_read (D, h) may be empty (no feedback, no
// readout). Returns out ((D, H*W, B) readout, or (D, H*W, B, h) hidden states, raster order),
// states, cells, acts (kept for backward).
std::vector<at::Tensor> diagonal_lstm_forward(at::Tensor e_rows, at::Tensor index,
                                              at::Tensor w_in, at::Tensor b_in,
                                              at::Tensor w_state, at::Tensor w_att,
                                              at::Tensor b_att, at::Tensor w_read,
                                              std::vector<int64_t> length,
                                              std::vector<int64_t> packed_start,
                                              std::vector<int64_t> padded_start,
                                              std::vector<int64_t> neighbour_start,
                                              int64_t padded_size) {
  check_inputs({e_rows, index, w_in, b_in, w_state, w_att, b_att, w_read});
  const int64_t dirs = w_in.size(0), cells_total = index.size(1), batch = e_rows.size(1);
  const int64_t gates = w_in.size(2), hidden = gates / 4;
  const int64_t width = hidden + (w_att.numel() > 0 ? 1 : 0);
  const auto opts = e_rows.options();
  // Only the pad rows around each diagonal must be zero: every other row is written before use.
  auto states = at::empty({dirs, padded_size, batch, width}, opts);
  auto cells = at::empty({dirs, padded_size, batch, hidden}, opts);
  std::vector<int64_t> pads;
  for (size_t t = 0; t < length.size(); ++t) {
    pads.push_back(padded_start[t] - 1);
    pads.push_back(padded_start[t] + length[t]);
  }
  auto pad_index = at::tensor(pads, opts.dtype(at::kLong));
  states.index_fill_(1, pad_index, 0);
  cells.index_fill_(1, pad_index, 0);
  auto out = w_read.numel() > 0 ? at::empty({dirs, cells_total, batch}, opts)
                                : at::empty({dirs, cells_total, batch, hidden}, opts);
  auto acts = at::empty({dirs, cells_total, batch, gates}, opts);
  const auto [w_cat, w_cat_t] = concat_weights(w_in, w_state);
  AT_DISPATCH_FLOATING_TYPES(e_rows.scalar_type(), "diagonal_lstm_forward", [&] {
    const auto sc = make_scan<scalar_t>(e_rows, index, w_cat, w_cat_t, b_in, w_att, b_att,
                                        w_read, padded_size);
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      forward_scan<scalar_t, decltype(nv)::value>(
          sc, length, packed_start, padded_start, neighbour_start, out.data_ptr<scalar_t>(),
          states.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(), acts.data_ptr<scalar_t>());
    });
  });
  return {out, states, cells, acts};
}

// Returns d_e (B, Cin, H, W), d_w_in, d_b_in, d_w_state, d_w_att, d_b_att, d_w_read (the last three with a
// zero-sized dimension where there is no feedback or readout).
std::vector<at::Tensor> diagonal_lstm_backward(
    at::Tensor grad_out, at::Tensor e_rows, at::Tensor index, at::Tensor w_in, at::Tensor b_in,
    at::Tensor w_state, at::Tensor w_att, at::Tensor b_att, at::Tensor w_read, at::Tensor states,
    at::Tensor cells, at::Tensor acts, std::vector<int64_t> length,
    std::vector<int64_t> packed_start, std::vector<int64_t> padded_start,
    std::vector<int64_t> neighbour_start, int64_t height, int64_t width) {
  grad_out = grad_out.contiguous();
  check_inputs({grad_out, e_rows, index, w_in, b_in, w_state, w_att, b_att, w_read, states,
                cells, acts});
  const int64_t dirs = acts.size(0), cells_total = acts.size(1), batch = acts.size(2);
  const int64_t gates = acts.size(3), hidden = gates / 4;
  const int64_t in_ch = e_rows.size(2);
  const auto opts = acts.options();
  const auto [w_cat, w_cat_t] = concat_weights(w_in, w_state);
  const int64_t inputs = w_cat.size(1);
  const int64_t groups = (batch + kBatchGroup - 1) / kBatchGroup, items = dirs * groups;
  auto d_e_dirs = at::empty({dirs, cells_total, batch, in_ch}, opts);
  auto d_w = at::zeros({items, inputs, gates}, opts);
  auto d_b = at::zeros({items, gates}, opts);
  auto d_w_att = at::zeros({items, hidden}, opts);
  auto d_b_att = at::zeros({items}, opts);
  auto d_w_read = at::zeros({items, hidden}, opts);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "diagonal_lstm_backward", [&] {
    const auto sc = make_scan<scalar_t>(e_rows, index, w_cat, w_cat_t, b_in, w_att, b_att,
                                        w_read, states.size(1));
    dispatch_width<scalar_t>(gates, [&](auto nv) {
      backward_scan<scalar_t, decltype(nv)::value>(
          sc, length, packed_start, padded_start, neighbour_start, width,
          grad_out.data_ptr<scalar_t>(), states.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(),
          acts.data_ptr<scalar_t>(), d_e_dirs.data_ptr<scalar_t>(), d_w.data_ptr<scalar_t>(), d_b.data_ptr<scalar_t>(),
          d_w_att.data_ptr<scalar_t>(), d_b_att.data_ptr<scalar_t>(),
          d_w_read.data_ptr<scalar_t>());
    });
  });
  // Sum the work items' slots per direction (items of direction d are d*groups .. +groups).
  auto per_dir = [&](const at::Tensor& t) { return t.view({dirs, groups, -1}).sum(1); };
  auto d_w_dir = d_w.view({dirs, groups, inputs, gates}).sum(1);
  auto d_w_in = d_w_dir.narrow(1, 0, in_ch);
  auto d_w_state = d_w_dir.narrow(1, in_ch, inputs - in_ch).reshape(w_state.sizes());
  // The encoded map's gradient, summed over directions into (B, Cin, H, W), the layout the ReLU
  // and convolution before the scan read fastest.
  auto d_e = at::empty({batch, in_ch, height, width}, opts);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "diagonal_lstm_sum_directions", [&] {
    sum_directions_nchw(d_e_dirs.data_ptr<scalar_t>(), d_e.data_ptr<scalar_t>(), dirs,
                        cells_total, batch, in_ch);
  });
  return {d_e, d_w_in, per_dir(d_b), d_w_state, per_dir(d_w_att),
          d_b_att.view({dirs, groups}).sum(1), per_dir(d_w_read)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &diagonal_lstm_forward, "diagonal LSTM scan, forward (fused cells)");
  m.def("backward", &diagonal_lstm_backward, "diagonal LSTM scan, backward through time");
}
