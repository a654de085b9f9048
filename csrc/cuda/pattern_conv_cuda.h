// Launchers of the torch-free CUDA kernels (pattern_conv_kernels.cu). All pointers are device
// pointers; the plan's arrays must be on the device too, and the index arrays must have been
// validated (build_plan does it). Launches are asynchronous on `stream`; the return value is the
// launch error (cudaSuccess when fine), never a result of the kernel itself.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/pattern_conv.h"
#include "plan.h"

namespace patsparse {
namespace cuda {

// pix: output pixels per thread of the tiled forward (1, 2 or 4; anything else means the default);
// simple: force the one-thread-per-output kernel (a cross-check path).
template <typename T>
cudaError_t launch_forward(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                           const T* input, const T* bias, T* output, int pix, bool simple, cudaStream_t stream);
template <typename T>
cudaError_t launch_grad_input(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                              const T* grad_output, T* grad_input, cudaStream_t stream);
template <typename T>
cudaError_t launch_grad_values(const ConvShape& s, const PatternWeights<T>& w, const DevicePlan& plan,
                               const T* input, const T* grad_output, T* grad_values, cudaStream_t stream);
}  // namespace cuda
}  // namespace patsparse
