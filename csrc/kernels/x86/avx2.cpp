// AVX2+FMA micro-kernels (8 floats a vector); the tile body is in tile_impl.h.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx2,fma")

#include "tile_impl.h"  // after the pragma: compiled for this ISA
#include "../grad_tile_impl.h"

namespace patsparse {
namespace {

struct Simd {
  using Vec = __m256;
  static constexpr int width = 8;
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static float hsum(Vec v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
};

}  // namespace

const MicroKernels& avx2_microkernels() {
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.counts = true;
    m.vec_len = 8;
    fill<Simd, 1>(m, std::make_integer_sequence<int, 12>{});
    fill<Simd, 2>(m, std::make_integer_sequence<int, 4>{});
    fill<Simd, 3>(m, std::make_integer_sequence<int, 3>{});
    fill<Simd, 4>(m, std::make_integer_sequence<int, 3>{});
    return m;
  }();
  return mk;
}

// Grad tiles: up to 2 members a pass (16 ymm registers: 2 members x 4 entries of accumulators, plus the loads).
const GradValueKernels& avx2_grad_value_kernels() {
  static const GradValueKernels k = make_grad_value_kernels<Simd, 2>();
  return k;
}

}  // namespace patsparse
