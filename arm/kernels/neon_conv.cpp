// aarch64 NEON micro-kernels for the pattern-compressed 3x3 convolution (fp32 forward).
//
// The driver (plan_forward, csrc/kernels/plan.cpp) owns everything shape-related: the cached
// per-layer plan (filter groups of up to 4 output channels with identical (channel, pattern)
// lists; the weights are read from the caller's values array, run r of member g at
// values[g][r * E + e]), the zero-padded input slab per block of output rows in
// which stride and padding become plane phases so every tap is a constant offset, the threading
// through ParallelFor, and the scatter of tiles into the output. A micro-kernel computes one tile:
// G output channels x V float32x4 vectors of consecutive slab positions, over all kept kernels
// ("runs") of the group:
//   * register blocking: G*V accumulators stay in registers for the whole tile;
//   * reuse across grouped output channels: each input vector feeds G FMAs
//     (vfmaq_laneq_f32 against the 4 members' weights gathered into one vector when G = 4,
//     vfmaq_n_f32 otherwise);
//   * reuse across taps: when the next tap of a pattern is 1..3 floats to the right of the
//     current one (kw+1 / kw+2 in one row at stride 1; kw and kw+2 at stride 2, which share a
//     phase plane; dilation 2 at stride 1), V+1 vectors are loaded once and the shifted taps are
//     vextq_f32 of them instead of new loads.
// Tested against the scalar reference under qemu-aarch64 (arm/test.sh).
#include <arm_neon.h>

#include <utility>

#include "neon_kernels.h"

namespace patsparse {
namespace {

// acc[g][v] += w[g] * (input vectors xl shifted left by D floats)
template <int G, int V, int D>
inline void fma_tap(float32x4_t (&acc)[G][V], const float32x4_t (&xl)[V + 1], const float (&w)[G]) {
  float32x4_t wv;
  if constexpr (G == 4) wv = vld1q_f32(w);
  for (int v = 0; v < V; ++v) {
    float32x4_t x;
    if constexpr (D == 0) x = xl[v];
    else x = vextq_f32(xl[v], xl[v + 1], D);
    if constexpr (G == 4) {
      acc[0][v] = vfmaq_laneq_f32(acc[0][v], x, wv, 0);
      acc[1][v] = vfmaq_laneq_f32(acc[1][v], x, wv, 1);
      acc[2][v] = vfmaq_laneq_f32(acc[2][v], x, wv, 2);
      acc[3][v] = vfmaq_laneq_f32(acc[3][v], x, wv, 3);
    } else {
      for (int g = 0; g < G; ++g) acc[g][v] = vfmaq_n_f32(acc[g][v], x, w[g]);
    }
  }
}

template <int G, int V>
void neon_tile(const TileArgs& t) {
  float32x4_t acc[G][V];
  for (int g = 0; g < G; ++g) {
    const float32x4_t b = vdupq_n_f32(t.bias ? t.bias[g] : 0.f);
    for (int v = 0; v < V; ++v) acc[g][v] = b;
  }
  const int64_t E = t.entries;
  const float* vals[G];
  for (int g = 0; g < G; ++g) vals[g] = t.values[g];
  for (int64_t r = 0; r < t.runs; ++r) {
    const float* base = t.src + t.run_channel[r] * t.channel_stride;
    const int32_t* off = t.tap_off + t.run_pattern[r] * E;
    float32x4_t xl[V + 1];
    int64_t loaded = 0;       // offset of xl[0]
    bool have = false;        // xl holds V+1 vectors at `loaded`
    for (int64_t e = 0; e < E; ++e) {
      float w[G];
      for (int g = 0; g < G; ++g) w[g] = vals[g][e];
      const int64_t o = off[e];
      const int64_t d = o - loaded;
      if (have && d >= 0 && d <= 3) {
        switch (d) {
          case 0: fma_tap<G, V, 0>(acc, xl, w); break;
          case 1: fma_tap<G, V, 1>(acc, xl, w); break;
          case 2: fma_tap<G, V, 2>(acc, xl, w); break;
          default: fma_tap<G, V, 3>(acc, xl, w); break;
        }
        continue;
      }
      const float* x = base + o;
      const int64_t next = e + 1 < E ? off[e + 1] - o : -1;
      if (next >= 1 && next <= 3) {  // the next tap can reuse these loads: take one more vector
        for (int v = 0; v <= V; ++v) xl[v] = vld1q_f32(x + 4 * v);
        loaded = o;
        have = true;
      } else {
        for (int v = 0; v < V; ++v) xl[v] = vld1q_f32(x + 4 * v);
        xl[V] = xl[V - 1];  // never read by a D = 0 tap; keeps the array initialised
        have = false;
      }
      fma_tap<G, V, 0>(acc, xl, w);
    }
    for (int g = 0; g < G; ++g) vals[g] += E;
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) vst1q_f32(t.out + g * t.out_stride + 4 * v, acc[g][v]);
}

template <int G, int... Vs>
void fill_row(MicroKernels& mk, std::integer_sequence<int, Vs...>) {
  ((mk.fn[G][Vs + 1] = &neon_tile<G, Vs + 1>), ...);
  mk.max_vecs[G] = static_cast<int>(sizeof...(Vs));
}

}  // namespace

const MicroKernels& neon_microkernels() {
  // Widest tile per group size within the 32 NEON registers: G*V accumulators + V+1 input vectors
  // + one shifted vector + the weights (G=4: 16+5+2, G=3: 15+6+1, G=2: 12+7+1, G=1: 8+9+1).
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.vec_len = 4;
    fill_row<1>(m, std::make_integer_sequence<int, 8>{});
    fill_row<2>(m, std::make_integer_sequence<int, 6>{});
    fill_row<3>(m, std::make_integer_sequence<int, 5>{});
    fill_row<4>(m, std::make_integer_sequence<int, 4>{});
    return m;
  }();
  return mk;
}

}  // namespace patsparse
