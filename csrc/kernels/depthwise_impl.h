// The SIMD body of the depthwise 3x3 kernel (depthwise.h), shared by the x86 AVX2 / AVX-512 files
// and the NEON file. S is spmm_impl.h's traits type (Vec, width, zero, load, load_part, store,
// store_part, set1, fma, add, clamp). Include it after the file's `#pragma GCC target(...)`.
#pragma once

#include <cstdint>

#include "depthwise.h"

namespace patsparse {
namespace depthwise_simd {

// One block of padded_run: the n outputs t[q, q + n), n = U vectors (kTail false) or fewer, the last
// one partial (kTail true: the checks compile away for full blocks).
template <class S, bool kTail, int U>
__attribute__((always_inline)) inline void padded_block(const float* p, const int64_t (&off)[9],
                                                        const typename S::Vec (&wv)[9], typename S::Vec b,
                                                        typename S::Vec vlo, typename S::Vec vhi, int64_t q, int64_t n,
                                                        float* t) {
  using Vec = typename S::Vec;
  constexpr int W = S::width;
  Vec acc[U], acc2[U];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u) acc[u] = acc2[u] = S::zero();
#pragma GCC unroll 9
  for (int i = 0; i < 9; ++i) {
    const float* src = p + q + off[i];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      if (kTail && u * W >= n) break;
      const Vec x = !kTail || n - u * W >= W ? S::load(src + u * W)
                                             : S::load_part(src + u * W, static_cast<int>(n - u * W));
      if (i % 2) acc2[u] = S::fma(wv[i], x, acc2[u]);
      else acc[u] = S::fma(wv[i], x, acc[u]);
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u) {
    if (kTail && u * W >= n) break;
    const Vec r = S::clamp(S::add(S::add(acc[u], acc2[u]), b), vlo, vhi);
    if (!kTail || n - u * W >= W) S::store(t + q + u * W, r);
    else S::store_part(t + q + u * W, r, static_cast<int>(n - u * W));
  }
}

// t[q] = clamp(bias + sum over taps i of wk[i] * p[q + off[i]], lo, hi) for q in [0, len): outputs
// over a zero-padded block p, U vectors at a time, the last partial vector masked. Taps alternate
// between two accumulator sets (even taps, odd taps; then their sum), so short rows do not wait on
// one chain of 9 dependent FMAs; every output is summed in this order, wherever a run starts (a
// run's extent depends on the row split, i.e. the thread count). Reads p[off[i], off[i] + len).
template <class S>
void padded_run(const float* p, const int64_t (&off)[9], const float* wk, float bias, float lo, float hi, int64_t len,
                float* t) {
  using Vec = typename S::Vec;
  constexpr int W = S::width, U = 4;
  const Vec b = S::set1(bias), vlo = S::set1(lo), vhi = S::set1(hi);
  Vec wv[9];
#pragma GCC unroll 9
  for (int i = 0; i < 9; ++i) wv[i] = S::set1(wk[i]);
  int64_t q = 0;
  for (; q + U * W <= len; q += U * W) padded_block<S, false, U>(p, off, wv, b, vlo, vhi, q, U * W, t);
  if (q < len) padded_block<S, true, U>(p, off, wv, b, vlo, vhi, q, len - q, t);  // < U vectors, the last partial
}

// Output rows [oy0, oy1) of one plane. The input rows they read are copied into a zero-padded block
// (row stride wp = w + 2; no border cases left). stride_w 1: stride-1 outputs over it, for
// stride_h 1 and narrow planes as one run across all rows (the two pad columns of each row give
// outputs that are dropped), else row by row. stride_w 2: each padded row is stored as its even
// columns, then its odd ones, so the taps of consecutive outputs are contiguous again. Other
// strides: a stride-1 row, of which every stride_w-th column is kept (the epilogue is per element,
// so it may run before the selection). `scratch`: depthwise_scratch_floats(s, oy1 - oy0).
template <class S>
void rows(const DepthwiseShape& s, const DepthwiseIo<float>& io, int64_t plane, int64_t oy0, int64_t oy1,
          float* scratch) {
  const int64_t c = plane % s.channels, oh = s.out_h(), ow = s.out_w(), wp = s.w + 2, even = (wp + 1) / 2;
  const int64_t n_out = oy1 - oy0, n_in = (n_out - 1) * s.stride_h + 3, iy0 = oy0 * s.stride_h - 1;
  const bool split = s.stride_w == 2;
  const float* x = io.x + plane * s.h * s.w;
  float* p = scratch;
  float* t = p + n_in * wp;  // output rows (the narrow stride-1 run) or one stride-1 output row
  for (int64_t r = 0; r < n_in; ++r) {
    float* __restrict__ row = p + r * wp;
    const int64_t iy = iy0 + r;
    if (iy < 0 || iy >= s.h) {
      for (int64_t i = 0; i < wp; ++i) row[i] = 0.f;
    } else if (!split) {
      row[0] = 0.f;
      __builtin_memcpy(row + 1, x + iy * s.w, sizeof(float) * s.w);
      row[wp - 1] = 0.f;
    } else {  // padded column 2j is input column 2j - 1, padded column 2j + 1 is input column 2j
      const float* __restrict__ in = x + iy * s.w;
      const int64_t odd = wp / 2, n_odd = (s.w + 1) / 2;
      row[0] = 0.f;
      for (int64_t j = 1; j < 1 + s.w / 2; ++j) row[j] = in[2 * j - 1];
      for (int64_t j = 1 + s.w / 2; j < even; ++j) row[j] = 0.f;
      for (int64_t j = 0; j < n_odd; ++j) row[even + j] = in[2 * j];
      for (int64_t j = n_odd; j < odd; ++j) row[even + j] = 0.f;
    }
  }
  float* out = io.y + (plane * oh + oy0) * ow;
  const float* wk = io.weight + c * 9;
  const float bias = io.bias ? io.bias[c] : 0.f;
  int64_t off[9];
  for (int dy = 0; dy < 3; ++dy)
    for (int dx = 0; dx < 3; ++dx)  // split: column 2 ox + dx is even[ox], odd[ox], even[ox + 1]
      off[dy * 3 + dx] = dy * wp + (split ? (dx == 1 ? even : dx / 2) : dx);
  if (s.stride_w == 1 && s.stride_h == 1 && s.w < 64) {
    padded_run<S>(p, off, wk, bias, io.lo, io.hi, (n_out - 1) * wp + s.w, t);
    for (int64_t i = 0; i < n_out; ++i) __builtin_memcpy(out + i * ow, t + i * wp, sizeof(float) * ow);
    return;
  }
  for (int64_t i = 0; i < n_out; ++i) {
    const float* src = p + i * s.stride_h * wp;
    if (s.stride_w <= 2) {
      padded_run<S>(src, off, wk, bias, io.lo, io.hi, ow, out + i * ow);
    } else {
      padded_run<S>(src, off, wk, bias, io.lo, io.hi, s.w, t);
      for (int64_t ox = 0; ox < ow; ++ox) out[i * ow + ox] = t[ox * s.stride_w];
    }
  }
}

template <class S>
DepthwiseKernels make_kernels() {
  DepthwiseKernels k;
  k.vec_len = S::width;
  k.rows = &rows<S>;
  return k;
}

}  // namespace depthwise_simd
}  // namespace patsparse
