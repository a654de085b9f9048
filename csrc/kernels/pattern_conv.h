// Torch-free core of torch_patsparse: the compressed pattern format, its validation,
// and the scalar reference kernels every other path (AVX2, AVX-512, NEON, CUDA) is tested against.
// Nothing here includes torch: the same sources build into the Python extension, the libtorch
// op library, the standalone C++ tests and the aarch64 cross build.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "checked.h"
#include "epilogue.h"
#include "error.h"

namespace patsparse {

// Geometry of one 3x3 convolution call. Input is NCHW contiguous, output NCHW contiguous.
struct ConvShape {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, out_h = 0, out_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
};

// Output size of a 3x3 convolution along one axis (PyTorch's formula); 0 when the dilated
// kernel does not fit the padded input (C++ division truncates toward zero, so check first);
// -1 when an argument is out of range (in < 0, pad < 0, dil < 1, stride < 1) or in + 2 * pad
// (or 2 * dil) does not fit in int64.
inline int64_t conv_out_size(int64_t in, int64_t pad, int64_t dil, int64_t stride) {
  if (in < 0 || pad < 0 || dil < 1 || stride < 1) return -1;
  int64_t two_pad, two_dil, padded, span;
  if (!mul_ok(pad, 2, &two_pad) || !mul_ok(dil, 2, &two_dil) || !add_ok(in, two_pad, &padded) ||
      !sub_ok(padded, two_dil, &span) || !sub_ok(span, 1, &span))
    return -1;
  return span < 0 ? 0 : span / stride + 1;
}

// Null when every size the kernels derive from s is in range: non-negative sizes, stride and
// dilation >= 1, out_h / out_w equal to conv_out_size (so in + 2 * pad fits in int64, which bounds
// every input coordinate a tap reaches), and the input and output element counts fit in int64.
// Otherwise the problem. The reference kernels rely on it; callers use check_shape / shape_ok.
namespace detail {
inline const char* shape_problem(const ConvShape& s) {
  if (s.batch < 0 || s.in_channels < 0 || s.in_h < 0 || s.in_w < 0 || s.out_channels < 0)
    return "negative sizes";
  if (s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1 || s.pad_h < 0 || s.pad_w < 0)
    return "stride and dilation must be >= 1 and padding >= 0";
  const int64_t oh = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
  const int64_t ow = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
  if (oh < 0 || ow < 0) return "padding or dilation too large (input size + 2 * padding overflows int64)";
  if (s.out_h != oh || s.out_w != ow) return "output size does not match the convolution arguments";
  // Per image too: with batch 0 the full products are 0, but kernels still compute plane sizes.
  int64_t plane, image, n;
  if (!product_ok({s.in_h, s.in_w}, &plane) || !product_ok({s.in_channels, plane}, &image) ||
      !product_ok({s.batch, image}, &n))
    return "input element count overflows int64";
  if (!product_ok({s.out_h, s.out_w}, &plane) || !product_ok({s.out_channels, plane}, &image) ||
      !product_ok({s.batch, image}, &n))
    return "output element count overflows int64";
  return nullptr;
}
}  // namespace detail
// Throws std::invalid_argument naming the problem unless s is in range (detail::shape_problem).
inline void check_shape(const ConvShape& s) {
  if (const char* why = detail::shape_problem(s)) throw_invalid(why);
}
inline bool shape_ok(const ConvShape& s) { return detail::shape_problem(s) == nullptr; }

// Borrowed view of the FKW-style compressed weight of a [Cout, Cin, 3, 3] conv.
//   patterns       [K, E]   kept positions (0..8, row-major in the 3x3 kernel) of each pattern
//   filter_ptr     [Cout+1] CSR over output channels
//   kernel_channel [nnz]    input channel of each kept kernel
//   kernel_pattern [nnz]    pattern id of each kept kernel
//   values         [nnz, E] kept weights, in pattern order
template <typename T>
struct PatternWeights {
  int64_t num_patterns = 0;  // K
  int64_t entries = 0;       // E (4 in the papers)
  int64_t out_channels = 0;  // Cout
  int64_t nnz = 0;           // kept kernels
  const uint8_t* patterns = nullptr;
  const int32_t* filter_ptr = nullptr;
  const int32_t* kernel_channel = nullptr;
  const uint8_t* kernel_pattern = nullptr;
  const T* values = nullptr;
};

// Checks every index of the format against `in_channels`; throws std::invalid_argument naming the
// first problem. Kernels call this before touching memory through an index.
void validate_format(int64_t num_patterns, int64_t entries, int64_t out_channels, int64_t nnz,
                            const uint8_t* patterns, const int32_t* filter_ptr,
                            const int32_t* kernel_channel, const uint8_t* kernel_pattern,
                            int64_t in_channels);

template <typename T>
void validate(const PatternWeights<T>& w, int64_t in_channels) {
  validate_format(w.num_patterns, w.entries, w.out_channels, w.nnz, w.patterns, w.filter_ptr,
                         w.kernel_channel, w.kernel_pattern, in_channels);
}

// Runs body(begin, end) over [0, n), possibly split across threads. The torch binding passes
// at::parallel_for; the torch-free build uses serial_for.
using ParallelFor = std::function<void(int64_t n, int64_t grain,
                                       const std::function<void(int64_t, int64_t)>& body)>;
void serial_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

// Scalar reference kernels (float and double). Plain loops, written to be obviously right.
// forward:     output[N, Cout, OH, OW] = conv(input, W) + bias (bias may be null)
// grad_input:  grad_input[N, Cin, H, W] = conv_transpose(grad_output, W)   (overwritten)
// grad_values: grad_values[nnz, E] = d loss / d values                     (overwritten)
template <typename T>
void reference_forward(const ConvShape& s, const PatternWeights<T>& w, const T* input, const T* bias,
                       T* output, const ParallelFor& pfor = serial_for);
// fp32 forward with the fused output stage (epilogue.h): output = ep(conv(input, W)); ep.residual
// has the output's layout. The bias form above is this with ep.shift = bias.
void reference_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const Epilogue& ep,
                       float* output, const ParallelFor& pfor = serial_for);
template <typename T>
void reference_grad_input(const ConvShape& s, const PatternWeights<T>& w, const T* grad_output,
                          T* grad_input, const ParallelFor& pfor = serial_for);
template <typename T>
void reference_grad_values(const ConvShape& s, const PatternWeights<T>& w, const T* input,
                           const T* grad_output, T* grad_values, const ParallelFor& pfor = serial_for);

}  // namespace patsparse
