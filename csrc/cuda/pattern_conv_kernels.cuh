// Torch-free CUDA kernels for the pattern-sparse 3x3 convolution (raw pointers, no ATen).
//
//   forward_tiled_kernel   thread block = (image n, 16x16 output tile) x (8 output channels). The input
//                          channels those 8 filters use (the plan's per-block union list) are staged in
//                          shared memory, a chunk of channels at a time, as zero-padded input tiles;
//                          padding/borders are therefore handled once at staging, and the inner loop is
//                          branch-free. Every thread of the block walks the same kernel list (block-
//                          uniform control flow: no warp divergence, whatever the patterns); each thread
//                          owns P (2) output pixels x 8 output channels of accumulators. With a grouped
//                          weight (G filters sharing (channel, pattern) lists, plan.group) one shared
//                          load of an input value feeds G FMAs.
//   forward_simple_kernel  one thread per output element; used when the staged tile does not fit in
//                          shared memory (very large dilation) or the grid would be too large.
//   grad_input_kernel      gather form (transposed plan: kernels grouped by input channel), one thread
//                          per input element: no atomics, deterministic, no races.
//   grad_values_kernel     one block per kept kernel; block reduction in shared memory; deterministic.
//
// The kernels use only blockIdx/threadIdx/blockDim/gridDim, __syncthreads and dynamic shared memory, so
// csrc/cuda/plan_selftest.cc can run this very code on the CPU under a block emulator
// (PATSPARSE_EMULATE), against the scalar reference.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/pattern_conv.h"
#include "plan.h"

#ifndef PATSPARSE_EMULATE
#define PATSPARSE_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace patsparse {
namespace cuda {

constexpr int kTileH = 16, kTileW = 16;   // output tile of one forward block
// Output pixels per forward thread: P in {1, 2, 4} (rows ty, ty + 16/P, ...), so a block has 256/P
// threads. More pixels per thread amortise the per-kernel index and value loads; fewer give more
// threads. Default 2; PATSPARSE_CUDA_FWD_PIX selects another (tuning knob for the benchmarks).
constexpr int kFwdDefaultPix = 2;
template <int P>
constexpr int fwd_threads() { return kTileH * kTileW / P; }
constexpr int kGinThreads = 256;
constexpr int kGvThreads = 256;
constexpr int kMaxEntries = 9;
constexpr int kMaxChunk = 32;               // input channels staged at once (upper bound)
constexpr size_t kSmemInputBudget = 24 * 1024;  // bytes of staged input per block (occupancy)
constexpr size_t kSmemLimit = 48 * 1024;        // default dynamic shared memory limit


template <typename T>
struct ConvArgs {
  int64_t N = 0, Cin = 0, H = 0, W = 0, Cout = 0, OH = 0, OW = 0;
  int sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int K = 0, E = 0;                    // patterns [K, E]
  const uint8_t* patterns = nullptr;  // [K, E] positions 0..8 (validated)
  const T* values = nullptr;          // [nnz, E]
};

// Kernel argument block from the op's shape and (device) weight view.
template <typename T>
inline ConvArgs<T> make_args(const ConvShape& s, const PatternWeights<T>& w) {
  ConvArgs<T> a;
  a.N = s.batch; a.Cin = s.in_channels; a.H = s.in_h; a.W = s.in_w;
  a.Cout = s.out_channels; a.OH = s.out_h; a.OW = s.out_w;
  a.sh = static_cast<int>(s.stride_h); a.sw = static_cast<int>(s.stride_w);
  a.ph = static_cast<int>(s.pad_h); a.pw = static_cast<int>(s.pad_w);
  a.dh = static_cast<int>(s.dil_h); a.dw = static_cast<int>(s.dil_w);
  a.K = static_cast<int>(w.num_patterns); a.E = static_cast<int>(w.entries);
  a.patterns = w.patterns;
  a.values = w.values;
  return a;
}

// Host-side geometry of the tiled forward (shared by the launcher and the CPU emulator).
struct FwdLaunch {
  bool tiled = false;   // false: use forward_simple_kernel
  int pix = kFwdDefaultPix;  // P
  int tiles_h = 0, tiles_w = 0;
  int in_h = 0, in_w = 0, plane = 0;  // staged input tile (per channel)
  int chunk = 0;                      // channels staged at once
  size_t in_bytes = 0, smem_bytes = 0;
  int64_t grid_x = 0, grid_y = 0;
};

template <typename T>
inline FwdLaunch forward_launch(const ConvArgs<T>& a, const DevicePlan& p, int pix = kFwdDefaultPix) {
  FwdLaunch l;
  l.pix = (pix == 1 || pix == 2 || pix == 4) ? pix : kFwdDefaultPix;
  l.tiles_h = static_cast<int>((a.OH + kTileH - 1) / kTileH);
  l.tiles_w = static_cast<int>((a.OW + kTileW - 1) / kTileW);
  l.in_h = (kTileH - 1) * a.sh + 2 * a.dh + 1;
  l.in_w = (kTileW - 1) * a.sw + 2 * a.dw + 1;
  l.plane = l.in_h * l.in_w;
  const size_t tap_bytes = static_cast<size_t>(a.K) * a.E * sizeof(int);
  const size_t avail = kSmemLimit > tap_bytes ? kSmemLimit - tap_bytes : 0;
  const size_t budget = avail < kSmemInputBudget ? avail : kSmemInputBudget;
  const size_t per_channel = static_cast<size_t>(l.plane) * sizeof(T);
  size_t chunk = per_channel ? budget / per_channel : 0;
  if (chunk > static_cast<size_t>(kMaxChunk)) chunk = kMaxChunk;
  if (chunk == 0 && per_channel <= avail) chunk = 1;
  l.chunk = static_cast<int>(chunk);
  l.in_bytes = chunk * per_channel;
  l.smem_bytes = l.in_bytes + tap_bytes;
  l.grid_x = static_cast<int64_t>(l.tiles_h) * l.tiles_w * a.N;
  l.grid_y = p.num_blocks;
  l.tiled = l.chunk >= 1 && l.plane < (1 << 24) && l.grid_x <= 0x7fffffffLL && l.grid_y <= 65535;
  return l;
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

template <typename T, int G, int P>
__global__ void __launch_bounds__(fwd_threads<P>())
forward_tiled_kernel(ConvArgs<T> a, DevicePlan p, FwdLaunch l, const T* __restrict__ input,
                     const T* __restrict__ bias, T* __restrict__ output) {
  constexpr int FB = kOutBlock / G;  // filter groups per block
  constexpr int NT = fwd_threads<P>(), kRowStep = kTileH / P;
  static_assert(NT % kTileW == 0 && NT / kTileW == kRowStep, "thread (tx, ty) covers rows ty + q * kRowStep");
  PATSPARSE_DYN_SMEM(smem);
  T* s_in = reinterpret_cast<T*>(smem);                     // [chunk][in_h][in_w]
  int* s_tap = reinterpret_cast<int*>(smem + l.in_bytes);   // [K][E] offset of each tap in a staged tile

  const int tid = threadIdx.x;
  const int tiles = l.tiles_h * l.tiles_w;
  const int tile = static_cast<int>(blockIdx.x % tiles);
  const int64_t n = blockIdx.x / tiles;
  const int b = blockIdx.y;
  const int oh0 = (tile / l.tiles_w) * kTileH, ow0 = (tile % l.tiles_w) * kTileW;
  const int64_t ih0 = static_cast<int64_t>(oh0) * a.sh - a.ph, iw0 = static_cast<int64_t>(ow0) * a.sw - a.pw;

  for (int i = tid; i < a.K * a.E; i += NT) {
    const int pos = a.patterns[i];
    s_tap[i] = (pos / 3) * a.dh * l.in_w + (pos % 3) * a.dw;
  }
  const int tx = tid % kTileW, ty = tid / kTileW;
  int pix[P];
#pragma unroll
  for (int q = 0; q < P; ++q) pix[q] = (ty + q * kRowStep) * a.sh * l.in_w + tx * a.sw;

  T acc[kOutBlock][P];
#pragma unroll
  for (int o = 0; o < kOutBlock; ++o)
#pragma unroll
    for (int q = 0; q < P; ++q) acc[o][q] = T(0);

  int cur[FB], end[FB];
#pragma unroll
  for (int fb = 0; fb < FB; ++fb) {
    const int g = b * FB + fb;
    cur[fb] = g < p.num_groups ? p.grp_ptr[g] : 0;
    end[fb] = g < p.num_groups ? p.grp_ptr[g + 1] : 0;
  }
  const int cbeg = p.blk_chan_ptr[b], nchan = p.blk_chan_ptr[b + 1] - cbeg;
  const int64_t HW = a.H * a.W;
  const T* in_n = input + n * a.Cin * HW;

  for (int s0 = 0; s0 < nchan; s0 += l.chunk) {
    const int cc = imin(l.chunk, nchan - s0);
    __syncthreads();  // the previous chunk is consumed (and s_tap is written before the first use)
    for (int i = tid; i < cc * l.plane; i += NT) {
      const int cl = i / l.plane, r = i - cl * l.plane;
      const int y = r / l.in_w, x = r - y * l.in_w;
      const int64_t ih = ih0 + y, iw = iw0 + x;
      T v = T(0);
      if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
        v = in_n[static_cast<int64_t>(p.blk_chan[cbeg + s0 + cl]) * HW + ih * a.W + iw];
      s_in[i] = v;
    }
    __syncthreads();
    const int slot_end = s0 + cc;
#pragma unroll
    for (int fb = 0; fb < FB; ++fb) {
      // Block-uniform walk over this group's entries whose channel is staged now.
      for (; cur[fb] < end[fb] && p.ent_slot[cur[fb]] < slot_end; ++cur[fb]) {
        const int e = cur[fb];
        const T* sp = s_in + (p.ent_slot[e] - s0) * l.plane;
        const int* tap = s_tap + p.ent_pattern[e] * a.E;
        int kern[G];
#pragma unroll
        for (int j = 0; j < G; ++j) kern[j] = p.ent_kernel[e * G + j];
        for (int t = 0; t < a.E; ++t) {
          const int off = tap[t];
          T x[P];
#pragma unroll
          for (int q = 0; q < P; ++q) x[q] = sp[pix[q] + off];
#pragma unroll
          for (int j = 0; j < G; ++j) {
            const T v = kern[j] >= 0 ? a.values[static_cast<int64_t>(kern[j]) * a.E + t] : T(0);
#pragma unroll
            for (int q = 0; q < P; ++q) acc[fb * G + j][q] += v * x[q];
          }
        }
      }
    }
  }

#pragma unroll
  for (int o_local = 0; o_local < kOutBlock; ++o_local) {
    const int64_t o = static_cast<int64_t>(b) * kOutBlock + o_local;
    if (o >= a.Cout) break;
    const T bv = bias ? bias[o] : T(0);
#pragma unroll
    for (int q = 0; q < P; ++q) {
      const int64_t oh = oh0 + ty + q * kRowStep, ow = ow0 + tx;
      if (oh < a.OH && ow < a.OW) output[((n * a.Cout + o) * a.OH + oh) * a.OW + ow] = acc[o_local][q] + bv;
    }
  }
}

// One thread per output element, straight from the (validated) compressed arrays.
template <typename T>
__global__ void forward_simple_kernel(ConvArgs<T> a, const int32_t* __restrict__ filter_ptr,
                                      const int32_t* __restrict__ kernel_channel,
                                      const uint8_t* __restrict__ kernel_pattern, const T* __restrict__ input,
                                      const T* __restrict__ bias, T* __restrict__ output) {
  const int64_t total = a.N * a.Cout * a.OH * a.OW;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t ow = idx % a.OW, oh = (idx / a.OW) % a.OH, o = (idx / (a.OW * a.OH)) % a.Cout;
    const int64_t n = idx / (a.OW * a.OH * a.Cout);
    T acc = bias ? bias[o] : T(0);
    for (int64_t k = filter_ptr[o]; k < filter_ptr[o + 1]; ++k) {
      const T* in = input + (n * a.Cin + kernel_channel[k]) * a.H * a.W;
      const uint8_t* pat = a.patterns + static_cast<int64_t>(kernel_pattern[k]) * a.E;
      for (int e = 0; e < a.E; ++e) {
        const int64_t ih = oh * a.sh - a.ph + (pat[e] / 3) * a.dh;
        const int64_t iw = ow * a.sw - a.pw + (pat[e] % 3) * a.dw;
        if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W) acc += a.values[k * a.E + e] * in[ih * a.W + iw];
      }
    }
    output[idx] = acc;
  }
}

// grad_input[n, c, ih, iw] = sum over kernels k reading channel c (filter o) and taps (kh, kw) of
// values[k, tap] * grad_output[n, o, oh, ow] with oh*sh = ih + ph - kh*dh (and the same along w).
// Grid: x over pixels of one input plane (one thread each), y over (n, c) planes (grid-stride).
// Threads of a warp share (n, c), so they walk the same kernel list (no divergence but at borders).
template <typename T>
__global__ void __launch_bounds__(kGinThreads)
grad_input_kernel(ConvArgs<T> a, DevicePlan p, const T* __restrict__ grad_output, T* __restrict__ grad_input) {
  const int HW = static_cast<int>(a.H * a.W), W = static_cast<int>(a.W);
  const int64_t OHW = a.OH * a.OW;
  const int idx = static_cast<int>(blockIdx.x) * kGinThreads + static_cast<int>(threadIdx.x);
  if (idx >= HW) return;  // no __syncthreads in this kernel
  const int ih = idx / W, iw = idx - ih * W;
  for (int64_t nc = blockIdx.y; nc < a.N * a.Cin; nc += gridDim.y) {
    const int64_t n = nc / a.Cin, c = nc - n * a.Cin;
    T acc = T(0);
    for (int j = p.chan_ptr[c]; j < p.chan_ptr[c + 1]; ++j) {
      const T* go = grad_output + (n * a.Cout + p.t_out[j]) * OHW;
      const int64_t k = p.t_kernel[j];
      const uint8_t* pat = a.patterns + p.t_pattern[j] * a.E;
      for (int e = 0; e < a.E; ++e) {
        const int hs = ih + a.ph - (pat[e] / 3) * a.dh, ws = iw + a.pw - (pat[e] % 3) * a.dw;
        if (hs < 0 || ws < 0 || hs % a.sh != 0 || ws % a.sw != 0) continue;
        const int oh = hs / a.sh, ow = ws / a.sw;
        if (oh >= a.OH || ow >= a.OW) continue;
        acc += a.values[k * a.E + e] * go[static_cast<int64_t>(oh) * a.OW + ow];
      }
    }
    grad_input[nc * HW + idx] = acc;
  }
}

// grad_values[k, e] = sum over n, oh, ow of input[n, c, ih, iw] * grad_output[n, o, oh, ow]. One block per
// kernel k (grid-stride over kernels); the block reduction uses shared memory only.
template <typename T>
__global__ void __launch_bounds__(kGvThreads)
grad_values_kernel(ConvArgs<T> a, DevicePlan p, const int32_t* __restrict__ kernel_channel,
                   const uint8_t* __restrict__ kernel_pattern, int64_t nnz, const T* __restrict__ input,
                   const T* __restrict__ grad_output, T* __restrict__ grad_values) {
  PATSPARSE_DYN_SMEM(smem);
  T* s_red = reinterpret_cast<T*>(smem);  // [kGvThreads]
  const int tid = threadIdx.x;
  const int OW = static_cast<int>(a.OW), plane = static_cast<int>(a.OH * a.OW);
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  for (int64_t k = blockIdx.x; k < nnz; k += gridDim.x) {
    const int64_t o = p.kernel_out[k], c = kernel_channel[k];
    const uint8_t* pat = a.patterns + static_cast<int64_t>(kernel_pattern[k]) * a.E;
    int dy[kMaxEntries], dx[kMaxEntries];
    T acc[kMaxEntries];
#pragma unroll
    for (int e = 0; e < kMaxEntries; ++e) {
      dy[e] = e < a.E ? (pat[e] / 3) * a.dh - a.ph : 0;
      dx[e] = e < a.E ? (pat[e] % 3) * a.dw - a.pw : 0;
      acc[e] = T(0);
    }
    for (int64_t n = 0; n < a.N; ++n) {
      const T* go = grad_output + (n * a.Cout + o) * plane;
      const T* in = input + (n * a.Cin + c) * H * W;
      for (int idx = tid; idx < plane; idx += kGvThreads) {
        const int oh = idx / OW, ow = idx - oh * OW;
        const T g = go[idx];
#pragma unroll
        for (int e = 0; e < kMaxEntries; ++e) {
          if (e >= a.E) break;
          const int ih = oh * a.sh + dy[e], iw = ow * a.sw + dx[e];
          if (ih >= 0 && ih < H && iw >= 0 && iw < W) acc[e] += g * in[static_cast<int64_t>(ih) * W + iw];
        }
      }
    }
#pragma unroll
    for (int e = 0; e < kMaxEntries; ++e) {
      if (e >= a.E) break;  // block-uniform
      s_red[tid] = acc[e];
      __syncthreads();
      for (int s = kGvThreads / 2; s > 0; s >>= 1) {
        if (tid < s) s_red[tid] += s_red[tid + s];
        __syncthreads();
      }
      if (tid == 0) grad_values[k * a.E + e] = s_red[0];
      __syncthreads();  // s_red is reused
    }
  }
}

}  // namespace cuda
}  // namespace patsparse
