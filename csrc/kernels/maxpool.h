// Max-pool with kernel = stride = k, no padding, floor mode (F.max_pool2d(x, k)), NCHW. Torch-free.
// optimize_for_inference runs VGG-style pools through it between the NCHW pattern convs: PyTorch's
// NCHW max_pool2d (and the strided-view maxima that replaced it) read the large early activations
// more than once (benchmarks/results/models.md).
#pragma once

#include <cstdint>

#include "dispatch.h"
#include "pattern_conv.h"

namespace patsparse {

struct MaxPoolShape {
  int64_t planes = 0, h = 0, w = 0, k = 2;  // planes = batch * channels
  int64_t out_h() const { return h / k; }
  int64_t out_w() const { return w / k; }
};

// Throws std::invalid_argument unless planes, h, w >= 0, k >= 1, the window fits (h, w >= k, also
// for planes = 0: as F.max_pool2d, an empty output is an error) and the element count fits in int64.
void check_max_pool_shape(const MaxPoolShape& s);

// The running maximum m updated by the next window element v: v wins only when larger (the first
// maximum stays, as PyTorch's max_pool2d) or NaN (NaN propagates). The SIMD kernels do the same per lane.
template <typename T>
inline T max_first(T m, T v) {
  return (v > m || v != v) ? v : m;
}

// y[p, oy, ox] = max of x[p, oy k + i, ox k + j], i, j < k; x [planes, h, w] and y [planes, out_h,
// out_w] contiguous. Each window is reduced in PyTorch's order, row by row, each row left to right,
// so ties of -0 / +0 keep the same sign and NaN the same payload as F.max_pool2d. max_first is
// associative, so the SIMD kernels (each row's pairs, then the two rows) give identical bits.
template <typename T>
void reference_max_pool2d(const MaxPoolShape& s, const T* x, T* y, const ParallelFor& pfor = serial_for);

// fp32 through `isa` (scalar: the reference; the SIMD kernels take k = 2, other k run the
// reference). `num_threads` only sets how finely the work is split. Throws std::invalid_argument
// like check_max_pool_shape, or when the ISA path is not available.
void max_pool2d_f32(Isa isa, const MaxPoolShape& s, const float* x, float* y, const ParallelFor& pfor = serial_for,
                    int num_threads = 1);

// An ISA's k = 2 kernel (maxpool_impl.h instantiates it per ISA): output rows [oy0, oy1) of plane p.
struct MaxPoolKernels {
  void (*rows2)(const MaxPoolShape& s, const float* x, float* y, int64_t plane, int64_t oy0, int64_t oy1) = nullptr;
};

#if defined(__x86_64__) || defined(_M_X64)
const MaxPoolKernels& avx2_max_pool_kernels();
const MaxPoolKernels& avx512_max_pool_kernels();
#elif defined(__aarch64__)
const MaxPoolKernels& neon_max_pool_kernels();
#endif

}  // namespace patsparse
