// SIMD math of the fused scan kernels: the compiler's vector types sized to the CPU's registers,
// exp / sigmoid / tanh written so that their loops vectorise in place (scalar and whole-vector
// forms), the clamps they use, and the load/store helpers the products and cells rely on.
// Part of the kernels in this folder (see bindings.cpp); compiled with -march=native.

#pragma once

#ifdef __AVX__
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace attentionrnn {

// min(max(x, lo), hi) that keeps a NaN: NaN compares false both ways, so it falls through (and
// the kernels are built with -fno-finite-math-only, so the compiler may not assume it away). The
// PyTorch paths propagate NaN through the gates; a clamp that turned it into a bound would hand
// back a finite mask for a NaN input.
template <typename T>
inline T clamp_(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// exp for the gate non-linearities, written so that a loop of it vectorises in place: a call to
// the vector math library clobbers every SIMD register, which costs more than the exp itself in
// these short loops. float: range reduction to r in [-ln2/2, ln2/2], a degree-6 polynomial
// (Cephes' minimax coefficients, relative error ~1e-7) and the power of two put into the exponent
// bits. double keeps the library exp: it only serves tests and float64 models.
inline float exp_(float x) {
  x = clamp_(x, -87.0f, 88.0f);
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
  x = clamp_(x, T(-30), T(30));
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
  // The same store, of a value, through an unaligned alias instead of memcpy: for arrays of
  // accumulators. Stored with memcpy, the 2-row, 2-vector accumulators of the backward pass's
  // transposed product (AVX2, hidden 16) were kept on the stack by GCC, every FMA of their loop
  // reading and writing memory: a quarter of the backward scan's time in a perf profile.
  // ATTENTIONRNN_MEMCPY_STORE builds the memcpy form, to measure against.
#ifndef ATTENTIONRNN_MEMCPY_STORE
  static void store_value(T* p, type v) {
    typedef T unaligned __attribute__((vector_size(kVectorBytes), aligned(alignof(T)), may_alias));
    *reinterpret_cast<unaligned*>(p) = v;
  }
#else
  static void store_value(T* p, type v) { store(p, v); }
#endif
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
// vector ?: operator is a GCC extension that not every compiler has in C++). A NaN lane stays NaN:
// maxps / minps return their second operand where either is NaN, so x goes second.
inline FloatVec clamp_(FloatVec x, float lo, float hi) {
  const FloatVec vlo = Simd<float>::splat(lo), vhi = Simd<float>::splat(hi);
#if defined(__AVX512F__)
  return _mm512_min_ps(vhi, _mm512_max_ps(vlo, x));
#elif defined(__AVX__)
  return _mm256_min_ps(vhi, _mm256_max_ps(vlo, x));
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
#elif defined(__AVX__) && !defined(ATTENTIONRNN_FLOOR_BY_TRUNCATION)
  // floor(x log2(e) + 1/2) in one instruction (the same value as the truncation below, whose five
  // dependent instructions lay on the critical path of every gate)
  const FloatVec n = _mm256_floor_ps(x * 1.44269504088896341f + 0.5f);
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

// Asks for the cache lines of [p, p + bytes) ahead of their use: the scan reads each cell's rows
// of the map-sized buffers once, at addresses the hardware prefetchers cannot predict (cells of a
// diagonal lie far apart, and a batch group's rows are a small part of each cell's). Building
// with ATTENTIONRNN_EXTENSION_CFLAGS=-DATTENTIONRNN_NO_PREFETCH turns it off, to measure it.
// Locality 3 fetches into every cache level, 2 not into L1 (measured best for the backward pass,
// whose many lines per cell would otherwise crowd L1's pending misses).
template <int Locality = 3>
inline void prefetch_bytes(const void* p, int64_t bytes) {
#ifndef ATTENTIONRNN_NO_PREFETCH
  const char* c = static_cast<const char*>(p);
  for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(c + k, 0, Locality);
#else
  (void)p, (void)bytes;
#endif
}

// Orders the streaming stores before what follows (they are weakly ordered).
inline void streaming_fence() {
#ifdef __AVX512F__
  _mm_sfence();
#endif
}

}  // namespace attentionrnn
