// AVX-512F micro-kernels (16 floats a vector); the tile body is in tile_impl.h.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx512f,avx2,fma")

#include "tile_impl.h"  // after the pragma: compiled for this ISA
#include "../grad_tile_impl.h"

namespace patsparse {
namespace {

struct Simd {
  using Vec = __m512;
  static constexpr int width = 16;
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static float hsum(Vec v) {  // once per dot product; GCC 12 warns inside the extract intrinsics
    alignas(64) float b[16];
    _mm512_store_ps(b, v);
    for (int w = 8; w > 0; w /= 2)
      for (int i = 0; i < w; ++i) b[i] += b[i + w];
    return b[0];
  }
};

}  // namespace

const MicroKernels& avx512_microkernels() {
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.counts = true;
    m.vec_len = 16;
    fill<Simd, 1>(m, std::make_integer_sequence<int, 16>{});
    fill<Simd, 2>(m, std::make_integer_sequence<int, 8>{});
    fill<Simd, 3>(m, std::make_integer_sequence<int, 6>{});
    fill<Simd, 4>(m, std::make_integer_sequence<int, 6>{});
    return m;
  }();
  return mk;
}

// Grad tiles: up to 4 members a pass (32 zmm registers: 4 members x 4 entries of accumulators, plus the loads).
const GradValueKernels& avx512_grad_value_kernels() {
  static const GradValueKernels k = make_grad_value_kernels<Simd, 4>();
  return k;
}

}  // namespace patsparse
