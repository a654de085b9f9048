// ExecuTorch binding of the inference ops: kernels for the out-variant schemas of csrc/ops_out.cpp,
// registered with EXECUTORCH_LIBRARY, over the same torch-free kernel core as the torch binding
// (csrc/kernels: run-time ISA dispatch, x86 AVX2 / AVX-512 or ARM NEON micro-kernels, the plan
// cache). No torch here: built against ExecuTorch's headers only (csrc/executorch/CMakeLists.txt).
//
// Contract of every kernel: check every argument (dtype, rank, layout, index arrays) and, on a bad
// one, log the reason and fail the call with InvalidArgument (ExecuTorch then returns an error from
// Method::execute); never read through an unchecked index. fp32, contiguous (default dim order).
//
// Adding an op: a `<op>_out` function below (unpack the ExecuTorch tensors into the core's structs,
// call the core), one EXECUTORCH_LIBRARY line, and its out schema in csrc/ops_out.cpp.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#ifdef ET_USE_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#endif

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "kernels/dispatch.h"
#include "kernels/pattern_conv.h"
#include "kernels/plan.h"

namespace patsparse {
namespace et {

using executorch::aten::IntArrayRef;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// Plans for the fp32 pattern conv, found by index content (kernels/plan.h). A .pte's weights are
// constants at fixed addresses, so after the first call every lookup is a pointer-hint hit.
PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// Work goes through ExecuTorch's parallel_for (its thread pool, when the build has one: the Python
// runtime's does). The core only uses the thread count as a hint for how finely to split work
// (results do not depend on it); the pool's size is not exported by the wheel, so the hint is the
// hardware's (finer chunks than a smaller pool needs cost little: tasks are taken dynamically).
int num_threads() {
#ifdef ET_USE_THREADPOOL
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
#else
  return 1;
#endif
}

ParallelFor et_parallel_for() {
#ifdef ET_USE_THREADPOOL
  return [](int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    if (n > 0) executorch::extension::parallel_for(0, n, grain < 1 ? 1 : grain, body);
  };
#else
  return serial_for;
#endif
}

// Logs `error` and fails the call when it is not empty; true when it is.
bool ok(KernelRuntimeContext& ctx, const std::string& error) {
  if (error.empty()) return true;
  ET_LOG(Error, "patsparse: %s", error.c_str());
  ctx.fail(Error::InvalidArgument);
  return false;
}

std::string size_string(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// "" when t has this dtype, rank and the default (contiguous) dim order, else what is wrong.
std::string check_tensor(const Tensor& t, const char* name, ScalarType dtype, int64_t dim) {
  const std::string n(name);
  if (t.scalar_type() != dtype)
    return n + " must be " + executorch::runtime::toString(dtype) + ", got " +
           executorch::runtime::toString(t.scalar_type());
  if (t.dim() != dim) return n + " must be " + std::to_string(dim) + "-D, got " + size_string(t);
  if (!executorch::runtime::tensor_is_default_dim_order(t))
    return n + " must be contiguous (default dim order; channels_last is not supported by this kernel)";
  return "";
}

std::string check_pair(IntArrayRef v, const char* name) {
  return v.size() == 2 ? "" : std::string(name) + " must have 2 elements, got " + std::to_string(v.size());
}

// Fills s and w from the arguments of pattern_conv2d, or returns what is wrong with them (shapes and
// dtypes here; the index arrays are validated when the plan is built, or by validate() below).
std::string pattern_conv2d_args(const Tensor& input, const Tensor& patterns, const Tensor& filter_ptr,
                                const Tensor& kernel_channel, const Tensor& kernel_pattern, const Tensor& values,
                                const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                                IntArrayRef dilation, ConvShape* s, PatternWeights<float>* w) {
  std::string e;
  if (!(e = check_tensor(input, "input", ScalarType::Float, 4)).empty()) return e;
  if (!(e = check_tensor(patterns, "patterns", ScalarType::Byte, 2)).empty()) return e;
  if (!(e = check_tensor(filter_ptr, "filter_ptr", ScalarType::Int, 1)).empty()) return e;
  if (!(e = check_tensor(kernel_channel, "kernel_channel", ScalarType::Int, 1)).empty()) return e;
  if (!(e = check_tensor(kernel_pattern, "kernel_pattern", ScalarType::Byte, 1)).empty()) return e;
  if (!(e = check_tensor(values, "values", ScalarType::Float, 2)).empty()) return e;
  if (filter_ptr.size(0) < 1) return "filter_ptr must have Cout + 1 >= 1 entries";
  const int64_t nnz = kernel_channel.size(0), out_channels = filter_ptr.size(0) - 1;
  if (kernel_pattern.size(0) != nnz)
    return "kernel_pattern has " + std::to_string(kernel_pattern.size(0)) + " entries but kernel_channel has " +
           std::to_string(nnz);
  if (values.size(0) != nnz || values.size(1) != patterns.size(1))
    return "values must be [nnz, E] = [" + std::to_string(nnz) + ", " + std::to_string(patterns.size(1)) +
           "], got " + size_string(values);
  if (bias) {
    if (!(e = check_tensor(*bias, "bias", ScalarType::Float, 1)).empty()) return e;
    if (bias->size(0) != out_channels)
      return "bias must be [" + std::to_string(out_channels) + "], got " + size_string(*bias);
  }
  if (!(e = check_pair(stride, "stride")).empty() || !(e = check_pair(padding, "padding")).empty() ||
      !(e = check_pair(dilation, "dilation")).empty())
    return e;
  s->batch = input.size(0); s->in_channels = input.size(1); s->in_h = input.size(2); s->in_w = input.size(3);
  s->out_channels = out_channels;
  s->stride_h = stride[0]; s->stride_w = stride[1]; s->pad_h = padding[0]; s->pad_w = padding[1];
  s->dil_h = dilation[0]; s->dil_w = dilation[1];
  s->out_h = conv_out_size(s->in_h, s->pad_h, s->dil_h, s->stride_h);
  s->out_w = conv_out_size(s->in_w, s->pad_w, s->dil_w, s->stride_w);
  if (s->out_h < 0 || s->out_w < 0)
    return "stride and dilation must be >= 1 and padding >= 0 (and input size + 2 * padding must fit in int64)";
  if (s->out_h == 0 || s->out_w == 0) return "input " + size_string(input) + " is too small for the 3x3 kernel";
  if (!(e = check_shape(*s)).empty()) return e;
  constexpr int64_t kMaxSize = std::numeric_limits<executorch::aten::SizesType>::max();
  if (s->out_channels > kMaxSize || s->out_h > kMaxSize || s->out_w > kMaxSize)
    return "output size does not fit ExecuTorch's int32 sizes";
  w->num_patterns = patterns.size(0);
  w->entries = patterns.size(1);
  w->out_channels = out_channels;
  w->nnz = nnz;
  w->patterns = patterns.const_data_ptr<uint8_t>();
  w->filter_ptr = filter_ptr.const_data_ptr<int32_t>();
  w->kernel_channel = kernel_channel.const_data_ptr<int32_t>();
  w->kernel_pattern = kernel_pattern.const_data_ptr<uint8_t>();
  w->values = values.const_data_ptr<float>();
  return "";
}

// patsparse::pattern_conv2d.out: out = conv2d(input, the pattern-compressed weight) + bias.
Tensor& pattern_conv2d_out(KernelRuntimeContext& ctx, const Tensor& input, const Tensor& patterns,
                           const Tensor& filter_ptr, const Tensor& kernel_channel, const Tensor& kernel_pattern,
                           const Tensor& values, const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, Tensor& out) {
  ConvShape s;
  PatternWeights<float> w;
  if (!ok(ctx, pattern_conv2d_args(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias,
                                   stride, padding, dilation, &s, &w)))
    return out;
  if (!ok(ctx, check_tensor(out, "out", ScalarType::Float, 4))) return out;
  const std::array<executorch::aten::SizesType, 4> sizes = {
      static_cast<executorch::aten::SizesType>(s.batch), static_cast<executorch::aten::SizesType>(s.out_channels),
      static_cast<executorch::aten::SizesType>(s.out_h), static_cast<executorch::aten::SizesType>(s.out_w)};
  if (executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) != Error::Ok) {
    ok(ctx, "cannot resize out " + size_string(out) + " to [" + std::to_string(s.batch) + ", " +
                std::to_string(s.out_channels) + ", " + std::to_string(s.out_h) + ", " + std::to_string(s.out_w) + "]");
    return out;
  }
  try {
    const Isa isa = active_isa();
    std::shared_ptr<const ExecPlan> plan;
    if (isa != Isa::Scalar) {
      plan = plan_cache().get(w, s.in_channels);  // validates the index arrays when it builds
    } else if (!ok(ctx, validate(w, s.in_channels))) {
      return out;
    }
    if (out.numel() > 0)
      forward_f32(isa, s, w, plan.get(), input.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
                  out.mutable_data_ptr<float>(), et_parallel_for(), num_threads());
  } catch (const std::exception& e) {
    ok(ctx, std::string("invalid compressed weight or shape: ") + e.what());
  }
  return out;
}

}  // namespace et
}  // namespace patsparse

EXECUTORCH_LIBRARY(patsparse, "pattern_conv2d.out", patsparse::et::pattern_conv2d_out);

// Forces the kernel path of this library ("scalar", "avx2", "avx512", "neon", "auto"; PATSPARSE_ISA
// sets the initial one), as torch.ops.patsparse.set_isa does for the torch binding: 1 on success,
// 0 when the name is unknown or the path is not supported here. (Python: export.set_executorch_isa.)
extern "C" __attribute__((visibility("default"))) int patsparse_et_set_isa(const char* name) {
  patsparse::Isa isa;
  return name && patsparse::parse_isa(name, &isa) && patsparse::set_active_isa(isa) ? 1 : 0;
}

// [hits, builds, size] of this library's plan cache into stats[0..2] (tests: the program really ran
// these kernels, and built each layer's plan once).
extern "C" __attribute__((visibility("default"))) void patsparse_et_plan_cache_stats(int64_t* stats) {
  const patsparse::PlanCacheStats st = patsparse::et::plan_cache().stats();
  stats[0] = st.hits;
  stats[1] = st.builds;
  stats[2] = st.size;
}
