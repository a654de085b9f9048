// AVX2+FMA micro-kernels (8 floats a vector); the tile body is in tile_impl.h.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx2,fma")

#include "tile_impl.h"  // after the pragma: compiled for this ISA

namespace patsparse {
namespace {

struct Simd {
  using Vec = __m256;
  static constexpr int width = 8;
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
};

}  // namespace

const MicroKernels& avx2_microkernels() {
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.vec_len = 8;
    fill<Simd, 1>(m, std::make_integer_sequence<int, 12>{});
    fill<Simd, 2>(m, std::make_integer_sequence<int, 4>{});
    fill<Simd, 3>(m, std::make_integer_sequence<int, 3>{});
    fill<Simd, 4>(m, std::make_integer_sequence<int, 3>{});
    return m;
  }();
  return mk;
}

}  // namespace patsparse
