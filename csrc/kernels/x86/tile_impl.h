// The x86 micro-kernel family shared by avx2.cpp and avx512.cpp: PatConvTiles<S>::tile<G, V> is
// f32_patconv_g<G>v<V>__<isa>, a tile of G output channels x V vectors of output pixels kept in
// registers; each input vector load feeds G FMAs (broadcast weights). S is a SIMD traits type (Vec,
// width, load, store, set1, fma). The ISA file lists the tiles it offers (a TileList, ../plan.h).
// Include this only after the file's `#pragma GCC target(...)`, so each ISA gets its own
// instantiation compiled for that ISA.
#pragma once

#include <cstdint>

#include "x86_kernels.h"

namespace patsparse {
namespace {


// All runs of the tile; EC > 0: the number of entries, known at compile time (the inner loop then
// unrolls and the G value pointers advance once per run), 0: t.entries.
template <class S, int G, int V, int EC>
__attribute__((always_inline)) inline void tile_runs(const TileArgs& t, typename S::Vec (&acc)[G][V]) {
  const float* vals[G];  // member m's weights, run after run (its filter's CSR row)
#pragma GCC unroll 4
  for (int m = 0; m < G; ++m) vals[m] = t.values[m];
  const int64_t E = EC > 0 ? EC : t.entries, cs = t.channel_stride;
  for (int64_t r = 0; r < t.runs; ++r) {
    const float* base = t.src + t.run_channel[r] * cs;
    const int32_t* off = t.tap_off + t.run_pattern[r] * E;
    const int64_t ne = EC > 0 ? EC : (t.counts ? t.counts[t.run_pattern[r]] : E);
#pragma GCC unroll 9
    for (int64_t e = 0; e < ne; ++e) {
      const float* x = base + off[e];
      typename S::Vec xv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) xv[v] = S::load(x + S::width * v);
#pragma GCC unroll 4
      for (int m = 0; m < G; ++m) {
        const typename S::Vec w = S::set1(vals[m][e]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[m][v] = S::fma(xv[v], w, acc[m][v]);
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < G; ++m) vals[m] += E;
  }
}

template <class S>
struct PatConvTiles {
  template <int G, int V>
  static void tile(const TileArgs& t) {
    typename S::Vec acc[G][V];
#pragma GCC unroll 4
    for (int m = 0; m < G; ++m) {
      const typename S::Vec b = S::set1(t.bias ? t.bias[m] : 0.0f);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[m][v] = b;
    }
    if (t.entries == 4 && !t.counts) tile_runs<S, G, V, 4>(t, acc);  // the papers' (and the default) pattern size
    else tile_runs<S, G, V, 0>(t, acc);
#pragma GCC unroll 4
    for (int m = 0; m < G; ++m)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) S::store(t.out + m * t.out_stride + S::width * v, acc[m][v]);
  }
};

}  // namespace
}  // namespace patsparse
