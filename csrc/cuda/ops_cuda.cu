// Thin ATen binding of the CUDA kernels: argument checks, the cached device plan, launches on the
// current stream. Registered as TORCH_LIBRARY_IMPL(patsparse, CUDA, m) for the schemas of csrc/ops.cpp.
//
// Index validation without a host sync per call: the plan (csrc/cuda/plan.h) is built on the host
// from one copy of the index arrays, which validate_format checks completely. It holds no values
// (kernels read them at call time), so only the four index arrays can make it stale. Freshness:
//  * tensors with a version counter: a hit needs the same storage (kept alive by the entry, so its
//    memory cannot be reused), data pointer, sizes, strides and version. No device memory is
//    touched: the forward does not synchronise. The index arrays are integer buffers, so fused
//    optimizers never write them, and numpy cannot reach device memory; the only writes this misses
//    are ones that bypass autograd on purpose (tensor.data.copy_(...), DLPack).
//  * tensors without one (inference tensors): the entry keeps a device copy of the arrays it was
//    built from, and a hit needs them equal to the live arrays: one small compare on the device and
//    one sync per call (a rebuild costs a sync, a device-to-host copy and an upload).
// We chose not to compare content on every call for versioned tensors: a sync in every conv stalls
// the launch queue, which costs more than the conv itself at batch 1 (CPU plans compare content,
// which costs no sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that one needs the cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cuda/pattern_conv_cuda.h"
#include "cuda/plan.h"
#include "kernels/lru_cache.h"
#include "ops_common.h"

namespace patsparse {
namespace cuda {
namespace {

struct PlanEntry {
  std::array<at::Tensor, 4> index;    // patterns, filter_ptr, kernel_channel, kernel_pattern
  std::array<at::Storage, 4> storage;  // kept alive: their addresses cannot be reused while cached
  std::array<int64_t, 4> version{};
  std::array<at::Tensor, 4> copy;     // device copy of the arrays the plan was built from (unversioned only)
  bool versioned = true;
  int64_t in_channels = 0;
  at::Tensor device;  // packed plan arrays, int32, on the weight's device
  DevicePlan view;
};

// The CPU caches' container and bounds (kernels/lru_cache.h). Never destroyed (no CUDA frees during
// static destruction at exit).
auto& g_plan_cache = *new LruCache<const PlanEntry>(64, int64_t(512) << 20);

bool same_tensor(const at::Tensor& cached, const at::Storage& storage, const at::Tensor& t) {
  return t.storage().unsafeGetStorageImpl() == storage.unsafeGetStorageImpl() && cached.data_ptr() == t.data_ptr() &&
         cached.sizes() == t.sizes() && cached.strides() == t.strides() && cached.scalar_type() == t.scalar_type();
}

// One sync: true when every live array equals the entry's copy.
bool same_content(const PlanEntry& e, const std::array<at::Tensor, 4>& index) {
  at::Tensor differs;
  for (size_t i = 0; i < 4; ++i) {
    const at::Tensor d = at::ne(e.copy[i], index[i]).any();
    differs = differs.defined() ? at::logical_or(differs, d) : d;
  }
  return !differs.item<bool>();
}

std::shared_ptr<const PlanEntry> get_plan(const std::array<at::Tensor, 4>& index, int64_t in_channels) {
  bool versioned = true;
  for (const auto& t : index) versioned = versioned && !t.is_inference();
  const auto hit = g_plan_cache.find([&](const PlanEntry& e) {
    bool same = e.in_channels == in_channels && e.versioned == versioned;
    for (size_t i = 0; same && i < 4; ++i)
      same = same_tensor(e.index[i], e.storage[i], index[i]) && (!versioned || e.version[i] == index[i]._version());
    return same;
  });
  if (hit) {
    if (versioned || same_content(*hit, index)) return hit;
    g_plan_cache.remove(hit);  // unversioned and changed in place: rebuild
  }
  // Miss: one device-to-host copy of the index arrays (synchronises), validation, plan, upload.
  const at::Tensor p = index[0].cpu().contiguous(), fp = index[1].cpu().contiguous();
  const at::Tensor kc = index[2].cpu().contiguous(), kp = index[3].cpu().contiguous();
  const HostPlan host = core_call("invalid compressed weight: ", [&] {
    return build_plan(p.size(0), p.size(1), fp.size(0) - 1, kc.size(0), p.data_ptr<uint8_t>(), fp.data_ptr<int32_t>(),
                      kc.data_ptr<int32_t>(), kp.data_ptr<uint8_t>(), in_channels);
  });
  std::vector<int32_t> packed = pack_plan(host);
  packed.push_back(0);  // never empty
  auto entry = std::make_shared<PlanEntry>();
  entry->device = at::from_blob(packed.data(), {static_cast<int64_t>(packed.size())}, at::kInt)
                      .to(index[1].device(), /*non_blocking=*/false, /*copy=*/true);
  entry->view = plan_view(host, entry->device.data_ptr<int32_t>());
  entry->in_channels = in_channels;
  entry->versioned = versioned;
  const std::array<at::Tensor, 4> host_arrays = {p, fp, kc, kp};
  for (size_t i = 0; i < 4; ++i) {
    entry->index[i] = index[i];
    entry->storage[i] = index[i].storage();
    entry->version[i] = versioned ? index[i]._version() : -1;
    // The copy is of the host arrays the plan was built from, not of the live ones (which a later
    // queued kernel may change).
    if (!versioned) entry->copy[i] = host_arrays[i].to(index[i].device(), /*non_blocking=*/false, /*copy=*/true);
  }
  int64_t bytes = entry->device.nbytes();
  for (const auto& c : entry->copy) bytes += c.defined() ? static_cast<int64_t>(c.nbytes()) : 0;
  g_plan_cache.add(entry, bytes);
  return entry;
}

// Tuning / cross-check knobs, read per call (cheap): PATSPARSE_CUDA_FWD_PIX=1|2|4 output pixels per
// thread in the tiled forward; PATSPARSE_CUDA_KERNEL=simple forces the one-thread-per-output forward.
int env_fwd_pix() {
  const char* v = std::getenv("PATSPARSE_CUDA_FWD_PIX");
  return v ? std::atoi(v) : 0;
}
bool env_force_simple() {
  const char* v = std::getenv("PATSPARSE_CUDA_KERNEL");
  return v && std::strcmp(v, "simple") == 0;
}

void check_args(const char* op, const at::Tensor& lead, const at::Tensor& values, const at::Tensor& patterns,
                const at::Tensor& filter_ptr, const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                at::IntArrayRef dilation) {
  TORCH_CHECK(lead.is_cuda(), "patsparse::", op, ": expected a CUDA tensor");
  TORCH_CHECK(filter_ptr.dim() == 1 && filter_ptr.size(0) >= 1, "patsparse::", op,
              ": filter_ptr must be a [Cout+1] tensor, got ", filter_ptr.sizes());
  check_float_args(lead, values, bias, filter_ptr.size(0) - 1);
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"values", &values}, {"patterns", &patterns}, {"filter_ptr", &filter_ptr},
      {"kernel_channel", &kernel_channel}, {"kernel_pattern", &kernel_pattern}};
  for (const auto& [name, t] : others)
    TORCH_CHECK(t->device() == lead.device(), "patsparse::", op, ": ", name, " is on ", t->device(),
                " but the input is on ", lead.device(), " (move the whole module with .to(device))");
  if (bias) TORCH_CHECK(bias->device() == lead.device(), "patsparse::", op, ": bias is on ", bias->device(),
                        " but the input is on ", lead.device());
  for (at::IntArrayRef a : {stride, padding, dilation})
    for (int64_t v : a)
      TORCH_CHECK(v < (1 << 16), "patsparse::", op, ": stride/padding/dilation of ", v, " not supported on CUDA");
}

// The kernels index one image plane with 32-bit ints (make_shape has checked every other size).
void check_planes(const char* op, const ConvShape& s) {
  constexpr int64_t kMax = int64_t(1) << 31;
  TORCH_CHECK(s.in_h * s.in_w < kMax && s.out_h * s.out_w < kMax, "patsparse::", op,
              ": image planes of 2**31 or more elements are not supported on CUDA (input ", s.in_h, "x", s.in_w,
              ", output ", s.out_h, "x", s.out_w, ")");
}

std::array<at::Tensor, 4> index_arrays(const at::Tensor& patterns, const at::Tensor& filter_ptr,
                                       const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern) {
  return {patterns.contiguous(), filter_ptr.contiguous(), int32_channels(kernel_channel), kernel_pattern.contiguous()};
}

at::Tensor pattern_conv2d_cuda(const at::Tensor& input, const at::Tensor& patterns, const at::Tensor& filter_ptr,
                               const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern,
                               const at::Tensor& values, const std::optional<at::Tensor>& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_args("pattern_conv2d", input, values, patterns, filter_ptr, kernel_channel, kernel_pattern, bias, stride,
             padding, dilation);
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, 0, /*check_indices=*/false);
  const int64_t out_channels = filter_ptr.size(0) - 1;
  const ConvShape s = make_shape(input.sizes(), out_channels, stride, padding, dilation);
  check_planes("pattern_conv2d", s);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto idx = index_arrays(patterns, filter_ptr, kernel_channel, kernel_pattern);
  const auto plan = get_plan(idx, s.in_channels);
  const auto memory_format = input.suggest_memory_format();
  const at::Tensor x = input.contiguous(), v = values.contiguous();
  std::optional<at::Tensor> b;
  if (bias) b = bias->contiguous();
  at::Tensor out = at::empty({s.batch, out_channels, s.out_h, s.out_w}, input.options());
  if (out.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "patsparse_pattern_conv2d_cuda", [&] {
      C10_CUDA_CHECK(launch_forward<scalar_t>(s, weights_view<scalar_t>(idx[0], idx[1], idx[2], idx[3], v), plan->view,
                                              x.data_ptr<scalar_t>(), b ? b->data_ptr<scalar_t>() : nullptr,
                                              out.data_ptr<scalar_t>(), env_fwd_pix(), env_force_simple(), stream));
    });
  }
  return memory_format == at::MemoryFormat::Contiguous ? out : out.contiguous(memory_format);
}

at::Tensor grad_input_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size, const at::Tensor& patterns,
                           const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                           const at::Tensor& kernel_pattern, const at::Tensor& values, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_args("pattern_conv2d_grad_input", grad_output, values, patterns, filter_ptr, kernel_channel, kernel_pattern,
             std::nullopt, stride, padding, dilation);
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, 0, /*check_indices=*/false);
  const ConvShape s = make_shape(input_size, filter_ptr.size(0) - 1, stride, padding, dilation);
  check_planes("pattern_conv2d_grad_input", s);
  check_grad_output(grad_output, s);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const auto idx = index_arrays(patterns, filter_ptr, kernel_channel, kernel_pattern);
  const auto plan = get_plan(idx, s.in_channels);
  const at::Tensor go = grad_output.contiguous(), v = values.contiguous();
  at::Tensor gin = at::empty(input_size, grad_output.options());
  if (gin.numel() == 0) return gin;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "patsparse_grad_input_cuda", [&] {
    C10_CUDA_CHECK(launch_grad_input<scalar_t>(s, weights_view<scalar_t>(idx[0], idx[1], idx[2], idx[3], v),
                                               plan->view, go.data_ptr<scalar_t>(), gin.data_ptr<scalar_t>(), stream));
  });
  return gin;
}

at::Tensor grad_values_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& patterns,
                            const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                            const at::Tensor& kernel_pattern, const at::Tensor& values, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_args("pattern_conv2d_grad_values", input, values, patterns, filter_ptr, kernel_channel, kernel_pattern,
             std::nullopt, stride, padding, dilation);
  TORCH_CHECK(grad_output.device() == input.device() && grad_output.scalar_type() == input.scalar_type(),
              "patsparse: grad_output must match the input's device and dtype");
  check_format(patterns, filter_ptr, kernel_channel, kernel_pattern, values, 0, /*check_indices=*/false);
  const ConvShape s = make_shape(input.sizes(), filter_ptr.size(0) - 1, stride, padding, dilation);
  check_planes("pattern_conv2d_grad_values", s);
  check_grad_output(grad_output, s);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto idx = index_arrays(patterns, filter_ptr, kernel_channel, kernel_pattern);
  const auto plan = get_plan(idx, s.in_channels);
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous(), v = values.contiguous();
  if (v.numel() == 0 || s.batch == 0) return at::zeros_like(v);
  at::Tensor gv = at::empty_like(v);  // every element written by the kernel
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "patsparse_grad_values_cuda", [&] {
    C10_CUDA_CHECK(launch_grad_values<scalar_t>(s, weights_view<scalar_t>(idx[0], idx[1], idx[2], idx[3], v),
                                                plan->view, x.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(),
                                                gv.data_ptr<scalar_t>(), stream));
  });
  return gv;
}

// The fused inference op on CUDA runs the unfused conv, then the epilogue in ATen ops (same result
// as the CPU kernel's fused output stage; a fused CUDA output stage is future work).
at::Tensor pattern_conv2d_fused_cuda(const at::Tensor& input, const at::Tensor& patterns, const at::Tensor& filter_ptr,
                                     const at::Tensor& kernel_channel, const at::Tensor& kernel_pattern,
                                     const at::Tensor& values, const std::optional<at::Tensor>& scale,
                                     const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     double lo, double hi) {
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  check_args("pattern_conv2d_fused", input, values, patterns, filter_ptr, kernel_channel, kernel_pattern, std::nullopt,
             stride, padding, dilation);
  const ConvShape s = make_shape(input.sizes(), filter_ptr.size(0) - 1, stride, padding, dilation);
  check_epilogue_args(input, s, scale, shift, residual, lo, hi);
  const at::Tensor out = pattern_conv2d_cuda(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values,
                                             std::nullopt, stride, padding, dilation);
  return epilogue_unfused(out, scale, shift, residual, lo, hi);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(patsparse, CUDA, m) {
  m.impl("pattern_conv2d_fused", &cuda::pattern_conv2d_fused_cuda);
  m.impl("pattern_conv2d", &cuda::pattern_conv2d_cuda);
  m.impl("pattern_conv2d_grad_input", &cuda::grad_input_cuda);
  m.impl("pattern_conv2d_grad_values", &cuda::grad_values_cuda);
}

}  // namespace patsparse
