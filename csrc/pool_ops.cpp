// Thin torch binding of the max-pool kernel (kernels/maxpool.h): patsparse::max_pool2d(input, k) =
// F.max_pool2d(input, k) (kernel = stride = k, no padding, floor mode) for 4-D NCHW CPU input. fp32
// runs through the active ISA, fp64 through the reference. Inference only (input that needs a gradient
// is refused).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels/dispatch.h"
#include "kernels/maxpool.h"
#include "ops_common.h"

namespace patsparse {
namespace {

void run(const MaxPoolShape& s, const float* x, float* y) {
  max_pool2d_f32(active_isa(), s, x, y, aten_parallel_for(), at::get_num_threads());
}
void run(const MaxPoolShape& s, const double* x, double* y) { reference_max_pool2d<double>(s, x, y, aten_parallel_for()); }

at::Tensor max_pool2d_cpu(const at::Tensor& input, int64_t k) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "patsparse: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu(), "patsparse: input must be on the CPU, got ", input.device());
  TORCH_CHECK(input.dim() == 4, "patsparse: input must be 4-D [N, C, H, W], got ", input.dim(), "-D");
  TORCH_CHECK(input.size(1) > 0, "patsparse: max_pool2d input must have channels, got ", input.sizes());
  check_inference_only("max_pool2d", {&input});
  MaxPoolShape s;
  s.planes = input.size(0) * input.size(1), s.h = input.size(2), s.w = input.size(3), s.k = k;
  core_call("", [&] { check_max_pool_shape(s); });
  const auto memory_format = input.suggest_memory_format();
  const at::Tensor x = input.contiguous();
  auto out = at::empty({input.size(0), input.size(1), s.out_h(), s.out_w()}, input.options());
  if (out.numel() > 0)
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d", [&] {
      core_call("", [&] { run(s, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>()); });
    });
  // The layout F.max_pool2d gives (the kernel itself reads and writes NCHW).
  return memory_format == at::MemoryFormat::Contiguous ? out : out.contiguous(memory_format);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) { m.def("max_pool2d(Tensor input, int k) -> Tensor"); }

TORCH_LIBRARY_IMPL(patsparse, CPU, m) { m.impl("max_pool2d", &max_pool2d_cpu); }

}  // namespace patsparse
