// The SIMD body of the depthwise 3x3 kernel (depthwise.h), shared by the x86 AVX2 / AVX-512 files
// and the NEON file. S is spmm_impl.h's traits type (Vec, width, zero, load, load_part, store,
// store_part, set1, fma, add, clamp). Include it after the file's `#pragma GCC target(...)`.
#pragma once

#include <cstdint>

#include "depthwise.h"

namespace patsparse {
namespace depthwise_simd {

// A stride-1 output row over the full width w (depthwise.h's depthwise_taps, vectorised): the two
// border columns scalar, the interior in vectors, U vectors at a time (independent FMA chains).
template <class S>
void row_stride1(const float* const rows[3], const float* wk, float bias, float lo, float hi, int64_t w,
                 float* out) {
  using Vec = typename S::Vec;
  constexpr int W = S::width, U = 4;
  out[0] = depthwise_epilogue(depthwise_taps(rows, wk, w, 0), bias, lo, hi);
  if (w == 1) return;
  const Vec b = S::set1(bias), vlo = S::set1(lo), vhi = S::set1(hi);
  const int64_t end = w - 1;  // interior columns [1, w - 1): every tap inside the row
  int64_t ox = 1;
  for (; ox + U * W <= end; ox += U * W) {
    Vec acc[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) acc[u] = S::zero();
    for (int dy = 0; dy < 3; ++dy) {
      if (!rows[dy]) continue;
      const float* p = rows[dy] + ox - 1;
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx) {
        const Vec wv = S::set1(wk[dy * 3 + dx]);
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) acc[u] = S::fma(wv, S::load(p + dx + u * W), acc[u]);
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) S::store(out + ox + u * W, S::clamp(S::add(acc[u], b), vlo, vhi));
  }
  for (; ox < end; ox += W) {
    const int n = end - ox < W ? static_cast<int>(end - ox) : W;  // no std:: calls under the ISA pragma
    Vec acc = S::zero();
    for (int dy = 0; dy < 3; ++dy) {
      if (!rows[dy]) continue;
      const float* p = rows[dy] + ox - 1;
      for (int dx = 0; dx < 3; ++dx) {  // reads columns up to ox + n <= w - 1
        const Vec x = n == W ? S::load(p + dx) : S::load_part(p + dx, n);
        acc = S::fma(S::set1(wk[dy * 3 + dx]), x, acc);
      }
    }
    const Vec r = S::clamp(S::add(acc, b), vlo, vhi);
    if (n == W) S::store(out + ox, r);
    else S::store_part(out + ox, r, n);
  }
  out[end] = depthwise_epilogue(depthwise_taps(rows, wk, w, end), bias, lo, hi);
}

// Output row oy of one plane; stride_w > 1 computes the stride-1 row into `scratch` and keeps every
// stride_w-th column (the epilogue is per element, so it may run before the selection).
template <class S>
void row(const DepthwiseShape& s, const DepthwiseIo<float>& io, int64_t plane, int64_t oy, float* scratch) {
  const int64_t c = plane % s.channels, oh = s.out_h(), ow = s.out_w();
  const float* x = io.x + plane * s.h * s.w;
  const float* rows[3];
  for (int dy = 0; dy < 3; ++dy) {
    const int64_t iy = oy * s.stride_h - 1 + dy;
    rows[dy] = iy >= 0 && iy < s.h ? x + iy * s.w : nullptr;
  }
  float* out = io.y + (plane * oh + oy) * ow;
  const float bias = io.bias ? io.bias[c] : 0.f;
  if (s.stride_w == 1) {
    row_stride1<S>(rows, io.weight + c * 9, bias, io.lo, io.hi, s.w, out);
    return;
  }
  row_stride1<S>(rows, io.weight + c * 9, bias, io.lo, io.hi, s.w, scratch);
  for (int64_t ox = 0; ox < ow; ++ox) out[ox] = scratch[ox * s.stride_w];
}

template <class S>
DepthwiseKernels make_kernels() {
  DepthwiseKernels k;
  k.vec_len = S::width;
  k.row = &row<S>;
  return k;
}

}  // namespace depthwise_simd
}  // namespace patsparse
