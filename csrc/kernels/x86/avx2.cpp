// AVX2+FMA micro-kernels: a tile of G output channels x V vectors of 8 output pixels kept in ymm
// registers; each input vector load feeds G FMAs (broadcast weights).
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "x86_kernels.h"

#pragma GCC target("avx2,fma")

namespace patsparse {
namespace {

template <int G, int V>
void tile(const TileArgs& t) {
  __m256 acc[G][V];
#pragma GCC unroll 4
  for (int m = 0; m < G; ++m) {
    const __m256 b = t.bias ? _mm256_set1_ps(t.bias[m]) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[m][v] = b;
  }
  const float* vals = t.values;
  const int64_t E = t.entries, cs = t.channel_stride;
  for (int64_t r = 0; r < t.runs; ++r) {
    const float* base = t.src + t.run_channel[r] * cs;
    const int32_t* off = t.tap_off + t.run_pattern[r] * E;
    for (int64_t e = 0; e < E; ++e, vals += G) {
      const float* x = base + off[e];
      __m256 xv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_ps(x + 8 * v);
#pragma GCC unroll 4
      for (int m = 0; m < G; ++m) {
        const __m256 w = _mm256_set1_ps(vals[m]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[m][v] = _mm256_fmadd_ps(xv[v], w, acc[m][v]);
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < G; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(t.out + m * t.out_stride + 8 * v, acc[m][v]);
}

template <int G, int... Vs>
void fill(MicroKernels& mk, std::integer_sequence<int, Vs...>) {
  ((mk.fn[G][Vs + 1] = &tile<G, Vs + 1>), ...);
  mk.max_vecs[G] = static_cast<int>(sizeof...(Vs));
}

}  // namespace

const MicroKernels& avx2_microkernels() {
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.vec_len = 8;
    fill<1>(m, std::make_integer_sequence<int, 6>{});
    fill<2>(m, std::make_integer_sequence<int, 4>{});
    fill<3>(m, std::make_integer_sequence<int, 3>{});
    fill<4>(m, std::make_integer_sequence<int, 3>{});
    return m;
  }();
  return mk;
}

}  // namespace patsparse
