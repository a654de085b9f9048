// Depthwise 3x3 convolution (groups == channels, padding 1, dilation 1, any stride) with a bias +
// clamp output stage, NCHW. Torch-free. optimize_for_inference runs MobileNet-style depthwise convs
// (BatchNorm folded into weight and bias, ReLU6 as the clamp) through it between the NCHW sparse
// 1x1 convs: PyTorch's NCHW depthwise path is much slower than its channels_last one, and converting
// every activation between the two layouts costs more than it saves (benchmarks/results/models.md).
#pragma once

#include <cstdint>
#include <limits>

#include "dispatch.h"
#include "pattern_conv.h"

namespace patsparse {

struct DepthwiseShape {
  int64_t batch = 0, channels = 0, h = 0, w = 0, stride_h = 1, stride_w = 1;
  int64_t out_h() const { return (h - 1) / stride_h + 1; }  // padding 1, kernel 3
  int64_t out_w() const { return (w - 1) / stride_w + 1; }
};

// Throws std::invalid_argument unless every size is >= 0 (h, w >= 1 when batch * channels > 0),
// strides >= 1 and the element counts fit in int64.
void check_depthwise_shape(const DepthwiseShape& s);

// x [batch, channels, h, w] and y [batch, channels, out_h, out_w], contiguous, not overlapping;
// weight [channels, 3, 3]; bias [channels] or null (0). y = clamp(conv(x) + bias, lo, hi).
template <typename T>
struct DepthwiseIo {
  const T* x = nullptr;
  T* y = nullptr;
  const T* weight = nullptr;
  const T* bias = nullptr;
  T lo = -std::numeric_limits<T>::infinity(), hi = std::numeric_limits<T>::infinity();
};

// clamp(acc + bias, lo, hi); NaN propagates (as in spmm_epilogue).
template <typename T>
inline T depthwise_epilogue(T acc, T bias, T lo, T hi) {
  T v = acc + bias;
  v = v < lo ? lo : v;
  return hi < v ? hi : v;
}

// The tap sum of output column ox of a stride-1 row: rows[dy] is input row oy - 1 + dy (null where
// it is padding), taps in the order dy, dx (the SIMD kernels' order too).
template <typename T>
inline T depthwise_taps(const T* const rows[3], const T* wk, int64_t w, int64_t ox) {
  T acc = 0;
  for (int dy = 0; dy < 3; ++dy) {
    if (!rows[dy]) continue;
    for (int dx = 0; dx < 3; ++dx) {
      const int64_t ix = ox - 1 + dx;
      if (ix >= 0 && ix < w) acc += wk[dy * 3 + dx] * rows[dy][ix];
    }
  }
  return acc;
}

template <typename T>
void reference_depthwise3x3(const DepthwiseShape& s, const DepthwiseIo<T>& io, const ParallelFor& pfor = serial_for);

// fp32 through `isa` (scalar: the reference). `num_threads` only sets how finely the work is split;
// results do not depend on it. Throws std::invalid_argument like check_depthwise_shape, or when the
// ISA path is not available.
void depthwise3x3_f32(Isa isa, const DepthwiseShape& s, const DepthwiseIo<float>& io,
                      const ParallelFor& pfor = serial_for, int num_threads = 1);

// An ISA's kernel (depthwise_impl.h instantiates it per ISA): output rows [oy0, oy1) of plane p
// (image p / channels, channel p % channels), with depthwise_scratch_floats(s, oy1 - oy0) floats of
// scratch.
struct DepthwiseKernels {
  int vec_len = 1;
  void (*rows)(const DepthwiseShape& s, const DepthwiseIo<float>& io, int64_t plane, int64_t oy0, int64_t oy1,
               float* scratch) = nullptr;
};

// The SIMD kernels' scratch for `out_rows` output rows: the zero-padded input rows they read and one
// stride-1 output row per output row, each w + 2 wide (sizes already checked by check_depthwise_shape).
inline int64_t depthwise_scratch_floats(const DepthwiseShape& s, int64_t out_rows) {
  return ((out_rows - 1) * s.stride_h + 3 + out_rows) * (s.w + 2);
}

#if defined(__x86_64__) || defined(_M_X64)
const DepthwiseKernels& avx2_depthwise_kernels();
const DepthwiseKernels& avx512_depthwise_kernels();
#elif defined(__aarch64__)
const DepthwiseKernels& neon_depthwise_kernels();
#endif

}  // namespace patsparse
