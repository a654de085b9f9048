// Helpers shared by the CPU and CUDA bindings (argument checks, views over tensors).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <vector>

#include "kernels/pattern_conv.h"

namespace patsparse {

ParallelFor aten_parallel_for();

// A stored array must hold its bytes: a TorchScript / lite file with a truncated tensor record loads a
// tensor of the right size without data (torch does not check), which would be read at address 0.
inline void check_has_data(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 0 || t.data_ptr() != nullptr, "patsparse: '", name, "' ", t.sizes(),
              " has no data (a damaged file?)");
}

// kernel_channel as the int32 array the kernels read: a module stores int16 (PatternConv2d passes
// the int32 form from patsparse::pattern_channels; a direct call with the stored form is widened here).
at::Tensor int32_channels(const at::Tensor& kernel_channel);

// The decode cache (decode_ops.cpp): tensors derived from a layer's stored arrays, keyed by those
// arrays' bytes and the device. The key is the concatenation of `key`'s parts (op id, parameters,
// arrays; a caller makes it unambiguous, e.g. with the array sizes among the parameters); a lookup
// compares the parts in place, so a hit copies nothing. Returns the outputs cached for the key on
// `device`, or build()'s (CPU tensors) moved there and cached. build() gets the key's parts in a
// copy taken before it runs and must decode from them, not from the caller's arrays: a concurrent
// in-place write to those (a load_state_dict while another thread runs the model) then cannot cache
// a decode of other bytes than its key's. The outputs are the cache's own tensors, shared with later
// calls: read them only (an in-place write is detected by their version counter and rebuilt).
struct KeyPart {
  const void* data;
  size_t bytes;
};
std::vector<at::Tensor> decode_cached(
    const std::vector<KeyPart>& key, c10::Device device,
    const std::function<std::vector<at::Tensor>(const std::vector<KeyPart>& snapshot)>& build);

// Checks dtypes and shapes of the compressed arrays; with check_indices, also every index
// (copied to the host when on a device) against in_channels. Throws c10::Error with a clear message.
void check_format(const at::Tensor& patterns, const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                  const at::Tensor& kernel_pattern, const at::Tensor& values, int64_t in_channels,
                  bool check_indices);

// dtype checks shared by every op (float32 / float64, values and bias matching the input) and the
// bias shape [out_channels].
void check_float_args(const at::Tensor& input, const at::Tensor& values, const std::optional<at::Tensor>& bias,
                      int64_t out_channels);

ConvShape make_shape(at::IntArrayRef input_size, int64_t out_channels, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation);

// grad_output of the backward ops must be the conv output's shape [N, Cout, OH, OW]; the message says it.
void check_grad_output(const at::Tensor& grad_output, const ConvShape& s);

// Checks the epilogue arguments of pattern_conv2d_fused against its input and conv shape: scale /
// shift [Cout], residual [N, Cout, OH, OW] (any memory format), each of the input's dtype and
// device; lo <= hi, neither NaN. Throws c10::Error naming the problem.
void check_epilogue_args(const at::Tensor& input, const ConvShape& s, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                         double lo, double hi);

// The epilogue (kernels/epilogue.h) in ATen ops on a finished conv output, for the paths without a
// fused kernel (fp64, CUDA): clamp(out * scale + shift + residual, lo, hi).
at::Tensor epilogue_unfused(at::Tensor out, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                            double lo, double hi);

// The fused ops' clamp bounds: lo <= hi (a NaN fails the comparison).
inline void check_clamp_bounds(const char* op, double lo, double hi) {
  TORCH_CHECK(lo <= hi, "patsparse::", op, ": the clamp bounds must satisfy lo <= hi and not be NaN, got lo=", lo,
              ", hi=", hi);
}

// The binding's side of the core's error convention (kernels/error.h): runs f() and turns the
// std::invalid_argument it throws into a c10::Error "patsparse: <context><message>".
template <class F>
decltype(auto) core_call(const char* context, F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, "patsparse: ", context, e.what());
  }
}

// The ops without an autograd formula (max_pool2d, depthwise_conv3x3) refuse, in grad mode, a
// tensor that needs a gradient: an output without a correct backward is never returned silently.
inline void check_inference_only(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(!(t->defined() && t->requires_grad()), "patsparse::", op,
                " is inference-only (it has no gradient formula): call it under torch.no_grad() or with tensors "
                "that do not require grad");
}

// Raw-pointer view of contiguous tensors (the caller keeps them alive).
template <typename T>
PatternWeights<T> weights_view(const at::Tensor& patterns, const at::Tensor& filter_ptr, const at::Tensor& kernel_channel,
                               const at::Tensor& kernel_pattern, const at::Tensor& values);

}  // namespace patsparse
