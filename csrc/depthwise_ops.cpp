// Thin torch binding of the depthwise 3x3 kernel (kernels/depthwise.h): patsparse::depthwise_conv3x3
// = clamp(conv2d(input, weight, bias, stride, padding=1, groups=channels) , lo, hi). fp32 runs
// through the active ISA, fp64 through the reference. Inference only (input that needs a gradient is refused).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <stdexcept>

#include "kernels/depthwise.h"
#include "kernels/dispatch.h"
#include "ops_common.h"

namespace patsparse {
namespace {

// fp32 through the active ISA, fp64 through the reference.
void run(const DepthwiseShape& s, const DepthwiseIo<float>& io) {
  depthwise3x3_f32(active_isa(), s, io, aten_parallel_for(), at::get_num_threads());
}
void run(const DepthwiseShape& s, const DepthwiseIo<double>& io) {
  reference_depthwise3x3<double>(s, io, aten_parallel_for());
}

at::Tensor depthwise_conv3x3_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, double lo, double hi) {
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "patsparse: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu(), "patsparse: input must be on the CPU, got ", input.device());
  TORCH_CHECK(input.dim() == 4, "patsparse: input must be 4-D [N, C, H, W], got ", input.dim(), "-D");
  const int64_t batch = input.size(0), channels = input.size(1), h = input.size(2), w = input.size(3);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() && weight.device().is_cpu() &&
                  weight.sizes() == at::IntArrayRef({channels, 1, 3, 3}),
              "patsparse: depthwise weight must be a CPU ", input.scalar_type(), " [", channels,
              ", 1, 3, 3] tensor, got ", weight.scalar_type(), " ", weight.sizes());
  if (bias)
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() && bias->device().is_cpu() && bias->dim() == 1 &&
                    bias->size(0) == channels,
                "patsparse: bias must be a CPU ", input.scalar_type(), " [", channels, "] tensor, got ",
                bias->scalar_type(), " ", bias->sizes());
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, "patsparse: stride must be 2 ints >= 1, got ",
              stride);
  check_clamp_bounds("depthwise_conv3x3", lo, hi);
  TORCH_CHECK(h > 0 && w > 0, "patsparse: input ", input.sizes(), " has an empty spatial size");
  const at::Tensor bias_or_none = bias ? *bias : at::Tensor();
  check_inference_only("depthwise_conv3x3", {&input, &weight, &bias_or_none});
  DepthwiseShape s;
  s.batch = batch, s.channels = channels, s.h = h, s.w = w, s.stride_h = stride[0], s.stride_w = stride[1];
  const auto memory_format = input.suggest_memory_format();
  const at::Tensor x = input.contiguous(), wt = weight.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  auto out = at::empty({batch, channels, s.out_h(), s.out_w()}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_conv3x3", [&] {
    DepthwiseIo<scalar_t> io;
    io.x = x.data_ptr<scalar_t>();
    io.y = out.data_ptr<scalar_t>();
    io.weight = wt.data_ptr<scalar_t>();
    io.bias = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    io.lo = static_cast<scalar_t>(lo);
    io.hi = static_cast<scalar_t>(hi);
    try {
      run(s, io);
    } catch (const std::invalid_argument& e) {
      TORCH_CHECK(false, "patsparse: ", e.what());
    }
  });
  return memory_format == at::MemoryFormat::Contiguous ? out : out.contiguous(memory_format);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  m.def("depthwise_conv3x3(Tensor input, Tensor weight, Tensor? bias, int[2] stride, float lo, float hi) -> Tensor");
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) { m.impl("depthwise_conv3x3", &depthwise_conv3x3_cpu); }

}  // namespace patsparse
