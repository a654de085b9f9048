// AVX2+FMA kernels (8 floats a vector): the 3x3 micro-kernels (tile_impl.h, ../grad_tile_impl.h) and
// the sparse 1x1 conv / Linear, depthwise 3x3 and max-pool kernels (../{spmm,depthwise,maxpool}_impl.h),
// over one Simd wrapper.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx2,fma")

#include "tile_impl.h"  // after the pragma: compiled for this ISA
#include "../grad_tile_impl.h"
#include "../spmm_impl.h"
#include "../depthwise_impl.h"
#include "../maxpool_impl.h"

namespace patsparse {
namespace {

alignas(32) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Simd {
  using Vec = __m256;
  static constexpr int width = 8;
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - n)); }
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec load_part(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static void store_part(float* p, Vec v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  // max / min return their second operand when one is NaN: v second keeps a NaN.
  static Vec clamp(Vec v, Vec lo, Vec hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
  static Vec max_first(Vec m, Vec v) {  // maxpool.h's max_first per lane
    return _mm256_blendv_ps(_mm256_max_ps(v, m), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static Vec pair_max(Vec a, Vec b) {  // lanes 2i and 2i + 1 of a:b
    // per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6 (and the odd lanes); then 64-bit pairs 0 2 1 3
    const Vec m = max_first(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), 0xD8));
  }
  static float hsum(Vec v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static Vec gather(const float* base, const int32_t* idx) {
    return _mm256_i32gather_ps(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)), 4);
  }
  static Vec gather16(const float* base, const uint16_t* idx) {
    return _mm256_i32gather_ps(base, _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx))), 4);
  }
};

}  // namespace

// The tile list (../plan.h): the widest tile, in vectors, offered for each group size G.
constexpr TileList kAvx2Tiles = {0, 12, 4, 3, 3};

const MicroKernels& avx2_microkernels() {
  static const MicroKernels mk = make_microkernels<PatConvTiles<Simd>, kAvx2Tiles>("avx2", Simd::width, /*counts=*/true);
  return mk;
}

// Grad tiles: up to 2 members a pass (16 ymm registers: 2 members x 4 entries of accumulators, plus the loads).
const GradValueKernels& avx2_grad_value_kernels() {
  static const GradValueKernels k = make_grad_value_kernels<Simd, 2>("avx2");
  return k;
}

const SpmmKernels& avx2_spmm_kernels() {
  static const SpmmKernels k = spmm_simd::make_kernels<Simd, 8>("avx2");
  return k;
}

const DepthwiseKernels& avx2_depthwise_kernels() {
  static const DepthwiseKernels k = depthwise_simd::make_kernels<Simd>();
  return k;
}

const MaxPoolKernels& avx2_max_pool_kernels() {
  static const MaxPoolKernels k = maxpool_simd::make_kernels<Simd>();
  return k;
}

}  // namespace patsparse
