// Grad-values tile body shared by the portable table (backward.cpp) and the x86 ISAs (x86/avx2.cpp,
// x86/avx512.cpp): see GradTileArgs in backward.h. S is a SIMD traits type (Vec, width, load, set1,
// fma, hsum). MaxG bounds the members done in one pass (accumulators must stay in registers); a group
// larger than that runs in passes. Include it only after the file's `#pragma GCC target(...)` (if any)
// so each ISA gets its own instantiation.
#pragma once

#include <cstdint>

#include "backward.h"

namespace patsparse {
namespace {

// Members [m0, m0 + G) of the tile. EC > 0: entries known at compile time (all E*G dot products of
// a run at once, each slab vector loaded once); EC == 0: entry by entry.
template <class S, int G, int EC>
__attribute__((always_inline)) inline void grad_members(const GradTileArgs& t, int m0) {
  using Vec = typename S::Vec;
  constexpr int W = S::width;
  constexpr int U = (G == 1) ? 2 : 1;  // independent accumulators to cover the FMA latency
  const int64_t E = EC > 0 ? EC : t.entries, nvec = t.nvec, cs = t.channel_stride;
  const float* go0[G];
  float* gr[G];
#pragma GCC unroll 4
  for (int m = 0; m < G; ++m) { go0[m] = t.gout[m0 + m]; gr[m] = t.grad[m0 + m]; }
  for (int64_t r = 0; r < t.runs; ++r) {
    const int32_t* off = t.tap_off + t.run_pattern[r] * E;
    if constexpr (EC > 0) {
      Vec acc[U][G][EC];
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
        for (int m = 0; m < G; ++m)
#pragma GCC unroll 9
          for (int e = 0; e < EC; ++e) acc[u][m][e] = S::set1(0.f);
      for (int64_t img = 0; img < t.images; ++img) {
      const float* base = t.src + img * t.src_stride + t.run_channel[r] * cs;
      const float* x[EC];
#pragma GCC unroll 9
      for (int e = 0; e < EC; ++e) x[e] = base + off[e];
      const float* go[G];
#pragma GCC unroll 4
      for (int m = 0; m < G; ++m) go[m] = go0[m] + img * t.gout_stride;
      int64_t v = 0;
      for (; v + U <= nvec; v += U) {
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u) {
          const int64_t j = (v + u) * W;
          Vec xv[EC];
#pragma GCC unroll 9
          for (int e = 0; e < EC; ++e) xv[e] = S::load(x[e] + j);
#pragma GCC unroll 4
          for (int m = 0; m < G; ++m) {
            const Vec g = S::load(go[m] + j);
#pragma GCC unroll 9
            for (int e = 0; e < EC; ++e) acc[u][m][e] = S::fma(g, xv[e], acc[u][m][e]);
          }
        }
      }
      for (; v < nvec; ++v) {
        const int64_t j = v * W;
#pragma GCC unroll 4
        for (int m = 0; m < G; ++m) {
          const Vec g = S::load(go[m] + j);
#pragma GCC unroll 9
          for (int e = 0; e < EC; ++e) acc[0][m][e] = S::fma(g, S::load(x[e] + j), acc[0][m][e]);
        }
      }
      }  // images
#pragma GCC unroll 4
      for (int m = 0; m < G; ++m)
#pragma GCC unroll 9
        for (int e = 0; e < EC; ++e) {
          Vec a = acc[0][m][e];
#pragma GCC unroll 2
          for (int u = 1; u < U; ++u) a = S::add(a, acc[u][m][e]);
          gr[m][r * EC + e] += S::hsum(a);
        }
    } else {
      for (int64_t e = 0; e < E; ++e) {
        Vec acc[2][G];
#pragma GCC unroll 4
        for (int m = 0; m < G; ++m) acc[0][m] = acc[1][m] = S::set1(0.f);
        for (int64_t img = 0; img < t.images; ++img) {
        const float* x = t.src + img * t.src_stride + t.run_channel[r] * cs + off[e];
        const float* go[G];
#pragma GCC unroll 4
        for (int m = 0; m < G; ++m) go[m] = go0[m] + img * t.gout_stride;
        int64_t v = 0;
        for (; v + 2 <= nvec; v += 2) {
          const Vec x0 = S::load(x + v * W), x1 = S::load(x + (v + 1) * W);
#pragma GCC unroll 4
          for (int m = 0; m < G; ++m) {
            acc[0][m] = S::fma(S::load(go[m] + v * W), x0, acc[0][m]);
            acc[1][m] = S::fma(S::load(go[m] + (v + 1) * W), x1, acc[1][m]);
          }
        }
        if (v < nvec) {
          const Vec x0 = S::load(x + v * W);
#pragma GCC unroll 4
          for (int m = 0; m < G; ++m) acc[0][m] = S::fma(S::load(go[m] + v * W), x0, acc[0][m]);
        }
        }  // images
#pragma GCC unroll 4
        for (int m = 0; m < G; ++m) gr[m][r * E + e] += S::hsum(S::add(acc[0][m], acc[1][m]));
      }
    }
  }
}

template <class S, int G>
void grad_pass(const GradTileArgs& t, int m0) {
  if (t.entries == 4) grad_members<S, G, 4>(t, m0);
  else grad_members<S, G, 0>(t, m0);
}

template <class S, int G, int MaxG>
void grad_tile(const GradTileArgs& t) {
  constexpr int P = G < MaxG ? G : MaxG;
  int m0 = 0;
  for (; m0 + P <= G; m0 += P) grad_pass<S, P>(t, m0);
  if constexpr (G % P != 0) grad_pass<S, G % P>(t, m0);
}

template <class S, int MaxG>
GradValueKernels make_grad_value_kernels(const char* isa) {
  GradValueKernels k;
  k.isa = isa;
  k.vec_len = S::width;
  k.fn[1] = &grad_tile<S, 1, MaxG>;
  k.fn[2] = &grad_tile<S, 2, MaxG>;
  k.fn[3] = &grad_tile<S, 3, MaxG>;
  k.fn[4] = &grad_tile<S, 4, MaxG>;
  return k;
}

}  // namespace
}  // namespace patsparse
