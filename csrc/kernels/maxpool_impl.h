// The SIMD body of the k = 2 max-pool (maxpool.h), shared by the x86 AVX2 / AVX-512 files and the
// NEON file. S is spmm_impl.h's traits type plus max_first (maxpool.h's max_first per lane) and
// pair_max (max_first of the even and odd elements of the 2 x width floats a, b). Include it after
// the file's `#pragma GCC target(...)`.
#pragma once

#include <cstdint>

#include "maxpool.h"

namespace patsparse {
namespace maxpool_simd {

template <class S>
void rows2(const MaxPoolShape& s, const float* x, float* y, int64_t plane, int64_t oy0, int64_t oy1) {
  constexpr int W = S::width;
  const int64_t ow = s.out_w(), oh = s.out_h();
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    const float* r0 = x + (plane * s.h + 2 * oy) * s.w;
    const float* r1 = r0 + s.w;
    float* out = y + (plane * oh + oy) * ow;
    int64_t j = 0;
    for (; j + W <= ow; j += W) {
      const auto top = S::pair_max(S::load(r0 + 2 * j), S::load(r0 + 2 * j + W));
      const auto bottom = S::pair_max(S::load(r1 + 2 * j), S::load(r1 + 2 * j + W));
      S::store(out + j, S::max_first(top, bottom));
    }
    if (j < ow) {  // n < W outputs from 2 n inputs a row (within the row: 2 ow <= w); masked lanes read 0
      const int n = static_cast<int>(ow - j), n_lo = n * 2 < W ? n * 2 : W, n_hi = n * 2 - n_lo;
      const auto top = S::pair_max(S::load_part(r0 + 2 * j, n_lo), n_hi ? S::load_part(r0 + 2 * j + W, n_hi) : S::zero());
      const auto bottom = S::pair_max(S::load_part(r1 + 2 * j, n_lo), n_hi ? S::load_part(r1 + 2 * j + W, n_hi) : S::zero());
      S::store_part(out + j, S::max_first(top, bottom), n);
    }
  }
}

template <class S>
MaxPoolKernels make_kernels() {
  MaxPoolKernels k;
  k.rows2 = &rows2<S>;
  return k;
}

}  // namespace maxpool_simd
}  // namespace patsparse
