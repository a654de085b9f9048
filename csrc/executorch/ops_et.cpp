// ExecuTorch binding of the inference ops: kernels for the out-variant schemas of csrc/ops_out.cpp,
// registered with EXECUTORCH_LIBRARY, over the same torch-free kernel core as the torch binding
// (csrc/kernels: run-time ISA dispatch, x86 AVX2 / AVX-512 or ARM NEON micro-kernels, the plan
// cache). No torch here: built against ExecuTorch's headers only (csrc/executorch/CMakeLists.txt).
//
// Contract of every kernel: check every argument (dtype, rank, layout, index arrays) and, on a bad
// one, log the reason and fail the call with InvalidArgument (kernel_guard; ExecuTorch then returns
// an error from Method::execute); never read through an unchecked index. fp32, contiguous (default
// dim order).
//
// Adding an op: a `<op>_out` function below (unpack the ExecuTorch tensors into the core's structs,
// call the core), one EXECUTORCH_LIBRARY line, and its out schema in csrc/ops_out.cpp.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#ifdef ET_USE_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kernels/codes.h"
#include "kernels/dispatch.h"
#include "kernels/pattern_conv.h"
#include "kernels/plan.h"
#include "kernels/spmm.h"

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

// The core's error convention (kernels/error.h) holds here too: every check below throws
// std::invalid_argument naming the problem, and each kernel catches once (kernel_guard): it logs the
// reason and fails the call with InvalidArgument.
// The reason of this thread's last failed call, for the Python runner's error (the runtime's own error
// is a code; patsparse_et_take_error).
thread_local std::string last_error;

template <class F>
Tensor& kernel_guard(KernelRuntimeContext& ctx, Tensor& out, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    ET_LOG(Error, "patsparse: %s", e.what());
    last_error = e.what();
    ctx.fail(Error::InvalidArgument);
  }
  return out;
}

std::string size_string(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Throws unless t has this dtype, rank and the default (contiguous) dim order.
void check_tensor(const Tensor& t, const char* name, ScalarType dtype, int64_t dim) {
  const std::string n(name);
  if (t.scalar_type() != dtype)
    throw_invalid(n + " must be " + executorch::runtime::toString(dtype) + ", got " +
                  executorch::runtime::toString(t.scalar_type()));
  if (t.dim() != dim) throw_invalid(n + " must be " + std::to_string(dim) + "-D, got " + size_string(t));
  if (!executorch::runtime::tensor_is_default_dim_order(t))
    throw_invalid(n + " must be contiguous (default dim order; channels_last is not supported by this kernel)");
}

void check_pair(IntArrayRef v, const char* name) {
  if (v.size() != 2) throw_invalid(std::string(name) + " must have 2 elements, got " + std::to_string(v.size()));
}

// Throws unless the optional per-channel vector t (an epilogue's scale / shift, a bias) is absent or fp32 [channels].
void check_channels(const std::optional<Tensor>& t, const char* name, int64_t channels) {
  if (!t) return;
  check_tensor(*t, name, ScalarType::Float, 1);
  if (t->size(0) != channels)
    throw_invalid(std::string(name) + " must be [" + std::to_string(channels) + "], got " + size_string(*t));
}

std::string sizes_string(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// Throws unless the optional residual is absent or an fp32 contiguous tensor of the output's sizes.
void check_residual(const std::optional<Tensor>& t, const std::vector<int64_t>& out_sizes) {
  if (!t) return;
  check_tensor(*t, "residual", ScalarType::Float, static_cast<int64_t>(out_sizes.size()));
  for (size_t d = 0; d < out_sizes.size(); ++d)
    if (t->size(static_cast<int64_t>(d)) != out_sizes[d])
      throw_invalid("residual must have the output's shape " + sizes_string(out_sizes) + ", got " + size_string(*t));
}

// The epilogue's clamp bounds (kernels/epilogue.h): lo <= hi, neither NaN.
// Checks the clamp bounds and reads +-DBL_MAX as no bound (clamp_bound).
void check_bounds(double& lo, double& hi) {
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  if (!(lo <= hi))
    throw_invalid("the clamp bounds must satisfy lo <= hi and not be NaN, got lo=" + std::to_string(lo) +
                  ", hi=" + std::to_string(hi));
}

// Checks `out` (fp32 unless `dtype` says otherwise, contiguous, of this rank) and resizes it to `sizes`.
void resize_out(Tensor& out, const std::vector<int64_t>& sizes, ScalarType dtype = ScalarType::Float) {
  check_tensor(out, "out", dtype, static_cast<int64_t>(sizes.size()));
  constexpr int64_t kMaxSize = std::numeric_limits<executorch::aten::SizesType>::max();
  std::vector<executorch::aten::SizesType> et_sizes;
  for (int64_t v : sizes) {
    if (v < 0 || v > kMaxSize) throw_invalid("output size " + sizes_string(sizes) + " does not fit ExecuTorch's int32 sizes");
    et_sizes.push_back(static_cast<executorch::aten::SizesType>(v));
  }
  if (executorch::runtime::resize_tensor(out, {et_sizes.data(), et_sizes.size()}) != Error::Ok)
    throw_invalid("cannot resize out " + size_string(out) + " to " + sizes_string(sizes));
}

// Fills s and w from the arguments of pattern_conv2d(_fused), or throws what is wrong with them
// (shapes and dtypes here; the index arrays are validated when the plan is built, or by validate()).
void pattern_conv2d_args(const Tensor& input, const Tensor& patterns, const Tensor& filter_ptr,
                         const Tensor& kernel_channel, const Tensor& kernel_pattern, const Tensor& values,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, ConvShape* s,
                         PatternWeights<float>* w) {
  check_tensor(input, "input", ScalarType::Float, 4);
  check_tensor(patterns, "patterns", ScalarType::Byte, 2);
  check_tensor(filter_ptr, "filter_ptr", ScalarType::Int, 1);
  check_tensor(kernel_channel, "kernel_channel", ScalarType::Int, 1);
  check_tensor(kernel_pattern, "kernel_pattern", ScalarType::Byte, 1);
  check_tensor(values, "values", ScalarType::Float, 2);
  if (filter_ptr.size(0) < 1) throw_invalid("filter_ptr must have Cout + 1 >= 1 entries");
  const int64_t nnz = kernel_channel.size(0), out_channels = filter_ptr.size(0) - 1;
  if (kernel_pattern.size(0) != nnz)
    throw_invalid("kernel_pattern has " + std::to_string(kernel_pattern.size(0)) + " entries but kernel_channel has " +
                  std::to_string(nnz));
  if (values.size(0) != nnz || values.size(1) != patterns.size(1))
    throw_invalid("values must be [nnz, E] = [" + std::to_string(nnz) + ", " + std::to_string(patterns.size(1)) +
                  "], got " + size_string(values));
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");
  s->batch = input.size(0); s->in_channels = input.size(1); s->in_h = input.size(2); s->in_w = input.size(3);
  s->out_channels = out_channels;
  s->stride_h = stride[0]; s->stride_w = stride[1]; s->pad_h = padding[0]; s->pad_w = padding[1];
  s->dil_h = dilation[0]; s->dil_w = dilation[1];
  s->out_h = conv_out_size(s->in_h, s->pad_h, s->dil_h, s->stride_h);
  s->out_w = conv_out_size(s->in_w, s->pad_w, s->dil_w, s->stride_w);
  if (s->out_h < 0 || s->out_w < 0)
    throw_invalid("stride and dilation must be >= 1 and padding >= 0 (and input size + 2 * padding must fit in int64)");
  if (s->out_h == 0 || s->out_w == 0) throw_invalid("input " + size_string(input) + " is too small for the 3x3 kernel");
  check_shape(*s);
  w->num_patterns = patterns.size(0);
  w->entries = patterns.size(1);
  w->out_channels = out_channels;
  w->nnz = nnz;
  w->patterns = patterns.const_data_ptr<uint8_t>();
  w->filter_ptr = filter_ptr.const_data_ptr<int32_t>();
  w->kernel_channel = kernel_channel.const_data_ptr<int32_t>();
  w->kernel_pattern = kernel_pattern.const_data_ptr<uint8_t>();
  w->values = values.const_data_ptr<float>();
}

// The 3x3 pattern conv with epilogue `ep` into `out` (already checked and resized to the output shape).
void run_pattern_conv(const ConvShape& s, const PatternWeights<float>& w, const Tensor& input, const Epilogue& ep,
                      Tensor& out) {
  const Isa isa = active_isa();
  std::shared_ptr<const ExecPlan> plan;
  try {
    if (isa != Isa::Scalar) plan = plan_cache().get(w, s.in_channels);  // validates the index arrays when it builds
    else validate(w, s.in_channels);
  } catch (const std::invalid_argument& e) {
    throw_invalid(std::string("invalid compressed weight: ") + e.what());
  }
  if (out.numel() > 0)
    forward_f32(isa, s, w, plan.get(), input.const_data_ptr<float>(), ep, out.mutable_data_ptr<float>(),
                et_parallel_for(), num_threads());
}

// patsparse::pattern_conv2d.out: out = conv2d(input, the pattern-compressed weight) + bias.
Tensor& pattern_conv2d_out(KernelRuntimeContext& ctx, const Tensor& input, const Tensor& patterns,
                           const Tensor& filter_ptr, const Tensor& kernel_channel, const Tensor& kernel_pattern,
                           const Tensor& values, const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    ConvShape s;
    PatternWeights<float> w;
    pattern_conv2d_args(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding,
                        dilation, &s, &w);
    check_channels(bias, "bias", s.out_channels);
    resize_out(out, {s.batch, s.out_channels, s.out_h, s.out_w});
    run_pattern_conv(s, w, input, Epilogue::bias_only(bias ? bias->const_data_ptr<float>() : nullptr), out);
  });
}

// patsparse::pattern_conv2d_fused.out: out = clamp(conv2d(input, W) * scale + shift + residual, lo, hi).
Tensor& pattern_conv2d_fused_out(KernelRuntimeContext& ctx, const Tensor& input, const Tensor& patterns,
                                 const Tensor& filter_ptr, const Tensor& kernel_channel, const Tensor& kernel_pattern,
                                 const Tensor& values, const std::optional<Tensor>& scale,
                                 const std::optional<Tensor>& shift, const std::optional<Tensor>& residual,
                                 IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, double lo, double hi,
                                 Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    ConvShape s;
    PatternWeights<float> w;
    pattern_conv2d_args(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding,
                        dilation, &s, &w);
    const std::vector<int64_t> out_sizes{s.batch, s.out_channels, s.out_h, s.out_w};
    check_channels(scale, "scale", s.out_channels);
    check_channels(shift, "shift", s.out_channels);
    check_residual(residual, out_sizes);
    check_bounds(lo, hi);
    resize_out(out, out_sizes);
    const Epilogue ep = Epilogue::make(scale ? scale->const_data_ptr<float>() : nullptr,
                                       shift ? shift->const_data_ptr<float>() : nullptr,
                                       residual ? residual->const_data_ptr<float>() : nullptr, lo, hi);
    run_pattern_conv(s, w, input, ep, out);
  });
}

// ------------------------------------------------------------ sparse 1x1 conv / Linear (kernels/spmm.h)
// Runtime CSR indices of the stored weights, found by content like the plans.
SparseIndexCache& sparse_index_cache() {
  static SparseIndexCache cache;
  return cache;
}

// Fills `view` with the stored arrays of a [rows, cols] weight (sparse.py's format), or throws what is
// wrong with their dtypes / ranks (their content is validated when the runtime index is built).
void stored_sparse(const Tensor& header, const Tensor& index, const Tensor& codes, const Tensor& values,
                   const Tensor& code_scale, int64_t rows, int64_t cols, StoredSparse* view) {
  check_tensor(header, "header", ScalarType::Byte, 1);
  check_tensor(index, "index", ScalarType::Byte, 1);
  check_tensor(codes, "codes", ScalarType::Byte, 1);
  check_tensor(values, "values", ScalarType::Float, 1);
  check_tensor(code_scale, "code_scale", ScalarType::Float, 1);
  if (rows < 0 || cols < 0) throw_invalid("negative weight size [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  view->rows = rows;
  view->cols = cols;
  view->header = header.const_data_ptr<uint8_t>();
  view->header_bytes = header.numel();
  view->index = index.const_data_ptr<uint8_t>();
  view->index_bytes = index.numel();
  view->codes = codes.const_data_ptr<uint8_t>();
  view->codes_bytes = codes.numel();
  view->num_values = values.numel();
  view->code_scale = code_scale.const_data_ptr<float>();
  view->num_code_scale = code_scale.numel();
}

// Checks the epilogue arguments of a sparse op with `rows` output channels and output `out_sizes`.
void sparse_epilogue_args(const std::optional<Tensor>& scale, const std::optional<Tensor>& shift,
                          const std::optional<Tensor>& residual, int64_t rows, const std::vector<int64_t>& out_sizes,
                          double lo, double hi, SpmmIo<float>* io) {
  check_channels(scale, "scale", rows);
  check_channels(shift, "shift", rows);
  check_residual(residual, out_sizes);
  check_bounds(lo, hi);
  io->scale = scale ? scale->const_data_ptr<float>() : nullptr;
  io->shift = shift ? shift->const_data_ptr<float>() : nullptr;
  io->residual = residual ? residual->const_data_ptr<float>() : nullptr;
  io->lo = static_cast<float>(lo);
  io->hi = static_cast<float>(hi);
}

// Builds (or finds) the runtime index of `view` and runs the product.
void run_spmm(const StoredSparse& view, const Tensor& values, const SpmmIo<float>& io, bool empty) {
  std::shared_ptr<const SparseIndex> idx;
  try {
    idx = sparse_index_cache().get(view);  // validated even for an empty batch
  } catch (const std::invalid_argument& e) {
    throw_invalid(std::string("invalid compressed weight: ") + e.what());
  }
  if (!empty) spmm_f32(active_isa(), csr_view(*idx, values.const_data_ptr<float>()), io, et_parallel_for(), num_threads());
}

// patsparse::sparse_conv1x1.out: out = epilogue(conv2d(input, W[out_channels, C, 1, 1], stride)).
Tensor& sparse_conv1x1_out(KernelRuntimeContext& ctx, const Tensor& input, const Tensor& header, const Tensor& index,
                           const Tensor& codes, const Tensor& values, const Tensor& code_scale, int64_t out_channels,
                           const std::optional<Tensor>& scale, const std::optional<Tensor>& shift,
                           const std::optional<Tensor>& residual, IntArrayRef stride, double lo, double hi,
                           Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    check_tensor(input, "input", ScalarType::Float, 4);
    check_pair(stride, "stride");
    if (stride[0] < 1 || stride[1] < 1) throw_invalid("stride must be >= 1");
    const int64_t batch = input.size(0), channels = input.size(1), h = input.size(2), w = input.size(3);
    if (h == 0 || w == 0) throw_invalid("input " + size_string(input) + " has an empty spatial size");
    StoredSparse view;
    stored_sparse(header, index, codes, values, code_scale, out_channels, channels, &view);
    const int64_t oh = (h - 1) / stride[0] + 1, ow = (w - 1) / stride[1] + 1, n = oh * ow;
    const std::vector<int64_t> out_sizes{batch, out_channels, oh, ow};
    SpmmIo<float> io;
    sparse_epilogue_args(scale, shift, residual, out_channels, out_sizes, lo, hi, &io);
    resize_out(out, out_sizes);
    // The kernels read pixels as contiguous columns: a strided conv reads a gathered copy of its pixels.
    std::vector<float> gathered;
    const float* x = input.const_data_ptr<float>();
    if ((stride[0] > 1 || stride[1] > 1) && out.numel() > 0) {
      gathered.resize(static_cast<size_t>(batch * channels * n));
      float* g = gathered.data();
      for (int64_t bc = 0; bc < batch * channels; ++bc)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) *g++ = x[(bc * h + i * stride[0]) * w + j * stride[1]];
      x = gathered.data();
    }
    io.batch = batch;
    io.n = n;
    io.x = x;
    io.x_image = channels * n, io.x_chan = n, io.x_col = 1;
    io.y = out.mutable_data_ptr<float>();
    io.y_image = out_channels * n, io.y_chan = n, io.y_col = 1;
    run_spmm(view, values, io, out.numel() == 0);
  });
}

// patsparse::sparse_linear.out: out = epilogue(linear(input, W[out_features, in_features])). The rows of the
// input are read in place (the gather kernel; no transposed copy).
Tensor& sparse_linear_out(KernelRuntimeContext& ctx, const Tensor& input, const Tensor& header, const Tensor& index,
                          const Tensor& codes, const Tensor& values, const Tensor& code_scale, int64_t out_features,
                          const std::optional<Tensor>& scale, const std::optional<Tensor>& shift,
                          const std::optional<Tensor>& residual, double lo, double hi, Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    if (input.dim() < 1) throw_invalid("input must have at least 1 dimension");
    check_tensor(input, "input", ScalarType::Float, input.dim());
    const int64_t in_features = input.size(input.dim() - 1);
    StoredSparse view;
    stored_sparse(header, index, codes, values, code_scale, out_features, in_features, &view);
    std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
    out_sizes.back() = out_features;
    int64_t rows = 1;
    for (size_t d = 0; d + 1 < out_sizes.size(); ++d) rows *= out_sizes[d];
    SpmmIo<float> io;
    sparse_epilogue_args(scale, shift, residual, out_features, out_sizes, lo, hi, &io);
    resize_out(out, out_sizes);
    io.batch = 1;
    io.n = rows;
    io.x = input.const_data_ptr<float>();
    io.x_chan = 1, io.x_col = in_features;
    io.y = out.mutable_data_ptr<float>();
    io.y_chan = 1, io.y_col = out_features;
    run_spmm(view, values, io, out.numel() == 0);
  });
}

// patsparse::pattern_channels.out: a PatternConv2d's stored (int16) channel indices as the int32 array
// the pattern kernels read, so the .pte holds the narrow form.
Tensor& pattern_channels_out(KernelRuntimeContext& ctx, const Tensor& kernel_channel, Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    const bool narrow = kernel_channel.scalar_type() == ScalarType::Short;
    check_tensor(kernel_channel, "kernel_channel", narrow ? ScalarType::Short : ScalarType::Int, 1);
    const int64_t n = kernel_channel.size(0);
    resize_out(out, {n}, ScalarType::Int);
    int32_t* dst = out.mutable_data_ptr<int32_t>();
    if (narrow) {
      const int16_t* src = kernel_channel.const_data_ptr<int16_t>();
      std::copy(src, src + n, dst);
    } else {
      const int32_t* src = kernel_channel.const_data_ptr<int32_t>();
      std::copy(src, src + n, dst);
    }
  });
}

// patsparse::pattern_decode.out: a quantized PatternConv2d's float values [kept_kernels, entries]
// from its bit-packed codes and scale (kernels/codes.h), so the .pte holds the codes, not fp32 values.
Tensor& pattern_decode_out(KernelRuntimeContext& ctx, const Tensor& codes, const Tensor& scale, int64_t kept_kernels,
                           int64_t entries, int64_t bits, std::string_view scheme, Tensor& out) {
  return kernel_guard(ctx, out, [&] {
    check_tensor(codes, "codes", ScalarType::Byte, 1);
    if (scale.scalar_type() != ScalarType::Float || scale.numel() != 1)
      throw_invalid("scale must hold one float32 number, got " + size_string(scale));
    const int64_t count = pattern_code_count(kept_kernels, entries, bits, scheme);
    resize_out(out, {kept_kernels, entries});
    decode_pattern_codes<float>(codes.const_data_ptr<uint8_t>(), codes.numel(), count, static_cast<int>(bits),
                                scheme == "pow2", scale.const_data_ptr<float>()[0], out.mutable_data_ptr<float>());
  });
}

}  // namespace et
}  // namespace patsparse

EXECUTORCH_LIBRARY(patsparse, "pattern_channels.out", patsparse::et::pattern_channels_out);
EXECUTORCH_LIBRARY(patsparse, "pattern_decode.out", patsparse::et::pattern_decode_out);
EXECUTORCH_LIBRARY(patsparse, "pattern_conv2d.out", patsparse::et::pattern_conv2d_out);
EXECUTORCH_LIBRARY(patsparse, "pattern_conv2d_fused.out", patsparse::et::pattern_conv2d_fused_out);
EXECUTORCH_LIBRARY(patsparse, "sparse_conv1x1.out", patsparse::et::sparse_conv1x1_out);
EXECUTORCH_LIBRARY(patsparse, "sparse_linear.out", patsparse::et::sparse_linear_out);

// Forces the kernel path of this library ("scalar", "avx2", "avx512", "neon", "auto"; PATSPARSE_ISA
// sets the initial one), as torch.ops.patsparse.set_isa does for the torch binding: 1 on success,
// 0 when the name is unknown or the path is not supported here. (Python: export.set_executorch_isa.)
extern "C" __attribute__((visibility("default"))) int patsparse_et_set_isa(const char* name) {
  patsparse::Isa isa;
  return name && patsparse::parse_isa(name, &isa) && patsparse::set_active_isa(isa) ? 1 : 0;
}

// Copies the reason of this thread's last failed patsparse kernel call (empty when none) into buf
// (at most size - 1 bytes and a NUL; size > 0) and forgets it. (Python: ExecuTorchProgram.__call__.)
extern "C" __attribute__((visibility("default"))) void patsparse_et_take_error(char* buf, size_t size) {
  std::string& error = patsparse::et::last_error;
  const size_t n = std::min(size - 1, error.size());
  std::memcpy(buf, error.data(), n);
  buf[n] = '\0';
  error.clear();
}

// [hits, builds, size] of this library's plan cache into stats[0..2] (tests: the program really ran
// these kernels, and built each layer's plan once).
extern "C" __attribute__((visibility("default"))) void patsparse_et_plan_cache_stats(int64_t* stats) {
  const patsparse::PlanCacheStats st = patsparse::et::plan_cache().stats();
  stats[0] = st.hits;
  stats[1] = st.builds;
  stats[2] = st.size;
}

// [hits, builds, size] of this library's sparse index cache into stats[0..2] (tests: the sparse 1x1 /
// Linear kernels ran, one index build per layer).
extern "C" __attribute__((visibility("default"))) void patsparse_et_sparse_index_cache_stats(int64_t* stats) {
  const patsparse::SparseIndexCacheStats st = patsparse::et::sparse_index_cache().stats();
  stats[0] = st.hits;
  stats[1] = st.builds;
  stats[2] = st.size;
}
