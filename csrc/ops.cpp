// Thin torch binding over the torch-free kernel core: op schemas (TORCH_LIBRARY, so TorchScript
// and C++ runtimes see them), argument checks, and the CPU implementations.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <stdexcept>

#include "kernels/backward.h"
#include "kernels/dispatch.h"
#include "kernels/pattern_conv.h"
#include "kernels/plan.h"
#include "ops_common.h"

namespace patsparse {

ParallelFor aten_parallel_for() {
  return [](int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    at::parallel_for(0, n, grain, body);
  };
}

at::Tensor int32_channels(const at::Tensor& kernel_channel) {
  return kernel_channel.scalar_type() == at::kInt ? kernel_channel.contiguous() : kernel_channel.to(at::kInt).contiguous();
}

void check_format(const at::Tensor& patterns, const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                  const at::Tensor& kernel_pattern, const at::Tensor& values, int64_t in_channels,
                  bool check_indices) {
  TORCH_CHECK(patterns.dim() == 2 && patterns.scalar_type() == at::kByte,
              "patsparse: patterns must be a uint8 [K, E] tensor, got ", patterns.scalar_type(), " ", patterns.sizes());
  TORCH_CHECK(filter_ptr.dim() == 1 && filter_ptr.scalar_type() == at::kInt && filter_ptr.size(0) >= 1,
              "patsparse: filter_ptr must be an int32 [Cout+1] tensor, got ", filter_ptr.scalar_type(), " ", filter_ptr.sizes());
  TORCH_CHECK(kernel_channel.dim() == 1 &&
                  (kernel_channel.scalar_type() == at::kInt || kernel_channel.scalar_type() == at::kShort),
              "patsparse: kernel_channel must be an int32 or int16 [nnz] tensor, got ", kernel_channel.scalar_type(), " ",
              kernel_channel.sizes());
  TORCH_CHECK(kernel_pattern.dim() == 1 && kernel_pattern.scalar_type() == at::kByte,
              "patsparse: kernel_pattern must be a uint8 [nnz] tensor, got ", kernel_pattern.scalar_type(), " ", kernel_pattern.sizes());
  check_has_data(patterns, "patterns");
  check_has_data(filter_ptr, "filter_ptr");
  check_has_data(kernel_channel, "kernel_channel");
  check_has_data(kernel_pattern, "kernel_pattern");
  check_has_data(values, "values");
  const int64_t nnz = kernel_channel.size(0);
  TORCH_CHECK(kernel_pattern.size(0) == nnz, "patsparse: kernel_pattern has ", kernel_pattern.size(0),
              " entries but kernel_channel has ", nnz);
  TORCH_CHECK(values.dim() == 2 && values.size(0) == nnz && values.size(1) == patterns.size(1),
              "patsparse: values must be [nnz, E] = [", nnz, ", ", patterns.size(1), "], got ", values.sizes());
  if (!check_indices) return;
  // Index arrays are validated on the host before any kernel reads through them.
  auto p = patterns.cpu().contiguous(), fp = filter_ptr.cpu().contiguous();
  auto kc = int32_channels(kernel_channel.cpu()), kp = kernel_pattern.cpu().contiguous();
  core_call("invalid compressed weight: ", [&] {
    validate_format(p.size(0), p.size(1), fp.size(0) - 1, nnz, p.data_ptr<uint8_t>(), fp.data_ptr<int32_t>(),
                    kc.data_ptr<int32_t>(), kp.data_ptr<uint8_t>(), in_channels);
  });
}

void check_float_args(const at::Tensor& input, const at::Tensor& values, const std::optional<at::Tensor>& bias,
                      int64_t out_channels) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "patsparse: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(values.scalar_type() == input.scalar_type(), "patsparse: values dtype ", values.scalar_type(),
              " does not match input dtype ", input.scalar_type());
  if (!bias) return;
  TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "patsparse: bias dtype ", bias->scalar_type(),
              " does not match input dtype ", input.scalar_type());
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, "patsparse: bias must be [", out_channels,
              "], got ", bias->sizes());
}

ConvShape make_shape(at::IntArrayRef input_size, int64_t out_channels, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input_size.size() == 4, "patsparse: input must be 4-D [N, C, H, W], got ", input_size.size(), "-D");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "patsparse: stride, padding and dilation must have 2 elements");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, "patsparse: stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, "patsparse: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "patsparse: padding must be >= 0, got ", padding);
  for (const int64_t d : input_size)
    TORCH_CHECK(d >= 0, "patsparse: input sizes must be >= 0, got ", input_size);
  ConvShape s;
  s.batch = input_size[0]; s.in_channels = input_size[1]; s.in_h = input_size[2]; s.in_w = input_size[3];
  s.out_channels = out_channels;
  s.stride_h = stride[0]; s.stride_w = stride[1]; s.pad_h = padding[0]; s.pad_w = padding[1];
  s.dil_h = dilation[0]; s.dil_w = dilation[1];
  s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
  s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
  TORCH_CHECK(s.out_h >= 0 && s.out_w >= 0, "patsparse: padding ", padding, " and dilation ", dilation,
              " are out of range for input ", input_size, " (input size + 2 * padding or 2 * dilation overflows int64)");
  TORCH_CHECK(s.out_h > 0 && s.out_w > 0, "patsparse: input ", input_size, " is too small for a 3x3 kernel with padding ",
              padding, " and dilation ", dilation);
  try {
    check_shape(s);  // element counts of input and output fit in int64
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, "patsparse: ", e.what(), " (input ", input_size, ", ", out_channels, " output channels, stride ",
                stride, ", padding ", padding, ", dilation ", dilation, ")");
  }
  return s;
}

void check_grad_output(const at::Tensor& grad_output, const ConvShape& s) {
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({s.batch, s.out_channels, s.out_h, s.out_w}),
              "patsparse: grad_output has shape ", grad_output.sizes(), ", expected [", s.batch, ", ", s.out_channels,
              ", ", s.out_h, ", ", s.out_w, "] (the conv output of input [", s.batch, ", ", s.in_channels, ", ", s.in_h,
              ", ", s.in_w, "] with this stride, padding and dilation)");
}

template <typename T>
PatternWeights<T> weights_view(const at::Tensor& patterns, const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                               const at::Tensor& kernel_pattern, const at::Tensor& values) {
  PatternWeights<T> w;
  w.num_patterns = patterns.size(0);
  w.entries = patterns.size(1);
  w.out_channels = filter_ptr.size(0) - 1;
  w.nnz = kernel_channel.size(0);
  w.patterns = patterns.data_ptr<uint8_t>();
  w.filter_ptr = filter_ptr.data_ptr<int32_t>();
  w.kernel_channel = kernel_channel.data_ptr<int32_t>();
  w.kernel_pattern = kernel_pattern.data_ptr<uint8_t>();
  w.values = values.data_ptr<T>();
  return w;
}
template PatternWeights<float> weights_view<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
template PatternWeights<double> weights_view<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

void check_epilogue_args(const at::Tensor& input, const ConvShape& s, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                         double lo, double hi) {
  check_clamp_bounds("pattern_conv2d_fused", lo, hi);
  const std::pair<const char*, const std::optional<at::Tensor>*> per_channel[] = {{"scale", &scale}, {"shift", &shift}};
  for (const auto& [name, t] : per_channel) {
    if (!*t) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == s.out_channels, "patsparse::pattern_conv2d_fused: ", name,
                " must be [", s.out_channels, "], got ", (*t)->sizes());
    TORCH_CHECK((*t)->scalar_type() == input.scalar_type() && (*t)->device() == input.device(),
                "patsparse::pattern_conv2d_fused: ", name, " is ", (*t)->scalar_type(), " on ", (*t)->device(),
                " but the input is ", input.scalar_type(), " on ", input.device());
  }
  if (!residual) return;
  TORCH_CHECK(residual->sizes() == at::IntArrayRef({s.batch, s.out_channels, s.out_h, s.out_w}),
              "patsparse::pattern_conv2d_fused: residual must have the output's shape [", s.batch, ", ", s.out_channels,
              ", ", s.out_h, ", ", s.out_w, "], got ", residual->sizes());
  TORCH_CHECK(residual->scalar_type() == input.scalar_type() && residual->device() == input.device(),
              "patsparse::pattern_conv2d_fused: residual is ", residual->scalar_type(), " on ", residual->device(),
              " but the input is ", input.scalar_type(), " on ", input.device());
}

at::Tensor epilogue_unfused(at::Tensor out, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                            double lo, double hi) {
  if (scale) out = out * scale->view({1, -1, 1, 1});
  if (shift) out = out + shift->view({1, -1, 1, 1});
  if (residual) out = out + *residual;
  const bool has_lo = lo > -std::numeric_limits<double>::infinity(), has_hi = hi < std::numeric_limits<double>::infinity();
  if (has_lo || has_hi)
    out = at::clamp(out, has_lo ? std::optional<at::Scalar>(lo) : std::nullopt,
                    has_hi ? std::optional<at::Scalar>(hi) : std::nullopt);
  return out;
}

namespace {

// fp32 execution plans, found by the content of the index arrays (kernels/plan.h: a plan never
// holds values, and a hit needs equal index arrays), so no write that bypasses version counters
// (fused optimizers, .data, numpy, inference tensors) can make the forward use stale data.
PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// Cout from filter_ptr, checked before any other argument reads it (a 0-d tensor has no size(0)).
int64_t out_channels_of(const at::Tensor& filter_ptr) {
  TORCH_CHECK(filter_ptr.dim() == 1 && filter_ptr.size(0) >= 1,
              "patsparse: filter_ptr must be an int32 [Cout+1] tensor, got ", filter_ptr.sizes());
  return filter_ptr.size(0) - 1;
}

// The forward of pattern_conv2d (bias = the epilogue's shift) and pattern_conv2d_fused: fp32 runs
// the epilogue inside the kernel's output stage, fp64 runs the reference kernel then the epilogue in
// ATen ops. The output has the input's memory format.
at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& patterns, const at::Tensor& filter_ptr,
                       const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern, const at::Tensor& values,
                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                       const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, double lo, double hi, bool fused) {
  const int64_t out_channels = out_channels_of(filter_ptr);
  check_float_args(input, values, fused ? std::nullopt : shift, out_channels);
  ConvShape s = make_shape(input.sizes(), out_channels, stride, padding, dilation);
  if (fused) check_epilogue_args(input, s, scale, shift, residual, lo, hi);
  const bool f32 = input.scalar_type() == at::kFloat;
  const Isa isa = active_isa();
  // The fp32 SIMD paths validate the indices once, when the (cached) plan is built.
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, s.in_channels,
               /*check_indices=*/!(f32 && isa != Isa::Scalar));
  const auto memory_format = input.suggest_memory_format();
  auto x = input.contiguous();
  auto v = values.contiguous();
  auto p = patterns.contiguous(), fp = filter_ptr.contiguous(), kc = int32_channels(kernel_channel), kp = kernel_pattern.contiguous();
  std::optional<at::Tensor> sc, sh, res;
  if (scale) sc = scale->contiguous();
  if (shift) sh = shift->contiguous();
  if (residual) res = residual->contiguous();
  auto out = at::empty({s.batch, out_channels, s.out_h, s.out_w}, input.options());
  if (f32) {
    const auto w = weights_view<float>(p, fp, kc, kp, v);
    std::shared_ptr<const ExecPlan> plan;
    if (isa != Isa::Scalar)  // found or built (and validated) even for an empty batch
      plan = core_call("invalid compressed weight: ", [&] { return plan_cache().get(w, s.in_channels); });
    if (out.numel() > 0) {
      const Epilogue ep = Epilogue::make(sc ? sc->data_ptr<float>() : nullptr, sh ? sh->data_ptr<float>() : nullptr,
                                         res ? res->data_ptr<float>() : nullptr, lo, hi);
      core_call("", [&] {
        forward_f32(isa, s, w, plan.get(), x.data_ptr<float>(), ep, out.data_ptr<float>(), aten_parallel_for(),
                    at::get_num_threads());
      });
    }
  } else if (out.numel() > 0) {
    const bool only_shift = !sc && !res && lo == -std::numeric_limits<double>::infinity() &&
                            hi == std::numeric_limits<double>::infinity();
    reference_forward<double>(s, weights_view<double>(p, fp, kc, kp, v), x.data_ptr<double>(),
                              only_shift && sh ? sh->data_ptr<double>() : nullptr, out.data_ptr<double>(),
                              aten_parallel_for());
    if (!only_shift) out = epilogue_unfused(out, sc, sh, res, lo, hi);
  }
  return memory_format == at::MemoryFormat::Contiguous ? out : out.contiguous(memory_format);
}

at::Tensor pattern_conv2d_cpu(const at::Tensor& input, const at::Tensor& patterns, const at::Tensor& filter_ptr,
                              const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern,
                              const at::Tensor& values, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  return forward_cpu(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, std::nullopt, bias,
                     std::nullopt, stride, padding, dilation, -inf, inf, /*fused=*/false);
}

at::Tensor pattern_conv2d_fused_cpu(const at::Tensor& input, const at::Tensor& patterns, const at::Tensor& filter_ptr,
                                    const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern,
                                    const at::Tensor& values, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    double lo, double hi) {
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  return forward_cpu(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, scale, shift, residual,
                     stride, padding, dilation, lo, hi, /*fused=*/true);
}

// Transposed plans (grad_input), keyed by the forward plan object that plan_cache() found by content.
TransposedPlanCache& transposed_cache() {
  static TransposedPlanCache cache;
  return cache;
}

// The fp32 plan for the arrays (validating them when built); null on the scalar path.
std::shared_ptr<const ExecPlan> cached_plan(Isa isa, const PatternWeights<float>& w, int64_t in_channels) {
  if (isa == Isa::Scalar) return nullptr;
  return core_call("invalid compressed weight: ", [&] { return plan_cache().get(w, in_channels); });
}

at::Tensor grad_input_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size, const at::Tensor& patterns,
                          const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                          const at::Tensor& kernel_pattern, const at::Tensor& values,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float_args(grad_output, values, std::nullopt, 0);
  ConvShape s = make_shape(input_size, out_channels_of(filter_ptr), stride, padding, dilation);
  const bool f32 = grad_output.scalar_type() == at::kFloat;
  const Isa isa = active_isa();
  // The fp32 SIMD paths validate the indices once, when the (cached) plan is built.
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, s.in_channels,
               /*check_indices=*/!(f32 && isa != Isa::Scalar));
  check_grad_output(grad_output, s);
  auto go = grad_output.contiguous(), v = values.contiguous();
  auto p = patterns.contiguous(), fp = filter_ptr.contiguous(), kc = int32_channels(kernel_channel), kp = kernel_pattern.contiguous();
  auto gin = at::empty(input_size, grad_output.options());
  if (f32) {
    const auto w = weights_view<float>(p, fp, kc, kp, v);
    const auto plan = cached_plan(isa, w, s.in_channels);
    if (gin.numel() == 0) return gin;
    core_call("", [&] {
      std::shared_ptr<const TransposedPlan> tp;
      if (plan && plan_grad_input_supports(s)) tp = transposed_cache().get(plan);
      grad_input_f32(isa, s, w, tp.get(), go.data_ptr<float>(), gin.data_ptr<float>(), aten_parallel_for(),
                     at::get_num_threads());
    });
  } else if (gin.numel() > 0) {
    reference_grad_input<double>(s, weights_view<double>(p, fp, kc, kp, v), go.data_ptr<double>(),
                                 gin.data_ptr<double>(), aten_parallel_for());
  }
  return gin;
}

at::Tensor grad_values_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& patterns,
                           const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                           const at::Tensor& kernel_pattern, const at::Tensor& values,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float_args(input, values, std::nullopt, 0);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "patsparse: grad_output dtype ",
              grad_output.scalar_type(), " does not match input dtype ", input.scalar_type());
  ConvShape s = make_shape(input.sizes(), out_channels_of(filter_ptr), stride, padding, dilation);
  const bool f32 = input.scalar_type() == at::kFloat;
  const Isa isa = active_isa();
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, s.in_channels,
               /*check_indices=*/!(f32 && isa != Isa::Scalar));
  check_grad_output(grad_output, s);
  auto go = grad_output.contiguous(), x = input.contiguous(), v = values.contiguous();
  auto p = patterns.contiguous(), fp = filter_ptr.contiguous(), kc = int32_channels(kernel_channel), kp = kernel_pattern.contiguous();
  auto gv = at::zeros_like(v);
  if (f32) {
    const auto w = weights_view<float>(p, fp, kc, kp, v);
    const auto plan = cached_plan(isa, w, s.in_channels);
    if (gv.numel() == 0 || s.batch == 0) return gv;
    core_call("", [&] {
      grad_values_f32(isa, s, w, plan.get(), x.data_ptr<float>(), go.data_ptr<float>(), gv.data_ptr<float>(),
                      aten_parallel_for(), at::get_num_threads());
    });
  } else if (gv.numel() > 0 && s.batch > 0) {
    reference_grad_values<double>(s, weights_view<double>(p, fp, kc, kp, v), x.data_ptr<double>(),
                                  go.data_ptr<double>(), gv.data_ptr<double>(), aten_parallel_for());
  }
  return gv;
}

std::string validate_op(const at::Tensor& patterns, const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                        const at::Tensor& kernel_pattern, const at::Tensor& values, int64_t in_channels) {
  try {
    check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, in_channels, true);
  } catch (const c10::Error& e) {
    return e.msg();
  }
  return "";
}

std::string get_isa() { return isa_name(active_isa()); }

// [hits, builds, size] of the CPU plan cache (tests use it to see plan builds).
std::vector<int64_t> plan_cache_stats() {
  const PlanCacheStats st = plan_cache().stats();
  return {st.hits, st.builds, st.size};
}

// [hits, builds, size] of the transposed plan cache (grad_input).
std::vector<int64_t> transposed_plan_cache_stats() {
  const PlanCacheStats st = transposed_cache().stats();
  return {st.hits, st.builds, st.size};
}

// Empties the CPU plan caches (a server that swaps model versions gets the memory back; entries in
// use stay alive with their callers).
void clear_plan_caches() {
  plan_cache().clear();
  transposed_cache().clear();
}

std::string set_isa(const std::string& name) {
  Isa isa;
  TORCH_CHECK(parse_isa(name, &isa), "patsparse: unknown ISA '", name, "' (use scalar, avx2, avx512, neon or auto)");
  TORCH_CHECK(isa_supported(isa), "patsparse: ISA path '", name, "' is not supported by this build or CPU");
  std::string previous = isa_name(active_isa());
  set_active_isa(isa);
  return previous;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(isa)) out.emplace_back(isa_name(isa));
  return out;
}

}  // namespace

TORCH_LIBRARY(patsparse, m) {
  m.def("pattern_conv2d(Tensor input, Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, "
        "Tensor kernel_pattern, Tensor values, Tensor? bias, int[2] stride=1, int[2] padding=0, "
        "int[2] dilation=1) -> Tensor");
  // Inference only (no autograd formula): out = clamp(conv(input) * scale + shift + residual, lo, hi),
  // the epilogue of kernels/epilogue.h (BatchNorm folded into scale / shift, residual add, ReLU-style clamp).
  m.def("pattern_conv2d_fused(Tensor input, Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, "
        "Tensor kernel_pattern, Tensor values, Tensor? scale, Tensor? shift, Tensor? residual, int[2] stride, "
        "int[2] padding, int[2] dilation, float lo, float hi) -> Tensor");
  m.def("pattern_conv2d_grad_input(Tensor grad_output, SymInt[] input_size, Tensor patterns, Tensor filter_ptr, "
        "Tensor kernel_channel, Tensor kernel_pattern, Tensor values, int[2] stride, int[2] padding, "
        "int[2] dilation) -> Tensor");
  m.def("pattern_conv2d_grad_values(Tensor grad_output, Tensor input, Tensor patterns, Tensor filter_ptr, "
        "Tensor kernel_channel, Tensor kernel_pattern, Tensor values, int[2] stride, int[2] padding, "
        "int[2] dilation) -> Tensor");
  m.def("validate(Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, Tensor kernel_pattern, "
        "Tensor values, int in_channels) -> str", &validate_op);
  m.def("get_isa() -> str", &get_isa);
  m.def("set_isa(str name) -> str", &set_isa);
  m.def("supported_isas() -> str[]", &supported_isas);
  m.def("plan_cache_stats() -> int[]", &plan_cache_stats);
  m.def("transposed_plan_cache_stats() -> int[]", &transposed_plan_cache_stats);
  m.def("clear_plan_caches() -> ()", &clear_plan_caches);
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) {
  m.impl("pattern_conv2d", &pattern_conv2d_cpu);
  m.impl("pattern_conv2d_fused", &pattern_conv2d_fused_cpu);
  m.impl("pattern_conv2d_grad_input", &grad_input_cpu);
  m.impl("pattern_conv2d_grad_values", &grad_values_cpu);
}

}  // namespace patsparse
