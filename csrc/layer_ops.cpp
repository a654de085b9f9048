// The layers' forward as one op each (CompositeImplicitAutograd: each runs as the ops it calls, so
// autograd sees the product / decode ops and ATen ops, and so do ExecuTorch and AOTInductor once the
// graph is decomposed; torch.export's training IR keeps the layer op as a call; a scripted or lite
// model holds one call per layer, not these steps in its bytecode, which the lite format inlines per
// layer). Each does what the dense layer does with its input: its own error
// for an input it rejects (the dense op called with a zero weight of the layer's dtype), unbatched
// input, the compute dtype (the native products run fp32 and fp64: fp16 / bf16 are computed in fp32
// and returned in their dtype), autocast's output dtype.
//   pattern_conv2d_layer                          PatternConv2d (forward and forward_fused)
//   sparse_conv1x1_layer / sparse_linear_layer    a native 1x1 SparseConv2d / SparseLinear
//   sparse_conv2d_decoded / sparse_linear_decoded the others: the dense op on the decoded weight
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "kernels/checked.h"

namespace patsparse {
namespace {

using OptTensor = std::optional<at::Tensor>;
using In = const at::Tensor&;
using OptIn = const OptTensor&;
using Ints = at::IntArrayRef;
// The signatures of the ops the layers call (their schemas: ops.cpp, sparse_ops.cpp, decode_ops.cpp).
using PatternConv2dSig = at::Tensor(In, In, In, In, In, In, OptIn, Ints, Ints, Ints);
using PatternConv2dFusedSig = at::Tensor(In, In, In, In, In, In, OptIn, OptIn, OptIn, Ints, Ints, Ints, double, double);
using PatternChannelsSig = at::Tensor(In);
using PatternDecodeSig = at::Tensor(In, In, int64_t, int64_t, int64_t, c10::string_view);
using SparseConv1x1Sig = at::Tensor(In, In, In, In, In, In, int64_t, OptIn, OptIn, OptIn, Ints, double, double);
using SparseLinearSig = at::Tensor(In, In, In, In, In, In, int64_t, OptIn, OptIn, OptIn, double, double);
using SparseDecodeSig = at::Tensor(In, In, In, In, In, Ints);

// patsparse::<name> through the dispatcher (so autograd, fake tensors and devices apply).
template <class Sig>
c10::TypedOperatorHandle<Sig> product_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string("patsparse::") + name).c_str(), "").typed<Sig>();
}

// The autocast dtype on `device` where autocast is on there, else nullopt.
std::optional<at::ScalarType> autocast_dtype(c10::DeviceType device) {
  if ((device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA) && at::autocast::is_autocast_enabled(device))
    return at::autocast::get_autocast_dtype(device);
  return std::nullopt;
}

// Whether a dense op with parameters of dtype `own` rejects an operand of dtype `a` on `device`: the
// dtypes differ after autocast's casts where autocast is on (fp32 / fp16 / bf16 operands become the
// autocast dtype; fp64 ones stay).
bool dtypes_clash(at::ScalarType a, at::ScalarType own, c10::DeviceType device) {
  if (a == own) return false;
  if (const auto low = autocast_dtype(device)) {
    if (a != at::kDouble) a = *low;
    if (own != at::kDouble) own = *low;
  }
  return a != own;
}

// Whether the dense layer (parameters of `dtype` on `device`, `bias`, `out` outputs) rejects `input`
// for its dtype or device, or its bias for its dtype or shape (a bias assigned after construction).
bool dense_rejects(In input, at::ScalarType dtype, c10::Device device, OptIn bias, int64_t out) {
  const c10::DeviceType d = input.device().type();
  // (a meta input is shape propagation: the ops' fake kernels take it, as the dense ops do)
  if (!input.is_floating_point() || (input.device() != device && !input.is_meta()) ||
      dtypes_clash(input.scalar_type(), dtype, d))
    return true;
  return bias && (bias->device() != device || dtypes_clash(bias->scalar_type(), dtype, d) || bias->dim() != 1 ||
                  bias->sym_size(0) != out);
}

// A conv layer's geometry (a Linear has none).
struct ConvGeometry {
  Ints stride, padding, dilation;
  int64_t groups = 1;
  std::optional<c10::string_view> padding_str;  // "same" / "valid" instead of `padding`
};

at::Tensor dense_op(In input, In weight, OptIn bias, const ConvGeometry* conv) {
  if (!conv) return at::linear(input, weight, bias);
  if (conv->padding_str)
    return at::conv2d(input, weight, bias, conv->stride, *conv->padding_str, conv->dilation, conv->groups);
  return at::conv2d(input, weight, bias, conv->stride, conv->padding, conv->dilation, conv->groups);
}

// The dense layer's own error for an input it rejects: its op with a zero weight of the layer's dtype
// on the layer's device (a generic error should that op accept the input after all).
[[noreturn]] void raise_dense_error(In input, at::ScalarType dtype, c10::Device device, OptIn bias,
                                    Ints weight_shape, const ConvGeometry* conv) {
  dense_op(input, at::zeros(weight_shape, at::TensorOptions().dtype(dtype).device(device)), bias, conv);
  TORCH_CHECK(input.device() == device, "patsparse: the input is on ", input.device(), ", the layer on ", device,
              " (the dense conv would compute garbage from a meta weight)");
  TORCH_CHECK(!bias || bias->device() == device, "patsparse: the layer's bias is on ", bias->device(),
              ", its weights on ", device,
              bias && bias->is_meta() ? " (a bias on the meta device has no data: load it first)" : "");
  TORCH_CHECK(false, "patsparse: the input (", input.scalar_type(), " ", input.sym_sizes(), ") does not fit the layer (",
              dtype, " weight ", weight_shape, ", bias ", bias ? bias->sym_sizes() : c10::SymIntArrayRef{}, ")");
}

void check_weight_shape(Ints weight_shape, bool conv, const char* op) {
  TORCH_CHECK(weight_shape.size() == (conv ? 4u : 2u), "patsparse::", op, ": weight_shape must be ",
              conv ? "[out, in / groups, kh, kw]" : "[out, in]", ", got ", weight_shape);
  for (int64_t d : weight_shape) TORCH_CHECK(d >= 0, "patsparse::", op, ": negative size in weight_shape ", weight_shape);
}

// A clamp bound as the product ops take it: +-inf as +-DBL_MAX (ops.clamp_bound: an infinite float
// argument does not survive AOTInductor's package format; the kernels read it back as +-inf).
double finite_bound(double v) {
  const double m = std::numeric_limits<double>::max();
  return v > m ? m : (v < -m ? -m : v);
}

OptTensor as_dtype(OptIn t, at::ScalarType dtype) {
  if (!t) return std::nullopt;
  return t->to(dtype);
}

// Whether the dense conv takes `input` by its shape and the geometry: [N, C, H, W] or unbatched
// [C, H, W] with its channels; stride and dilation >= 1, padding >= 0; an image that is not empty and
// that the dilated `kernel` fits (sizes that overflow int64 are left to the product op's checked
// arithmetic, which names them).
bool conv_input_fits(In input, int64_t in_channels, const ConvGeometry& g, Ints kernel) {
  if (!((input.dim() == 3 || input.dim() == 4) && input.sym_size(-3) == in_channels) || g.stride.size() != 2 ||
      g.padding.size() != 2 || g.dilation.size() != 2)
    return false;
  for (size_t i = 0; i < 2; ++i) {
    const c10::SymInt size = input.sym_size(static_cast<int64_t>(i) - 2);
    if (g.stride[i] < 1 || g.padding[i] < 0 || g.dilation[i] < 1 || !(size > 0)) return false;
    // the smallest image the dilated kernel fits: dilation * (kernel - 1) + 1 - 2 * padding
    int64_t span = 0, pads = 0, need = 0;
    if (mul_ok(g.dilation[i], kernel[i] - 1, &span) && add_ok(span, 1, &span) && mul_ok(g.padding[i], 2, &pads) &&
        sub_ok(span, pads, &need) && size < need)
      return false;
  }
  return true;
}

// The native products' operands in the compute dtype (fp64 for fp64 input, else fp32), the input and
// an output-shaped residual batched.
struct Operands {
  at::Tensor x;
  OptTensor scale, shift, residual;
  bool unbatched;
};

Operands compute_operands(In input, bool unbatched, OptIn scale, OptIn shift, OptIn residual) {
  const at::ScalarType compute = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Operands o{(unbatched ? input.unsqueeze(0) : input).to(compute), as_dtype(scale, compute), as_dtype(shift, compute),
             as_dtype(residual, compute), unbatched};
  if (o.residual && unbatched && o.residual->dim() == 3) o.residual = o.residual->unsqueeze(0);
  return o;
}

// A native product's output (computed in fp32 / fp64) in the dtype the dense layer returns: the
// input's, or under autocast the autocast dtype (one rounding: fp16 input under bf16 autocast does not
// pass through fp16's range), and without the batch dim it added to an unbatched input.
at::Tensor layer_output(at::Tensor out, In input, bool unbatched) {
  at::ScalarType dtype = input.scalar_type();
  if (dtype != at::kDouble)
    if (const auto low = autocast_dtype(input.device().type())) dtype = *low;
  if (out.scalar_type() != dtype) out = out.to(dtype);
  return unbatched ? out.squeeze(0) : out;
}

at::Tensor decoded_layer(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                         Ints weight_shape, const ConvGeometry* conv) {
  const at::ScalarType dtype = values.scalar_type();
  if (!input.is_floating_point() || dtypes_clash(input.scalar_type(), dtype, input.device().type()))
    raise_dense_error(input, dtype, values.device(), bias, weight_shape, conv);
  static auto decode = product_op<SparseDecodeSig>("sparse_decode");
  const at::Tensor w = decode.call(header, index, codes, values.to(at::kFloat), code_scale.to(at::kFloat), weight_shape);
  return dense_op(input, w.to(dtype), bias, conv);  // the layer's weight, bias as it is: the dense op's rules
}

at::Tensor native_layer(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                        Ints weight_shape, const ConvGeometry* conv, OptIn scale, OptIn shift, OptIn residual,
                        double lo, double hi) {
  if (!conv && bias && !(bias->dim() == 1 && bias->sym_size(0) == weight_shape[0]))  // F.linear broadcasts it
    return decoded_layer(input, header, index, codes, values, code_scale, bias, weight_shape, conv);
  const at::ScalarType dtype = values.scalar_type();
  // (no output channel is the dense conv's error too)
  const bool fits = conv ? conv_input_fits(input, weight_shape[1], *conv, weight_shape.slice(2)) && weight_shape[0] > 0
                         : input.dim() >= 1 && input.sym_size(-1) == weight_shape[1];
  if (!fits || dense_rejects(input, dtype, values.device(), bias, weight_shape[0]))
    raise_dense_error(input, dtype, values.device(), bias, weight_shape, conv);
  const Operands o = compute_operands(input, conv && input.dim() == 3, scale, shift, residual);
  const at::Tensor v = values.to(at::kFloat), cs = code_scale.to(at::kFloat);
  lo = finite_bound(lo);
  hi = finite_bound(hi);
  at::Tensor out;
  if (conv) {
    static auto op = product_op<SparseConv1x1Sig>("sparse_conv1x1");
    out = op.call(o.x, header, index, codes, v, cs, weight_shape[0], o.scale, o.shift, o.residual, conv->stride, lo, hi);
  } else {
    static auto op = product_op<SparseLinearSig>("sparse_linear");
    out = op.call(o.x, header, index, codes, v, cs, weight_shape[0], o.scale, o.shift, o.residual, lo, hi);
  }
  return layer_output(out, input, o.unbatched);
}

// PatternConv2d's forward (shift = its bias) and forward_fused: the runtime arrays first (int32
// channel indices from the decode cache for a device layer, whose CUDA plan cache keys on that
// tensor; a quantized layer's values decoded from `values`, then its packed codes, and `code_scale`),
// then pattern_conv2d (autograd), or pattern_conv2d_fused for an epilogue. `bias` is the layer's, for
// the dense layer's checks and error only.
at::Tensor pattern_conv2d_layer(In input, In patterns, In filter_ptr, In kernel_channel, In kernel_pattern, In values,
                                OptIn code_scale, int64_t bits, c10::string_view scheme, OptIn bias,
                                int64_t in_channels, Ints stride, Ints padding, Ints dilation, OptIn scale,
                                OptIn shift, OptIn residual, double lo, double hi) {
  TORCH_CHECK(filter_ptr.dim() == 1 && filter_ptr.size(0) >= 1,
              "patsparse::pattern_conv2d_layer: filter_ptr must be [out_channels + 1], got ", filter_ptr.sizes());
  TORCH_CHECK(bits == 0 || code_scale.has_value(),
              "patsparse::pattern_conv2d_layer: a quantized layer (bits > 0) needs its code_scale");
  const at::ScalarType dtype = bits ? code_scale->scalar_type() : values.scalar_type();
  const int64_t weight_shape[4] = {filter_ptr.size(0) - 1, in_channels, 3, 3};
  const ConvGeometry g{stride, padding, dilation, 1, std::nullopt};
  if (!conv_input_fits(input, in_channels, g, {3, 3}) ||
      dense_rejects(input, dtype, patterns.device(), bias, weight_shape[0]))
    raise_dense_error(input, dtype, patterns.device(), bias, weight_shape, &g);
  const Operands o = compute_operands(input, input.dim() == 3, scale, shift, residual);
  at::Tensor channels = kernel_channel;
  if (!channels.device().is_cpu() && channels.scalar_type() != at::kInt) {
    static auto widen = product_op<PatternChannelsSig>("pattern_channels");
    channels = widen.call(channels);
  }
  at::Tensor v = values;
  if (bits) {
    static auto decode = product_op<PatternDecodeSig>("pattern_decode");
    v = decode.call(values, *code_scale, kernel_channel.size(0), patterns.size(1), bits, scheme);
  }
  v = v.to(o.x.scalar_type());
  const double max = std::numeric_limits<double>::max();
  at::Tensor out;
  if (!o.scale && !o.residual && lo <= -max && hi >= max) {
    static auto conv = product_op<PatternConv2dSig>("pattern_conv2d");
    out = conv.call(o.x, patterns, filter_ptr, channels, kernel_pattern, v, o.shift, stride, padding, dilation);
  } else {
    static auto fused = product_op<PatternConv2dFusedSig>("pattern_conv2d_fused");
    out = fused.call(o.x, patterns, filter_ptr, channels, kernel_pattern, v, o.scale, o.shift, o.residual, stride,
                     padding, dilation, finite_bound(lo), finite_bound(hi));
  }
  return layer_output(out, input, o.unbatched);
}

at::Tensor sparse_conv1x1_layer(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                                Ints weight_shape, Ints stride, OptIn scale, OptIn shift, OptIn residual, double lo,
                                double hi) {
  check_weight_shape(weight_shape, true, "sparse_conv1x1_layer");
  TORCH_CHECK(weight_shape[2] == 1 && weight_shape[3] == 1,
              "patsparse::sparse_conv1x1_layer: weight_shape must be [out, in, 1, 1], got ", weight_shape);
  const int64_t zeros[2] = {0, 0}, ones[2] = {1, 1};
  const ConvGeometry g{stride, zeros, ones, 1, std::nullopt};
  return native_layer(input, header, index, codes, values, code_scale, bias, weight_shape, &g, scale, shift, residual,
                      lo, hi);
}

at::Tensor sparse_linear_layer(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                               Ints weight_shape, OptIn scale, OptIn shift, OptIn residual, double lo, double hi) {
  check_weight_shape(weight_shape, false, "sparse_linear_layer");
  return native_layer(input, header, index, codes, values, code_scale, bias, weight_shape, nullptr, scale, shift,
                      residual, lo, hi);
}

at::Tensor sparse_conv2d_decoded(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                                 Ints weight_shape, Ints stride, Ints padding, Ints dilation, int64_t groups,
                                 std::optional<c10::string_view> padding_str) {
  check_weight_shape(weight_shape, true, "sparse_conv2d_decoded");
  const ConvGeometry g{stride, padding, dilation, groups, padding_str};
  return decoded_layer(input, header, index, codes, values, code_scale, bias, weight_shape, &g);
}

at::Tensor sparse_linear_decoded(In input, In header, In index, In codes, In values, In code_scale, OptIn bias,
                                 Ints weight_shape) {
  check_weight_shape(weight_shape, false, "sparse_linear_decoded");
  return decoded_layer(input, header, index, codes, values, code_scale, bias, weight_shape, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  m.def("pattern_conv2d_layer(Tensor input, Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, "
        "Tensor kernel_pattern, Tensor values, Tensor? code_scale, int bits, str scheme, Tensor? bias, int in_channels, "
        "int[2] stride, int[2] padding, int[2] dilation, Tensor? scale, Tensor? shift, Tensor? residual, float lo, "
        "float hi) -> Tensor");
  m.def("sparse_conv1x1_layer(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, int[2] stride, Tensor? scale, Tensor? shift, "
        "Tensor? residual, float lo, float hi) -> Tensor");
  m.def("sparse_linear_layer(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, Tensor? scale, Tensor? shift, Tensor? residual, "
        "float lo, float hi) -> Tensor");
  m.def("sparse_conv2d_decoded(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str? padding_str) -> Tensor");
  m.def("sparse_linear_decoded(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape) -> Tensor");
}

TORCH_LIBRARY_IMPL(patsparse, CompositeImplicitAutograd, m) {
  m.impl("pattern_conv2d_layer", &pattern_conv2d_layer);
  m.impl("sparse_conv1x1_layer", &sparse_conv1x1_layer);
  m.impl("sparse_linear_layer", &sparse_linear_layer);
  m.impl("sparse_conv2d_decoded", &sparse_conv2d_decoded);
  m.impl("sparse_linear_decoded", &sparse_linear_decoded);
}

}  // namespace patsparse
