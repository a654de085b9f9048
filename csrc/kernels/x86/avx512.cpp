// AVX-512F kernels (16 floats a vector): the 3x3 micro-kernels (tile_impl.h, ../grad_tile_impl.h) and
// the sparse 1x1 conv / Linear, depthwise 3x3 and max-pool kernels (../{spmm,depthwise,maxpool}_impl.h),
// over one Simd wrapper.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx512f,avx2,fma")
// GCC 12's own _mm512_max_ps / _mm512_min_ps pass _mm512_undefined_ps() (`__m512 __Y = __Y;`) as the
// unused merge operand, which -Wmaybe-uninitialized reports wherever they are inlined: a false
// positive of the header, not of this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "tile_impl.h"  // after the pragma: compiled for this ISA
#include "../grad_tile_impl.h"
#include "../spmm_impl.h"
#include "../depthwise_impl.h"
#include "../maxpool_impl.h"

namespace patsparse {
namespace {

struct Simd {
  using Vec = __m512;
  static constexpr int width = 16;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load_part(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static void store_part(float* p, Vec v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  // max / min return their second operand when one is NaN: v second keeps a NaN.
  static Vec clamp(Vec v, Vec lo, Vec hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, v)); }
  static Vec max_first(Vec m, Vec v) {  // maxpool.h's max_first per lane
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_max_ps(v, m), v);
  }
  static Vec pair_max(Vec a, Vec b) {  // lanes 2i and 2i + 1 of a:b
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return max_first(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
  }
  static float hsum(Vec v) {  // once per dot product; GCC 12 warns inside the extract intrinsics
    alignas(64) float b[16];
    _mm512_store_ps(b, v);
    for (int w = 8; w > 0; w /= 2)
      for (int i = 0; i < w; ++i) b[i] += b[i + w];
    return b[0];
  }
  static Vec gather(const float* base, const int32_t* idx) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(idx), base, 4);
  }
  static Vec gather16(const float* base, const uint16_t* idx) {
    return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx))), base, 4);
  }
};

}  // namespace

// The tile list (../plan.h): the widest tile, in vectors, offered for each group size G.
constexpr TileList kAvx512Tiles = {0, 16, 8, 6, 6};

const MicroKernels& avx512_microkernels() {
  static const MicroKernels mk = make_microkernels<PatConvTiles<Simd>, kAvx512Tiles>("avx512", Simd::width, /*counts=*/true);
  return mk;
}

// Grad tiles: up to 4 members a pass (32 zmm registers: 4 members x 4 entries of accumulators, plus the loads).
const GradValueKernels& avx512_grad_value_kernels() {
  static const GradValueKernels k = make_grad_value_kernels<Simd, 4>("avx512");
  return k;
}

const SpmmKernels& avx512_spmm_kernels() {
  static const SpmmKernels k = spmm_simd::make_kernels<Simd, 8>("avx512");
  return k;
}

const DepthwiseKernels& avx512_depthwise_kernels() {
  static const DepthwiseKernels k = depthwise_simd::make_kernels<Simd>();
  return k;
}

const MaxPoolKernels& avx512_max_pool_kernels() {
  static const MaxPoolKernels k = maxpool_simd::make_kernels<Simd>();
  return k;
}

}  // namespace patsparse
