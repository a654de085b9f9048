// Host launchers of the CUDA kernels in pattern_conv_kernels.cuh (torch-free).
#include "pattern_conv_cuda.h"

#include "pattern_conv_kernels.cuh"

namespace patsparse {
namespace cuda {

namespace {

constexpr int64_t kMaxGrid = int64_t(1) << 20;  // grid-stride kernels cap their grid here

int64_t blocks_for(int64_t total, int threads) {
  const int64_t b = (total + threads - 1) / threads;
  return b < kMaxGrid ? b : kMaxGrid;
}

template <typename T, int P>
void launch_tiled(const ConvArgs<T>& a, const DevicePlan& p, const FwdLaunch& l, const T* input, const T* bias,
                  T* output, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y));
  const dim3 block(fwd_threads<P>());
  switch (p.group) {
    case 8: forward_tiled_kernel<T, 8, P><<<grid, block, l.smem_bytes, stream>>>(a, p, l, input, bias, output); break;
    case 4: forward_tiled_kernel<T, 4, P><<<grid, block, l.smem_bytes, stream>>>(a, p, l, input, bias, output); break;
    case 2: forward_tiled_kernel<T, 2, P><<<grid, block, l.smem_bytes, stream>>>(a, p, l, input, bias, output); break;
    default: forward_tiled_kernel<T, 1, P><<<grid, block, l.smem_bytes, stream>>>(a, p, l, input, bias, output); break;
  }
}

// The backward kernels index within one image plane with 32-bit ints.
template <typename T>
bool planes_fit_int(const ConvArgs<T>& a) {
  return a.H * a.W < (int64_t(1) << 31) && a.OH * a.OW < (int64_t(1) << 31);
}

}  // namespace

template <typename T>
cudaError_t launch_forward(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                           const T* input, const T* bias, T* output, int pix, bool simple, cudaStream_t stream) {
  const ConvArgs<T> a = make_args(s, w);
  const int64_t total = a.N * a.Cout * a.OH * a.OW;
  if (total == 0) return cudaSuccess;
  const FwdLaunch l = forward_launch(a, plan, pix);
  if (simple || !l.tiled) {
    forward_simple_kernel<T><<<static_cast<unsigned>(blocks_for(total, 256)), 256, 0, stream>>>(
        a, w.filter_ptr, w.kernel_channel, w.kernel_pattern, input, bias, output);
  } else if (l.pix == 1) {
    launch_tiled<T, 1>(a, plan, l, input, bias, output, stream);
  } else if (l.pix == 4) {
    launch_tiled<T, 4>(a, plan, l, input, bias, output, stream);
  } else {
    launch_tiled<T, 2>(a, plan, l, input, bias, output, stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_grad_input(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                              const T* grad_output, T* grad_input, cudaStream_t stream) {
  const ConvArgs<T> a = make_args(s, w);
  if (a.N * a.Cin * a.H * a.W == 0) return cudaSuccess;
  if (!planes_fit_int(a)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((a.H * a.W + kGinThreads - 1) / kGinThreads),
                  static_cast<unsigned>(a.N * a.Cin < 65535 ? a.N * a.Cin : 65535));
  grad_input_kernel<T><<<grid, kGinThreads, 0, stream>>>(a, plan, grad_output, grad_input);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_grad_values(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                               const T* input, const T* grad_output, T* grad_values, cudaStream_t stream) {
  const ConvArgs<T> a = make_args(s, w);
  if (w.nnz == 0) return cudaSuccess;
  if (!planes_fit_int(a)) return cudaErrorInvalidValue;
  // With no output pixels the sums are empty: the kernel writes zeros.
  const unsigned grid = static_cast<unsigned>(w.nnz < kMaxGrid ? w.nnz : kMaxGrid);
  grad_values_kernel<T><<<grid, kGvThreads, kGvThreads * sizeof(T), stream>>>(
      a, plan, w.kernel_channel, w.kernel_pattern, w.nnz, input, grad_output, grad_values);
  return cudaGetLastError();
}

#define PATSPARSE_CUDA_INSTANTIATE(T)                                                                      \
  template cudaError_t launch_forward<T>(const ConvShape&, const PatternWeights<T>&, const DevicePlan&,     \
                                         const T*, const T*, T*, int, bool, cudaStream_t);                  \
  template cudaError_t launch_grad_input<T>(const ConvShape&, const PatternWeights<T>&, const DevicePlan&,  \
                                            const T*, T*, cudaStream_t);                                    \
  template cudaError_t launch_grad_values<T>(const ConvShape&, const PatternWeights<T>&, const DevicePlan&, \
                                             const T*, const T*, T*, cudaStream_t);
PATSPARSE_CUDA_INSTANTIATE(float)
PATSPARSE_CUDA_INSTANTIATE(double)
#undef PATSPARSE_CUDA_INSTANTIATE

}  // namespace cuda
}  // namespace patsparse
