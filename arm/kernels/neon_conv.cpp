// aarch64 NEON micro-kernels for the pattern-compressed 3x3 convolution (fp32 forward).
//
// The driver (plan_forward, csrc/kernels/plan.cpp) owns everything shape-related: the cached
// per-layer plan (filter groups of up to 4 output channels with identical (channel, pattern)
// lists; the weights are read from the caller's values array, run r of member g at
// values[g][r * E + e]), the zero-padded input slab per block of output rows in
// which stride and padding become plane phases so every tap is a constant offset, the threading
// through ParallelFor, and the scatter of tiles into the output. A micro-kernel computes one tile:
// G output channels x V float32x4 vectors of consecutive slab positions, over all kept kernels
// ("runs") of the group. Per run, everything is straight-line code (benchmarks/arm_estimate measured
// the per-tap control of the previous design at ~27 non-FMA instructions per 8 FMLAs):
//   * the G*V accumulators are one flat array indexed only by unrolled compile-time constants, so
//     both g++ and clang keep them in registers for the whole tile (g++ spilled acc[G][V] updated
//     through a helper taking it by reference);
//   * E = 4 (the PatDNN patterns) is a compile-time tap count: the 4 taps of a run are unrolled, the
//     run's 4 weights of member g are one vector load, and tap e is a by-element FMLA on lane e, so
//     the tap sequence needs no branch, whatever the pattern; other E use a run-time tap loop;
//   * each tap loads its V input vectors directly at its offset (LD1 of 4 registers or LDP pairs)
//     rather than shifting a shared load with EXT: EXT runs on the same two vector pipes as FMLA on
//     a Cortex-A76, while the load pipes are otherwise idle, and each input vector still feeds G FMLAs.
// The input slab's layout (plan.h) makes every tap a constant offset, so nothing depends on the
// pattern's shape: one straight-line run body serves every pattern of 4 entries.
// Tested against the scalar reference under qemu-aarch64 (arm/test.sh), with g++ and clang.
#include <arm_neon.h>

#include <utility>

#include "neon_kernels.h"

namespace patsparse {
namespace {

// Per compiler, as benchmarks/arm_estimate measured them (instructions, llvm-mca):
//   kMultiLoad[G]: the G tiles load 4 input vectors per LD1 instruction, else LDP pairs of single
//     loads (clang spills accumulators of the G = 4, V = 5 tile around LD1's register quads);
//   kTapChunk: a tap loads and multiplies this many vectors at a time (g++ 12 copies LD1's register
//     quads through MOVs when a whole 12-vector tap is loaded first; clang schedules either well);
#if defined(__clang__)
#define PATSPARSE_UNROLL _Pragma("clang loop unroll(full)")
constexpr bool kMultiLoad[kPlanMaxGroup + 1] = {false, true, true, false, false};
constexpr int kTapChunk = kPlanMaxVecs;
#else
#define PATSPARSE_UNROLL _Pragma("GCC unroll 32")
// g++'s pre-allocation scheduler hoists every input load of a run to its top, which needs more
// than 32 vector registers for the wide tiles and spills accumulators to the stack.
#pragma GCC optimize("no-schedule-insns")
constexpr bool kMultiLoad[kPlanMaxGroup + 1] = {false, true, true, true, true};
constexpr int kTapChunk = 4;
#endif

// The tile list (plan.h): widest tile per group size within the 32 vector registers: G*V accumulators
// + G weight vectors + the input vectors in flight (G=1: 12+1+12, G=2: 16+2+8, G=3: 18+3+6, G=4: 20+4+5).
constexpr TileList kNeonTiles = {0, 12, 8, 6, 5};

// The V input vectors at x. Multi: 4 per instruction (LD1 of 4 registers moves 64 bytes in one
// instruction; a G = 1 tile issues one input vector per FMLA, so load instructions count). Else
// one vector per load (pairs become LDP).
template <int V, bool Multi>
inline __attribute__((always_inline)) void load_vectors(float32x4_t* xv, const float* x) {
  if constexpr (!Multi) {
    PATSPARSE_UNROLL
    for (int v = 0; v < V; ++v) xv[v] = vld1q_f32(x + 4 * v);
    return;
  }
  PATSPARSE_UNROLL
  for (int v = 0; v + 4 <= V; v += 4) {
    const float32x4x4_t q = vld1q_f32_x4(x + 4 * v);
    xv[v] = q.val[0]; xv[v + 1] = q.val[1]; xv[v + 2] = q.val[2]; xv[v + 3] = q.val[3];
  }
  constexpr int v = V / 4 * 4;
  if constexpr (V % 4 == 3) {
    const float32x4x3_t q = vld1q_f32_x3(x + 4 * v);
    xv[v] = q.val[0]; xv[v + 1] = q.val[1]; xv[v + 2] = q.val[2];
  } else if constexpr (V % 4 == 2) {
    const float32x4x2_t q = vld1q_f32_x2(x + 4 * v);
    xv[v] = q.val[0]; xv[v + 1] = q.val[1];
  } else if constexpr (V % 4 == 1) {
    xv[v] = vld1q_f32(x + 4 * v);
  }
}

// One tap of one run: acc[g*V + v] += w_g[lane] * x[4v .. 4v+3], kTapChunk vectors at a time.
template <int G, int V, int Lane, int V0 = 0>
inline __attribute__((always_inline)) void tap(float32x4_t* acc, const float* x, const float32x4_t* w) {
  if constexpr (V0 < V) {
    constexpr int N = V - V0 < kTapChunk ? V - V0 : kTapChunk;
    float32x4_t xv[N];
    load_vectors<N, kMultiLoad[G]>(xv, x + 4 * V0);
    PATSPARSE_UNROLL
    for (int v = 0; v < N; ++v) {
      PATSPARSE_UNROLL
      for (int g = 0; g < G; ++g) acc[g * V + V0 + v] = vfmaq_laneq_f32(acc[g * V + V0 + v], xv[v], w[g], Lane);
    }
    tap<G, V, Lane, V0 + N>(acc, x, w);
  }
}

// E: the pattern's entry count when it is 4 (compile-time taps), else 0 (t.entries at run time).
template <int G, int V, int E>
inline __attribute__((always_inline)) void tile_body(const TileArgs& t) {
  float32x4_t acc[G * V];
  PATSPARSE_UNROLL
  for (int g = 0; g < G; ++g) {
    const float32x4_t b = vdupq_n_f32(t.bias ? t.bias[g] : 0.f);
    PATSPARSE_UNROLL
    for (int v = 0; v < V; ++v) acc[g * V + v] = b;
  }
  const float* vals[G];
  PATSPARSE_UNROLL
  for (int g = 0; g < G; ++g) vals[g] = t.values[g];
  const int64_t entries = E ? E : t.entries;
  const float* const src = t.src;
  const int64_t cs = t.channel_stride;
  for (int64_t r = 0; r < t.runs; ++r) {
    const float* base = src + t.run_channel[r] * cs;
    const int32_t* off = t.tap_off + t.run_pattern[r] * entries;
    if constexpr (E == 4) {
      float32x4_t w[G];
      PATSPARSE_UNROLL
      for (int g = 0; g < G; ++g) w[g] = vld1q_f32(vals[g] + 4 * r);
      tap<G, V, 0>(acc, base + off[0], w);
      tap<G, V, 1>(acc, base + off[1], w);
      tap<G, V, 2>(acc, base + off[2], w);
      tap<G, V, 3>(acc, base + off[3], w);
    } else {
      for (int64_t e = 0; e < entries; ++e) {
        float32x4_t w[G];
        PATSPARSE_UNROLL
        for (int g = 0; g < G; ++g) w[g] = vld1q_dup_f32(vals[g] + r * entries + e);
        tap<G, V, 0>(acc, base + off[e], w);
      }
    }
  }
  float* const out = t.out;  // locals: the stores could alias t
  const int64_t out_stride = t.out_stride;
  PATSPARSE_UNROLL
  for (int g = 0; g < G; ++g) {
    PATSPARSE_UNROLL
    for (int v = 0; v < V; ++v) vst1q_f32(out + g * out_stride + 4 * v, acc[g * V + v]);
  }
}

// tile<G, V> is f32_patconv_g<G>v<V>__neon.
struct NeonTiles {
  template <int G, int V>
  static void tile(const TileArgs& t) {
    if (t.entries == 4) tile_body<G, V, 4>(t);
    else tile_body<G, V, 0>(t);
  }
};

}  // namespace

const MicroKernels& neon_microkernels() {
  static const MicroKernels mk = make_microkernels<NeonTiles, kNeonTiles>("neon", 4, /*counts=*/false);
  return mk;
}

}  // namespace patsparse
